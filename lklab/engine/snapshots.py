"""Snapshots: immutable Delta copies of a Kappa output's state, consistent with exact per-partition
offsets, so a replay can start from a snapshot instead of the beginning of the log (the hybrid
snapshot-plus-replay design).

A snapshot holds five pieces, each its own Delta table under `<lake>/snapshots/<view>/<id>/`:
  event_state  the dedup state (event_id → highest version held, and its event-time bucket)
  contrib      what each event contributes to the view (so a later correction can retract it)
  state        the view's maintained rows (money sums, distinct members or session rows)
  progress     the offsets (and max event time) per partition the state is consistent with
  output       the view's answer rows as served: what audits read
The checksum is a sha256 over the metadata (view, versions, topic, offsets) and, per piece, the
row count and the sum of Spark's xxhash64 over every column, so flipped bytes, a lost file or
edited metadata all show up as a mismatch and the snapshot is refused.

Spark writes the pieces. They are read back with delta-rs (deltalake) at their recorded versions,
straight into Arrow, and the digests are computed in Arrow (lklab.engine.spark_hash, equal to
Spark's xxhash64 bit for bit), so loading a snapshot starts no JVM, and snapshots whose checksum
Spark computed still load.
"""
from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pyarrow as pa
from pydantic import BaseModel
from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from lklab import views
from lklab.core.provenance import git_sha
from lklab.engine import chunks, horizon, outputs, spark_hash
from lklab.engine.sink import HeldState, load_contribs, load_held
from lklab.serving import progress
from lklab.core.config import Settings
from lklab.core.events import SCHEMA_VERSION
from lklab.log.kafka_io import Offsets
from lklab.serving.store import (
    bulk_upsert_columns,
    python_values,
    consistent_read,
    speed_contrib,
    speed_progress,
    view_snapshots,
)
from lklab.views.measures import UTC_US, Contrib


class SnapshotError(RuntimeError):
    """A snapshot that cannot be taken or loaded; nothing was written."""


class Snapshot(BaseModel):
    """One row of the snapshot catalog (serving table view_snapshots)."""

    snapshot_id: str
    view: str
    source_output: str
    topic: str
    created_at: datetime
    git_sha: str
    logic_version: int
    schema_version: int
    offsets: dict[int, int]
    max_event_times: dict[int, datetime | None]
    row_counts: dict[str, int]
    checksum: str
    location: str
    delta_versions: dict[str, int]
    redacted_at: datetime | None = None  # retired by a deletion request (lklab.deletion): never loads again

    def piece_location(self, piece: str) -> str:
        return f"{self.location}/{piece}"


@dataclass(frozen=True)
class Piece:
    """One stored part of the state: how to read it from the serving store, its Arrow schema,
    and how to write it back under another output name and consumer scope."""

    name: str
    schema: pa.Schema
    read: Callable[[Connection, str, str, str], Any]  # (conn, output, scope, topic) -> rows
    fixed: Callable[[str, str, str], dict] | None  # (output, scope, topic) -> the serving columns the piece does not store; None: not installed as rows (the output; the held state: _install_held)
    table: Any = None
    renamed: dict[str, str] = field(default_factory=dict)  # piece column -> serving column, where they differ

    def install(self, conn: Connection, table: pa.Table, output: str, scope: str, topic: str) -> None:
        """The piece's rows into its serving table, column by column (store.bulk_upsert_columns)."""
        stored = {self.renamed.get(name, name): table.column(name) for name in table.column_names}
        bulk_upsert_columns(conn, self.table, stored, self.fixed(output, scope, topic))


def _schema(*fields: tuple[str, pa.DataType]) -> pa.Schema:
    return pa.schema(list(fields))


def _state_piece(spec) -> Piece:
    """The maintained rows: their shape is the measure's."""
    state = spec.measure.state_piece()
    return Piece("state", state.schema, lambda conn, out, _s, _t: state.read(conn, out),
                 lambda out, _s, _t: {"view": out}, state.table, state.renamed)


