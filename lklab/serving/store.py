"""The serving store (SQLite in WAL mode embedded, any SQLAlchemy URL scaled): tables and access.

SQL is built with SQLAlchemy Core, so every value is a bound parameter.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    event,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.types import TypeDecorator

from lklab.core.config import Settings
from lklab.serving.migrations import bring_to_head


class UTCDateTime(TypeDecorator):
    """Aware UTC datetimes in Python, naive UTC in the database (portable across dialects)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: lklab stores UTC only")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


metadata = MetaData()

payments_ledger = Table(
    "payments_ledger", metadata,
    Column("event_id", String(128), primary_key=True),
    Column("event_version", Integer, nullable=False),
    Column("event_type", String(32), nullable=False),
    Column("ride_id", String(128), nullable=False),
    Column("user_id", String(128), nullable=False),
    Column("driver_id", String(128)),
    Column("city", String(64), nullable=False),
    Column("event_time", UTCDateTime, nullable=False),
    Column("amount_cents", BigInteger, nullable=False),
    Column("tip_cents", BigInteger, nullable=False, server_default="0",
           comment="the capture's tip (schema v2); 0 for v1 payments and refunds"),
    comment="source of truth for money, written by the payments system (here: the generator)",
)

# Speed layer. Per-event state makes the sink idempotent (dedup by event_id/version); per-view
# contributions let a correction retract exactly what the old version added.
speed_event_state = Table(
    "speed_event_state", metadata,
    Column("scope", String(249), primary_key=True, comment="the consumer: live speed group or a replay"),
    Column("event_id", String(128), primary_key=True),
    Column("event_version", Integer, nullable=False),
    # an int, not a datetime: written for every event applied, and binding a datetime cost 5 µs a row
    Column("time_bucket", BigInteger, comment="the held version's event-time bucket (epoch seconds): the state expires by it "
                                              "(lklab.engine.horizon); NULL in state written before 0006"),
    Index("speed_event_state_by_bucket", "scope", "time_bucket"),
)
speed_contrib = Table(
    "speed_contrib", metadata,
    Column("view", String(64), primary_key=True),
    Column("event_id", String(128), primary_key=True),
    Column("entity", String(128), nullable=False),
    Column("window_start", UTCDateTime, nullable=False),
    Column("amount", BigInteger, comment="MONEY views: the signed amount"),
    Column("member", String(128), comment="DISTINCT views: the member (user_id)"),
    Index("speed_contrib_by_entity", "view", "entity"),  # sessionized views re-read a rider's events
)
# A Kappa job's held state, checkpointed as compact chunks instead of one row per event: each
# checkpoint writes, per event-time bucket, one chunk of the versions it changed and one per view
# of the contributions (lklab.engine.chunks). Expiry drops a bucket's chunks whole.
held_chunks = Table(
    "held_chunks", metadata,
    Column("scope", String(249), primary_key=True, comment="the consumer (a Kappa job)"),
    Column("view", String(64), primary_key=True, comment="'' for the versions; else the output whose contributions these are"),
    Column("time_bucket", BigInteger, primary_key=True, comment="the event-time bucket (epoch seconds) of the events in it"),
    Column("seq", BigInteger, primary_key=True, comment="the checkpoint that wrote it: later chunks override earlier ones"),
    Column("entries", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=False, comment="msgpack: lklab.engine.chunks"),
    Index("held_chunks_by_view", "view"),
)
speed_view_rows = Table(
    "speed_view_rows", metadata,
    Column("view", String(64), primary_key=True),
    Column("entity", String(128), primary_key=True),
    Column("window_start", UTCDateTime, primary_key=True),
    Column("value", BigInteger, nullable=False),
    Column("events", Integer, nullable=False, comment="contributing events; 0 = no row in the view"),
    comment="MONEY views, maintained additively",
)
speed_view_members = Table(
    "speed_view_members", metadata,
    Column("view", String(64), primary_key=True),
    Column("entity", String(128), primary_key=True),
    Column("window_start", UTCDateTime, primary_key=True),
    Column("member", String(128), primary_key=True),
    Column("events", Integer, nullable=False),
    comment="DISTINCT views: the value is the number of members with events > 0, counted at read",
)
session_rows = Table(
    "session_rows", metadata,
    Column("view", String(160), primary_key=True, comment="user_sessions__v<N>"),
    Column("user_id", String(128), primary_key=True),
    Column("window_start", UTCDateTime, primary_key=True, comment="UTC day the sessions start"),
    Column("sessions", Integer, nullable=False),
    Column("duration_ms", BigInteger, nullable=False),
    comment="sessionized views: recomputed per rider whenever one of the rider's events changes",
)
speed_late_windows = Table(
    "speed_late_windows", metadata,
    Column("view", String(64), primary_key=True),
    Column("entity", String(128), primary_key=True),
    Column("window_start", UTCDateTime, primary_key=True),
    Column("dropped", Integer, nullable=False, comment="events too late for this final window; batch owns them"),
)
speed_progress = Table(
    "speed_progress", metadata,
    Column("scope", String(249), primary_key=True, comment="the consumer: live speed group or a replay"),
    Column("topic", String(249), primary_key=True),
    Column("partition", Integer, primary_key=True),
    Column("next_offset", BigInteger, nullable=False, comment="committed with the results, in one transaction"),
    Column("max_event_time", UTCDateTime),
    Column("updated_at", UTCDateTime, nullable=False),
)
speed_heartbeat = Table(
    "speed_heartbeat", metadata,
    Column("group_id", String(249), primary_key=True),
    Column("pid", Integer, nullable=False),
    Column("beat_at", UTCDateTime, nullable=False, comment="written every second by a live worker"),
)
speed_counters = Table(
    "speed_counters", metadata,
    Column("scope", String(249), primary_key=True),
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

# Batch layer: one record per build (the T contract) and the published gold rows.
batch_builds = Table(
    "batch_builds", metadata,
    Column("build_id", String(64), primary_key=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("status", String(16), nullable=False, comment="promoted | failed"),
    Column("git_sha", String(64)),
    Column("logic_version", Integer, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("offsets", JSON, nullable=False, comment="{partition: [start, end)} consumed"),
    Column("watermark", UTCDateTime),
    Column("final_through", UTCDateTime, comment="T: windows before it are final in this build"),
    Column("row_counts", JSON, nullable=False),
    Column("validation", JSON, nullable=False),
    Column("delta_versions", JSON, nullable=False),
)
batch_view_rows = Table(
    "batch_view_rows", metadata,
    Column("build_id", String(64), primary_key=True),
    Column("view", String(64), primary_key=True),
    Column("entity", String(128), primary_key=True),
    Column("window_start", UTCDateTime, primary_key=True),
    Column("value", BigInteger, nullable=False),
)
# Every Lambda batch run's outcome, promoted or not: a blocked run is what readers are told about
# (lklab.lambda_arch.merge), and the dates of runs that did not promote are what the next `lklab batch` rebuilds.
batch_runs = Table(
    "batch_runs", metadata,
    Column("run_id", String(64), primary_key=True, comment="the Dagster run id"),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("status", String(16), nullable=False, comment="running | promoted | blocked | failed"),
    Column("first_date", String(10), comment="first event date (YYYY-MM-DD) the run rebuilt"),
    Column("last_date", String(10), comment="last event date (inclusive)"),
    Column("gate", String(200), comment="the first failed gate (<asset>.<check>), when blocked"),
    Column("reason", String(2000), comment="one line: why it did not promote"),
    Column("diverged", JSON, comment="[{view, entity, window_start}] the divergence gates named"),
    Column("build_id", String(64), comment="the build it promoted"),
)
kappa_builds = Table(
    "kappa_builds", metadata,
    Column("output", String(160), primary_key=True, comment="<view>__v<N>"),
    Column("view", String(128), nullable=False),
    Column("version", Integer, nullable=False),
    Column("status", String(16), nullable=False, comment="running | complete"),
    Column("git_sha", String(64)),
    Column("logic_version", Integer, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("consumer_group", String(249), nullable=False),
    Column("start_offsets", JSON, nullable=False),
    Column("target_offsets", JSON, nullable=False, comment="recorded at start: the replay stops here"),
    Column("events", BigInteger, nullable=False),
    Column("rows", BigInteger, nullable=False),
    Column("watermark", UTCDateTime),
    Column("started_at", UTCDateTime, nullable=False),
    Column("finished_at", UTCDateTime),
    Column("seconds", JSON, comment="wall time and throughput"),
    Column("snapshot_id", String(64), comment="the snapshot the replay started from (None: from the log)"),
    Column("tiers", JSON, comment="{bronze: records, kafka: records}: where the input came from"),
)
view_snapshots = Table(
    "view_snapshots", metadata,
    Column("snapshot_id", String(64), primary_key=True),
    Column("view", String(128), nullable=False),
    Column("source_output", String(160), nullable=False, comment="<view>__v<N> whose state was captured"),
    Column("topic", String(249), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("git_sha", String(64)),
    Column("logic_version", Integer, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("offsets", JSON, nullable=False, comment="{partition: next offset}: the state is consistent with these"),
    Column("max_event_times", JSON, nullable=False),
    Column("row_counts", JSON, nullable=False, comment="rows per stored piece; 'output' is the view's row count"),
    Column("checksum", String(64), nullable=False, comment="sha256 over the metadata and every piece's content digest"),
    Column("location", String(1000), nullable=False),
    Column("delta_versions", JSON, nullable=False),
    Column("redacted_at", UTCDateTime, comment="retired by a deletion request: its files are gone, it never loads"),
    comment="immutable Delta snapshots of Kappa view state (lklab.engine.snapshots)",
)
publish_log = Table(
    "publish_log", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("view", String(128), nullable=False, comment="a Kappa view alias, or lambda@batch for a batch promotion"),
    Column("arch", String(16), nullable=False, comment="lambda | kappa"),
    Column("action", String(16), nullable=False, comment="promote | cutover | rollback | refresh"),
    Column("target", String(160), nullable=False),
    Column("from_target", String(160)),
    Column("who", String(128), nullable=False),
    Column("why", String(1000), nullable=False),
    Column("build", JSON, nullable=False, comment="git SHA, logic/schema version, input offsets, watermark, T"),
    Column("snapshot_id", String(64), comment="Kappa: the Delta snapshot of what was published"),
    Column("delta_versions", JSON, nullable=False, comment="{delta table: version} that holds the published rows"),
    Column("checks", JSON, nullable=False, comment="the validation a Kappa cutover passed (name, passed, summary)"),
    comment="every publish, for audit as-of queries (lklab.hybrid.audit) and the alias history (lklab.kappa.cutover)",
)
gate_results = Table(
    "gate_results", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", UTCDateTime, nullable=False),
    Column("arch", String(16), nullable=False, comment="lambda (a Dagster asset check) | kappa (a cutover check)"),
    Column("run_id", String(64), comment="the Dagster run (lambda); NULL for a cutover"),
    Column("subject", String(160), nullable=False, comment="what was checked: the build's dates, or the cutover's <view>__v<N>"),
    Column("gate", String(200), nullable=False, comment="<asset>.<check>, or the cutover check's name"),
    Column("status", String(8), nullable=False, comment="pass | warn | fail"),
    Column("summary", String(2000), nullable=False),
    Column("data_docs", String(1000), comment="the GX validation page, relative to the Data Docs site (served at /quality/)"),
    comment="every gate evaluated, for the dashboard's latest results (lklab.serving.gate_log)",
)
serving_aliases = Table(
    "serving_aliases", metadata,
    Column("view", String(128), primary_key=True),
    Column("target", String(128), nullable=False, comment="build id (batch) or physical view version"),
    Column("updated_at", UTCDateTime, nullable=False),
)


# Deletion requests (lklab.privacy): each user's PII data key, wrapped by the lab's master key, and
# each request to forget a user. A destroyed key leaves its row (wrapped_key NULL), so a forgotten
# user is never given a new key: their later PII is dropped at the edge, not sealed again.
user_keys = Table(
    "user_keys", metadata,
    Column("user_id", String(128), primary_key=True),
    Column("wrapped_key", String(512), comment="the user's Fernet data key, encrypted with the master key; NULL: destroyed"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("destroyed_at", UTCDateTime, comment="when `lklab forget` destroyed the key"),
    comment="envelope encryption: one data key per user (lklab.privacy.keys)",
)
deletion_requests = Table(
    "deletion_requests", metadata,
    Column("user_id", String(128), primary_key=True),
    Column("why", String(1000), nullable=False),
    Column("requested_at", UTCDateTime, nullable=False),
    Column("deadline", UTCDateTime, nullable=False, comment="every store purged by then (7 days by default)"),
    Column("purged_at", UTCDateTime, comment="the last purge that found every store clean; NULL: pending"),
    Column("report", JSON, comment="{store: rows removed} of the purges so far"),
    comment="`lklab forget` requests; their user_ids are the tombstones every fold applies (lklab.privacy.requests)",
)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    # The per-event state tables outgrow SQLite's default 2 MB page cache within seconds of a
    # replay; a larger cache and fewer WAL checkpoints keep bulk upserts off the disk (bench/RESULTS.md).
    cursor.execute("PRAGMA cache_size=-262144")
    cursor.execute("PRAGMA wal_autocheckpoint=16384")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def store_engine(settings: Settings) -> Engine:
    """Engine for the configured store, its schema as found (what `lklab db` inspects and upgrades)."""
    url = settings.serving
    if url.startswith("sqlite"):
        settings.home.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, future=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def make_engine(settings: Settings) -> Engine:
    """Engine for the configured store, its schema at this code's head revision (lklab.serving.migrations):
    created, or upgraded when `serving_auto_migrate` is on; otherwise StoreSchemaError (one line)."""
    engine = store_engine(settings)
    try:
        bring_to_head(engine, settings.serving_auto_migrate)
    except BaseException:
        engine.dispose()
        raise
    return engine


@contextmanager
def consistent_read(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see one committed state of the store, while live jobs write.
    pysqlite opens a transaction only before a write, so without an explicit BEGIN each SELECT
    sees the latest commit (state from one checkpoint, offsets from the next); PostgreSQL's
    default READ COMMITTED has the same gap, REPEATABLE READ closes it."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN")  # committed (ended) by the transaction's exit
            yield conn


def dialect_insert(conn: Connection):
    """The dialect's INSERT (with ON CONFLICT) for the serving stores lklab supports."""
    try:
        return {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[conn.dialect.name]
    except KeyError:
        raise NotImplementedError(f"serving store dialect {conn.dialect.name!r} is not supported (sqlite, postgresql)") from None


def _upsert_statement(conn: Connection, table: Table, update: Iterable[str] | None = None):
    """INSERT … ON CONFLICT (primary key) DO UPDATE the non-key (or `update`) columns, or DO NOTHING."""
    stmt = dialect_insert(conn)(table)
    keys = [c.name for c in table.primary_key.columns]
    columns = list(update) if update is not None else [c.name for c in table.columns if c.name not in keys]
    if columns:
        return stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in columns})
    return stmt.on_conflict_do_nothing(index_elements=keys)


def add_to(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], add: Sequence[str]) -> None:
    """INSERT … ON CONFLICT (pk) DO UPDATE SET col = col + excluded.col.

    Additive rather than read-modify-write, so concurrent workers owning different partitions
    can add to the same (city, window) or counter row without losing an update."""
    if not rows:
        return
    stmt = dialect_insert(conn)(table)
    keys = [c.name for c in table.primary_key.columns]
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_={c: table.c[c] + stmt.excluded[c] for c in add}), list(rows))


def upsert(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], update: Iterable[str] | None = None) -> None:
    """INSERT … ON CONFLICT (primary key) DO UPDATE (or DO NOTHING when update is empty)."""
    if rows:
        conn.execute(_upsert_statement(conn, table, update), list(rows))


def bulk_upsert(conn: Connection, table: Table, rows: Sequence[tuple]) -> None:
    """upsert() for many rows given as tuples in the table's column order, for the hot path:
    the statement is compiled once and goes to the driver's executemany, with each column's
    bind processing (UTC datetimes included) applied here. Measured about 2x faster than
    upsert() on SQLite (4.6 against 8.8 µs per contribution row), where SQLAlchemy builds and
    processes a parameter dict per row."""
    if not rows:
        return
    procs = [(i, _memo(p)) for i, p in enumerate(_bind_processors(conn, table)) if p is not None]  # window starts repeat
    if procs:
        rows = [_processed(row, procs) for row in rows]
    _execute_rows(conn, table, rows)


def bulk_upsert_columns(conn: Connection, table: Table, columns: Mapping[str, Any], fixed: Mapping[str, Any]) -> None:
    """bulk_upsert() for rows given column by column: `columns` are Arrow arrays, `fixed` one value
    for every row, together every column of the table. Each distinct value of a column is turned
    into Python and bind-processed once (a snapshot's window starts repeat thousands of times, and
    a timestamp to Python alone cost about 6 µs)."""
    n = len(next(iter(columns.values()))) if columns else 0
    if not n:
        return
    procs = _bind_processors(conn, table)
    values = [_column_values(conn, c, columns[c.name], proc) if c.name in columns else [_bound(fixed[c.name], proc)] * n
              for c, proc in zip(table.columns, procs)]
    _execute_rows(conn, table, list(zip(*values)))


def _column_values(conn: Connection, column: Column, values, proc) -> list:
    """One Arrow column as the values to bind: on SQLite an aware timestamp becomes DATETIME's text
    in Arrow (sqlite_datetimes), anything else goes through python_values."""
    import pyarrow as pa

    if conn.dialect.name == "sqlite" and isinstance(column.type, UTCDateTime) and pa.types.is_timestamp(values.type) \
            and values.type.tz is not None:
        return sqlite_datetimes(values)
    return python_values(values, proc)


def sqlite_datetimes(values) -> list:
    """Aware timestamps as the text SQLAlchemy's SQLite DATETIME stores (naive UTC,
    2026-11-17 10:00:00.000000; its storage format), formatted by Arrow: a snapshot's view has a
    window start per minute, and 41k distinct ones took 0.25 s turned into Python one at a time.
    A unit test holds it to SQLAlchemy's own processor."""
    import pyarrow as pa
    import pyarrow.compute as pc

    naive = pc.cast(values, pa.timestamp("us"))  # Arrow keeps the UTC instant: its naive value is the UTC wall time
    return pc.strftime(naive, format="%Y-%m-%d %H:%M:%S").to_pylist()  # %S carries the 6 fraction digits of "us"


def _bound(value: Any, proc) -> Any:
    return value if value is None or proc is None else proc(value)


def _bind_processors(conn: Connection, table: Table) -> list:
    return [c.type.dialect_impl(conn.dialect).bind_processor(conn.dialect) for c in table.columns]


def python_values(column, proc: Callable[[Any], Any] | None = None) -> list:
    """An Arrow column as Python values, `proc` applied (not to nulls), converting each distinct value once."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if proc is None and not pa.types.is_timestamp(column.type):
        return column.to_pylist()  # strings and integers: as fast directly
    distinct = pc.unique(column)
    mapped = [_bound(v, proc) for v in _python_distinct(distinct)]
    codes = pc.index_in(column, value_set=distinct).to_numpy(zero_copy_only=False)
    table = np.empty(len(mapped), dtype=object)
    table[:] = mapped
    return table[codes].tolist()


def _python_distinct(values) -> list:
    """Arrow values as Python. An aware timestamp's value is its UTC instant, so it comes out as
    the naive value with timezone.utc attached: the same instant, three times faster than Arrow's
    own conversion (which attaches a ZoneInfo)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_timestamp(values.type) and values.type.tz is not None):
        return values.to_pylist()
    naive = pc.cast(values, pa.timestamp(values.type.unit)).to_pylist()
    return [None if v is None else v.replace(tzinfo=timezone.utc) for v in naive]


def _execute_rows(conn: Connection, table: Table, rows: Sequence[tuple]) -> None:
    names = [c.name for c in table.columns]
    compiled = _upsert_statement(conn, table).compile(dialect=conn.dialect, column_keys=names)
    if compiled.positional:
        order = [names.index(n) for n in compiled.positiontup]
        params = [tuple(row[i] for i in order) for row in rows] if order != list(range(len(names))) else list(rows)
    else:
        params = [dict(zip(names, row)) for row in rows]
    conn.exec_driver_sql(str(compiled), params)


def _memo(proc):
    seen: dict = {}

    def once(value):
        try:
            return seen[value]
        except KeyError:
            seen[value] = out = proc(value)
            return out
    return once


def _processed(row: tuple, procs: list) -> tuple:
    values = list(row)
    for i, proc in procs:
        values[i] = proc(values[i])
    return tuple(values)