def pieces(spec) -> list[Piece]:
    p = speed_progress
    return [
        # the held state: read whether a scope holds it as rows or chunks; installed by _install_held
        Piece("event_state", _schema(("event_id", pa.string()), ("event_version", pa.int64()), ("time_bucket", pa.int64())),
              lambda conn, _o, scope, _t: _held_versions(conn, scope), None),
        Piece("contrib", _schema(("event_id", pa.string()), ("entity", pa.string()), ("window_start", UTC_US),
                                 ("amount", pa.int64()), ("member", pa.string())),
              lambda conn, out, _s, _t: [(eid, *c) for (_, eid), c in load_contribs(conn, [out]).items()], None),
        _state_piece(spec),
        Piece("progress", _schema(("partition", pa.int64()), ("next_offset", pa.int64()), ("max_event_time", UTC_US)),
              lambda conn, _o, scope, topic: [(part, nxt, mt) for part, (nxt, mt) in progress.load(conn, scope, topic).items()],
              lambda _o, scope, topic: {"scope": scope, "topic": topic, "updated_at": datetime.now(timezone.utc)}, p),
        Piece("output", _schema(("entity", pa.string()), ("window_start", UTC_US), ("value", pa.int64()), ("duration_ms", pa.int64())),
              lambda conn, out, _s, _t: [(ent, w, *spec.measure.output_piece(val))
                                         for ent, w, val in outputs.read_output(None, spec.view, out, conn=conn)],
              None),
    ]


def _held_versions(conn: Connection, scope: str) -> list[tuple[str, int, int | None]]:
    held = load_held(conn, scope, [])
    return [(eid, held.versions[eid], bucket) for eid, bucket in held.buckets]


def _to_arrow(rows, schema: pa.Schema) -> pa.Table:
    names = schema.names
    return pa.Table.from_pylist([dict(zip(names, r)) for r in rows], schema=schema)


def digest(table: pa.Table) -> list:
    """[row count, exact sum of Spark's xxhash64 over all columns]: order-independent, content-sensitive."""
    return [table.num_rows, str(spark_hash.exact_sum(spark_hash.xxhash64(table)))]


def read_piece(snap: Snapshot, piece: Piece) -> tuple[list, pa.Table]:
    """One piece at its recorded Delta version (delta-rs) and its digest over the columns stored.
    The table comes in the piece's columns and types: a column added to the piece since the
    snapshot was written (event_state.time_bucket) comes back null."""
    from deltalake import DeltaTable

    table = DeltaTable(snap.piece_location(piece.name), version=snap.delta_versions[piece.name]).to_pyarrow_table()
    stored = pa.schema([column for column in piece.schema if column.name in table.column_names])
    table = table.select(stored.names).cast(stored)
    found = digest(table)
    for column in piece.schema:
        if column.name not in stored.names:
            table = table.append_column(column, pa.nulls(table.num_rows, column.type))
    return found, table.select(piece.schema.names)


def checksum(meta: dict, digests: dict[str, list]) -> str:
    body = json.dumps({"meta": meta, "pieces": digests}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def _meta(view: str, logic_version: int, schema_version: int, topic: str, offsets: Offsets) -> dict:
    return {"view": view, "logic_version": logic_version, "schema_version": schema_version, "topic": topic,
            "offsets": {str(p): o for p, o in sorted(offsets.items())}}


def new_snapshot_id(now: datetime) -> str:
    return now.strftime("s%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def root(settings: Settings, view: str) -> str:
    return f"{settings.lake_root.rstrip('/')}/snapshots/{view}"


def take(settings: Settings, engine: Engine, spark, view: str, spec, scope: str) -> Snapshot:
    """Copy the state of output `spec.name` (consumer `scope`) to a new immutable Delta snapshot.
    All pieces are read in one read transaction, so they are consistent with one set of offsets."""
    now = datetime.now(timezone.utc)
    parts = pieces(spec)
    with consistent_read(engine) as conn:
        tables = {piece.name: _to_arrow(piece.read(conn, spec.name, scope, settings.topic), piece.schema) for piece in parts}
    progress = tables["progress"].to_pylist()
    if not progress:
        raise SnapshotError(f"{spec.name} has consumed nothing yet: replay it before taking a snapshot")
    offsets = {r["partition"]: r["next_offset"] for r in progress}
    snapshot_id = new_snapshot_id(now)
    location = f"{root(settings, view)}/{snapshot_id}"
    meta = _meta(view, spec.logic_version, SCHEMA_VERSION, settings.topic, offsets)
    digests, versions = {}, {}
    for name, table in tables.items():
        digests[name] = digest(table)
        (spark.createDataFrame(table).write.format("delta").mode("errorifexists").option("delta.appendOnly", "true")
         .option("userMetadata", json.dumps({"snapshot_id": snapshot_id, **meta}))
         .save(f"{location}/{name}"))
        versions[name] = 0
    record = Snapshot(
        snapshot_id=snapshot_id, view=view, source_output=spec.name, topic=settings.topic, created_at=now, git_sha=git_sha(),
        logic_version=spec.logic_version, schema_version=SCHEMA_VERSION, offsets=offsets,
        max_event_times={r["partition"]: r["max_event_time"] for r in progress},
        row_counts={name: t.num_rows for name, t in tables.items()}, checksum=checksum(meta, digests),
        location=location, delta_versions=versions,
    )
    with engine.begin() as conn:
        conn.execute(view_snapshots.insert(), [_row(record)])
    return record


def _row(record: Snapshot) -> dict:
    row = record.model_dump(mode="python")
    row["offsets"] = {str(k): v for k, v in record.offsets.items()}
    row["max_event_times"] = {str(k): (v.isoformat() if v else None) for k, v in record.max_event_times.items()}
    return row


def from_row(row) -> Snapshot:
    return Snapshot.model_validate({**row, "offsets": {int(k): v for k, v in row["offsets"].items()},
                                    "max_event_times": {int(k): v for k, v in row["max_event_times"].items()}})


def listing(engine: Engine, view: str | None = None) -> list[Snapshot]:
    query = select(view_snapshots).order_by(view_snapshots.c.created_at, view_snapshots.c.snapshot_id)
    if view is not None:
        query = query.where(view_snapshots.c.view == view)
    with engine.connect() as conn:
        return [from_row(r) for r in conn.execute(query).mappings()]


def resolve(engine: Engine, view: str, ref: str) -> Snapshot:
    """`latest` (the newest snapshot of the view) or a snapshot id."""
    found = listing(engine, view)
    usable = [snap for snap in found if snap.redacted_at is None]
    if ref == "latest":
        if not usable:
            raise SnapshotError(f"--from-snapshot latest: {view} has no usable snapshot "
                                f"({len(found)} redacted by deletion requests); take one with `lklab snapshot {view}`")
        return usable[-1]
    for snap in found:
        if snap.snapshot_id == ref:
            refuse_redacted(snap)
            return snap
    raise SnapshotError(f"--from-snapshot {ref}: no snapshot with that id for {view} (see `lklab snapshot list`)")


# --- compatibility: a snapshot of other logic or schema loads only through a declared migration --

Migration = Callable[[Connection, Any], None]  # (conn, target spec) after the state is copied


def _resessionize_all(conn: Connection, spec) -> None:
    """Sessions are derived from each rider's event times (held as contributions): recompute them
    all with the target logic."""
    spec.measure.rebuild_all(conn, spec)


def _state_unchanged(conn: Connection, spec) -> None:
    """Event schema v2 only adds event fields with defaults; a snapshot holds no event, only the
    views' contributions and dedup state, which do not change shape."""


def _same_without_new_fields(conn: Connection, spec) -> None:
    """revenue_per_minute v2 differs from v1 only by reading tip_cents. The state of v1 is v2's
    state exactly when no event before the snapshot carried a tip: the Kappa planner proves that
    from the log before it loads one (lklab.kappa.planner), and refuses otherwise."""


# (view, "logic" | "schema", from, to) → migration
MIGRATIONS: dict[tuple[str, str, int, int], Migration] = {
    ("user_sessions", "logic", 1, 2): _resessionize_all,
    ("revenue_per_minute", "logic", 1, 2): _same_without_new_fields,
    **{(view, "schema", 1, 2): _state_unchanged for view in views.VIEWS},
}


def migrations_for(snap: Snapshot, view: str, logic_version: int, schema_version: int) -> list[Migration]:
    """The migrations that bring `snap` to the target logic/schema version, or SnapshotError."""
    if snap.view != view:
        raise SnapshotError(f"snapshot {snap.snapshot_id} is of {snap.view}, not {view}")
    steps = []
    for kind, have, want in (("logic", snap.logic_version, logic_version), ("schema", snap.schema_version, schema_version)):
        if have == want:
            continue
        migration = MIGRATIONS.get((view, kind, have, want))
        if migration is None:
            raise SnapshotError(f"snapshot {snap.snapshot_id} has {kind} version {have}, the replay needs {want}, "
                                f"and no {view} migration {have}→{want} is declared: refusing to load it")
        steps.append(migration)
    return steps


# --- loading -----------------------------------------------------------------------------------

def refuse_redacted(snap: Snapshot) -> None:
    if snap.redacted_at is not None:
        raise SnapshotError(f"snapshot {snap.snapshot_id} was redacted at {snap.redacted_at:%Y-%m-%d %H:%M:%S} UTC: it held a "
                            "forgotten user's rows, so its files were deleted (`lklab forget`); replay from the log or a later snapshot")


def verify(snap: Snapshot, spec) -> dict[str, pa.Table]:
    """Read every piece at its recorded Delta version and check the checksum; return the pieces."""
    refuse_redacted(snap)
    tables, digests = {}, {}
    for piece in pieces(spec):
        try:
            digests[piece.name], tables[piece.name] = read_piece(snap, piece)
        except Exception as exc:  # noqa: BLE001 - any read failure means the snapshot is unusable
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
            raise SnapshotError(f"snapshot {snap.snapshot_id}: piece {piece.name} is unreadable ({first}): refusing to load it") from None
    meta = _meta(snap.view, snap.logic_version, snap.schema_version, snap.topic, snap.offsets)
    actual = checksum(meta, digests)
    if actual != snap.checksum:
        raise SnapshotError(f"snapshot {snap.snapshot_id}: checksum mismatch (catalog {snap.checksum[:12]}…, content "
                            f"{actual[:12]}…): the snapshot is corrupt or was changed; refusing to load it")
    return tables


def load(settings: Settings, engine: Engine, snap: Snapshot, spec, scope: str) -> dict[str, pa.Table]:
    """Verify `snap` and install its state as output `spec.name` of consumer `scope`, in one
    transaction, migrating it if its logic/schema version differs; returns the pieces read. Refuses,
    writing nothing, on a bad checksum, an undeclared migration, another topic, or an output that
    already has state. No Spark: the pieces are read with delta-rs."""
    view = spec.view
    steps = migrations_for(snap, view, spec.logic_version, SCHEMA_VERSION)
    if snap.topic != settings.topic:
        raise SnapshotError(f"snapshot {snap.snapshot_id} holds offsets of topic {snap.topic}, not {settings.topic}")
    tables = verify(snap, spec)
    with engine.begin() as conn:
        if progress.has_progress(conn, scope):
            raise SnapshotError(f"{spec.name} already has state (consumer {scope}): choose a new --version for a replay from a snapshot")
        for piece in pieces(spec):
            if piece.fixed is not None:
                piece.install(conn, tables[piece.name], spec.name, scope, settings.topic)
        _install_held(conn, scope, spec, tables)
        for step in steps:
            step(conn, spec)
    return tables


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=timezone.utc)  # Arrow's UTC is a ZoneInfo, slower in the fold's arithmetic


def _undated(tables: dict[str, pa.Table]) -> int | None:
    """The bucket a snapshot from before buckets were kept dates its events in: that of its
    progress (no record of them can be later: as CheckpointedSink does for such rows)."""
    latest = max((t for t in tables["progress"].column("max_event_time").to_pylist() if t is not None), default=None)
    return None if latest is None else horizon.bucket_of(latest)


def held_state(tables: dict[str, pa.Table], spec) -> HeldState:
    """The dedup versions, contributions and event-time buckets a replay's sink holds, from the pieces
    `load` returned, so the sink starts from them instead of reading back what was just written."""
    state, contrib = tables["event_state"], tables["contrib"]
    ids = state.column("event_id").to_pylist()
    versions = dict(zip(ids, state.column("event_version").to_pylist()))
    columns = (python_values(contrib.column(c), _utc if c == "window_start" else None)
               for c in ("event_id", "entity", "window_start", "amount", "member"))
    contribs = {(spec.name, eid): Contrib(*rest) for eid, *rest in zip(*columns)}
    undated = _undated(tables)
    buckets = [(eid, undated if bucket is None else bucket) for eid, bucket in zip(ids, state.column("time_bucket").to_pylist())]
    return HeldState(versions, contribs, buckets)


def _install_held(conn: Connection, scope: str, spec, tables: dict[str, pa.Table]) -> None:
    """The snapshot's held state as the scope's first chunks (lklab.engine.chunks), built from its
    Arrow pieces; contributions that SQL reads (`contribs_as_rows`) as rows."""
    if spec.contribs_as_rows:  # column by column, as the other pieces: the sink builds its own held_state from the same tables
        contrib = tables["contrib"]
        bulk_upsert_columns(conn, speed_contrib, {c: contrib.column(c) for c in contrib.column_names}, {"view": spec.name})
    writer = chunks.arrow_state_writer(tables["event_state"], None if spec.contribs_as_rows else tables["contrib"],
                                       None if spec.contribs_as_rows else spec.name, _undated(tables))
    writer.write(conn, scope, chunks.next_seq(conn, scope))


def read_output(snap: Snapshot, entity: str | None = None, window: datetime | None = None) -> list[dict]:
    """The served answer rows stored with a snapshot (Delta, at the recorded version, delta-rs)."""
    import pyarrow.compute as pc

    refuse_redacted(snap)
    _, table = read_piece(snap, next(p for p in pieces(views.view(snap.view)) if p.name == "output"))
    if entity is not None:
        table = table.filter(pc.equal(table["entity"], entity))
    if window is not None:
        table = table.filter(pc.equal(table["window_start"], pa.scalar(window, UTC_US)))
    return table.to_pylist()
