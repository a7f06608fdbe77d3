"""The kinds of measure a view can have, one strategy object each: a money sum, a distinct count,
and sessions. A measure owns everything that differs between them, so no caller branches on the
kind of view:
  - what one event contributes, and how contributions fold into the stored output (the engine);
  - how the stored output is read, and the shape of a value (int, or (sessions, duration_ms));
  - the Spark frame that computes it from silver (the batch layer);
  - how the Lambda batch layer stores and serves a promoted build's rows;
  - its part of a snapshot (the maintained state), and of a snapshot's output piece;
  - the frame its GX suite validates, and its JSON row.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import pyarrow as pa
from sqlalchemy import Table, func, select
from sqlalchemy.engine import Connection

from lklab.core.events import Event
from lklab.serving.store import (
    add_to,
    batch_view_rows,
    session_rows,
    speed_contrib,
    speed_view_members,
    speed_view_rows,
)
from lklab.views.windows import DAY_S, MONEY_SIGN, WINDOW_S, signed_amount, window_is_final, window_start

if TYPE_CHECKING:
    from lklab.views.registry import ViewSpec

Key = tuple[str, datetime]  # (entity, window start), or for sessions (user, event time)
DateRange = tuple[date, date]  # [first, end) in UTC event dates
UTC_US = pa.timestamp("us", tz="UTC")
IN_CHUNK = 500  # bound parameters per IN list (SQLite's limit is far above; Postgres has none)


class Contrib(NamedTuple):
    """What one event contributes to one view (a speed_contrib row). A tuple, because a replay
    holds one per event in memory, and tuples of plain values are left alone by the GC."""

    entity: str
    window: datetime
    amount: int | None  # money sums: the signed amount
    member: str | None  # distinct counts: the member; sessions: the event id


class StatePiece(NamedTuple):
    """The maintained rows of an output, as a snapshot stores them (lklab.engine.snapshots)."""

    schema: pa.Schema
    table: Table
    read: Callable[[Connection, str], Any]  # (conn, output) -> rows in schema order
    renamed: dict[str, str]  # snapshot column -> serving column, where they differ (the serving row adds view=output)


def chunks(items: Sequence, size: int = IN_CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i: i + size]


def window_start_col(ts, width_s: int = WINDOW_S):
    """window_start() as a Spark column expression (UTC session time zone)."""
    from pyspark.sql import functions as F

    return F.timestamp_seconds(F.floor(F.unix_timestamp(ts) / width_s) * width_s)


def _in_window(query, t, entity: str | None, start: datetime | None, end: datetime | None, key: str = "entity"):
    """Only rows of this entity (column `key`) and window starts in [start, end)."""
    if entity is not None:
        query = query.where(t.c[key] == entity)
    if start is not None:
        query = query.where(t.c.window_start >= start)
    if end is not None:
        query = query.where(t.c.window_start < end)
    return query


class Measure:
    """The strategy interface; see the module docstring. Subclasses are frozen dataclasses, so a
    measure is a hashable value (the engine groups its per-batch deltas by measure)."""

    kind: ClassVar[str]
    with_tips = False  # money sums that count schema v2's tips (MoneySum's field)
    speed_layer: ClassVar[bool] = True  # the Lambda speed layer maintains it (else batch serves every window)
    carries_money: ClassVar[bool] = False  # reconciled against the payments ledger
    rereads_contribs: ClassVar[bool] = False  # its writes read the held contributions back from speed_contrib

    # --- semantics -------------------------------------------------------------------------
    @property
    def reads(self) -> tuple[str, ...]:
        """The event fields it reads beside the view's entity, event_type and event_time (a logic
        that reads a field older schema versions lack needs a readable history: lklab.evolution)."""
        return ()

    def contribution(self, spec: ViewSpec, event: Event) -> tuple[Key, int | str] | None:
        raise NotImplementedError

    def contrib(self, key: Key, value: int | str) -> Contrib:
        """A contribution in its stored form."""
        return Contrib(key[0], key[1], None, str(value))

    def evaluate(self, spec: ViewSpec, latest: Iterable[Event]) -> dict:
        """Reference in-memory evaluation over deduplicated events."""
        raise NotImplementedError

    def is_final(self, spec: ViewSpec, start: datetime, T: datetime | None) -> bool:
        return window_is_final(start, spec.window_s, T)

    # --- the engine's output -----------------------------------------------------------------
    def new_deltas(self) -> Deltas:
        raise NotImplementedError

    def value_columns(self, spec: ViewSpec) -> tuple[str, ...]:
        return (spec.value_column,)

    def output_query(self, spec: ViewSpec, entity: str | None = None, start: datetime | None = None,
                     end: datetime | None = None, not_final_after: datetime | None = None):
        """SELECT entity, window_start, *values of output `spec.name`; with `not_final_after`
        (T), only windows not final at T: what the Lambda merge serves from speed."""
        raise NotImplementedError

    def value(self, row: Sequence) -> Any:
        """A row (entity, window_start, *values) → its value."""
        return row[2]

    def size(self, value: Any) -> int:
        """The number a diff compares."""
        return value

    def row_json(self, spec: ViewSpec, entity: str, window: datetime, value: Any) -> dict:
        values = value if isinstance(value, tuple) else (value,)
        return {spec.entity: entity, "window_start": window.isoformat(), **dict(zip(self.value_columns(spec), values))}

    # --- the batch layer ---------------------------------------------------------------------
    def gold_frame(self, silver, spec: ViewSpec):
        """The gold table from silver (a Spark DataFrame with an event_date column)."""
        raise NotImplementedError

    def gold_input_dates(self, dates: DateRange | None) -> DateRange | None:
        """The silver event dates a rebuild of gold `dates` reads."""
        return dates

    def batch_rows(self, spec: ViewSpec, build_id: str, rows: Iterable[Sequence]) -> tuple[Table, list[dict]]:
        """Where a promoted build keeps its rows (entity, window_start, *values), and the rows."""
        return batch_view_rows, [{"build_id": build_id, "view": spec.name, "entity": e, "window_start": w, "value": int(v)}
                                 for e, w, v in rows]

    def batch_query(self, spec: ViewSpec, build_id: str, T: datetime | None, entity: str | None = None,
                    start: datetime | None = None, end: datetime | None = None):
        """SELECT entity, window_start, *values of a promoted build; with T, only windows final at T."""
        b = batch_view_rows
        query = select(b.c.entity, b.c.window_start, b.c.value).where(b.c.build_id == build_id, b.c.view == spec.name)
        if T is not None:
            query = query.where(b.c.window_start <= T - timedelta(seconds=spec.window_s))
        return _in_window(query, b, entity, start, end)

    # --- snapshots ---------------------------------------------------------------------------
    def state_piece(self) -> StatePiece:
        raise NotImplementedError

    def clear_windows(self, conn: Connection, spec: ViewSpec, keys: Sequence[Key]) -> None:
        """Delete output `spec.name`'s maintained rows of these (entity, window start) keys: a
        targeted repair (lklab.kappa.repair) rebuilds them from their events."""
        piece = self.state_piece()
        t = piece.table
        entity = t.c[piece.renamed.get("entity", "entity")]
        for name, window in keys:
            conn.execute(t.delete().where(t.c.view == spec.name, entity == name, t.c.window_start == window))

    def output_piece(self, value: Any) -> tuple[int, int | None]:
        """A value as a snapshot's output piece stores it: (value, duration_ms)."""
        return value, None

    def from_output_piece(self, row: Mapping) -> Any:
        return row["value"]

    # --- data quality ------------------------------------------------------------------------
    def gx_frame(self, spark, spec: ViewSpec, rows: Iterable[tuple]):
        """The output's rows (entity, window_start, value) as the gold table its GX suite checks."""
        from pyspark.sql import functions as F

        schema = f"{spec.entity} string, window_start timestamp, {spec.value_column} long"
        frame = spark.createDataFrame([(e, w.replace(tzinfo=None), int(v)) for e, w, v in rows] or [], schema)
        return frame.withColumn("event_date", F.to_date("window_start"))


class Deltas:
    """One batch's changes to the outputs of one measure, accumulated in memory and written at once."""

    def add(self, spec: ViewSpec, contrib: Contrib, sign: int) -> None:
        raise NotImplementedError

    def write(self, conn: Connection) -> None:
        """In the caller's transaction, after the batch's contributions are written."""
        raise NotImplementedError


def _keyed(spec: ViewSpec, event: Event) -> Key | None:
    """(entity, window start) for an event that counts in the view, else None."""
    if spec.event_types is not None and event.event_type not in spec.event_types:  # a StrEnum hashes as its value
        return None
    entity = getattr(event, spec.entity)
    return None if entity is None else (entity, window_start(event.event_time, spec.window_s))


# --- money sums ------------------------------------------------------------------------------

@dataclass(frozen=True)
class MoneySum(Measure):
    """Sum of signed amounts per (entity, window): captures minus refunds, and with `with_tips`
    plus each capture's tip (schema v2's tip_cents; a v1 event reads as tip 0). Additive."""

    with_tips: bool = False
    kind: ClassVar[str] = "money"
    carries_money: ClassVar[bool] = True

    @property
    def reads(self) -> tuple[str, ...]:
        return ("amount_cents", "tip_cents") if self.with_tips else ("amount_cents",)

    def contribution(self, spec: ViewSpec, event: Event) -> tuple[Key, int] | None:
        key = _keyed(spec, event)
        amount = None if key is None else signed_amount(event, self.with_tips)
        return None if amount is None else (key, amount)

    def contrib(self, key: Key, value: int | str) -> Contrib:
        return Contrib(key[0], key[1], int(value), None)

    def evaluate(self, spec: ViewSpec, latest: Iterable[Event]) -> dict[Key, int]:
        sums: dict[Key, int] = {}
        for event in latest:
            found = spec.contribution(event)
            if found is not None:
                sums[found[0]] = sums.get(found[0], 0) + int(found[1])
        return sums

    def new_deltas(self) -> Deltas:
        return _MoneyDeltas()

    def output_query(self, spec, entity=None, start=None, end=None, not_final_after=None):
        t = speed_view_rows
        query = select(t.c.entity, t.c.window_start, t.c.value).where(t.c.view == spec.name, t.c.events > 0)
        if not_final_after is not None:
            query = query.where(t.c.window_start > not_final_after - timedelta(seconds=spec.window_s))
        return _in_window(query, t, entity, start, end).order_by(t.c.entity, t.c.window_start)

    def gold_frame(self, silver, spec: ViewSpec):
        from pyspark.sql import functions as F

        rows = _counted(silver, spec)
        sign = F.create_map(*[x for k, v in MONEY_SIGN.items() for x in (F.lit(k), F.lit(v))])
        money = F.col("amount_cents")
        if self.with_tips:  # silver's tip_cents: null in partitions written before schema v2, 0 for v1 events
            captured = F.col("event_type") == F.lit("payment_captured")
            money = money + F.when(captured, F.coalesce(F.col("tip_cents"), F.lit(0))).otherwise(F.lit(0))
        rows = rows.withColumn("signed", money * sign[F.col("event_type")]).where(F.col("signed").isNotNull())
        measures = [F.sum("signed").cast("long").alias(spec.value_column), F.count("*").cast("int").alias("events")]
        return _grouped(rows, spec, measures)

    def state_piece(self) -> StatePiece:
        t = speed_view_rows
        return StatePiece(
            pa.schema([("entity", pa.string()), ("window_start", UTC_US), ("value", pa.int64()), ("events", pa.int64())]), t,
            lambda c, out: c.execute(select(t.c.entity, t.c.window_start, t.c.value, t.c.events).where(t.c.view == out)), {})

    def gx_frame(self, spark, spec: ViewSpec, rows: Iterable[tuple]):
        from pyspark.sql import functions as F

        # the speed table keeps counts > 0 only for live rows
        return super().gx_frame(spark, spec, rows).withColumn("events", F.lit(1))


class _MoneyDeltas(Deltas):
    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, datetime], list[int]] = {}  # [value, events]

    def add(self, spec: ViewSpec, contrib: Contrib, sign: int) -> None:
        row = self.rows.setdefault((spec.name, contrib.entity, contrib.window), [0, 0])
        row[0] += sign * int(contrib.amount or 0)
        row[1] += sign

    def write(self, conn: Connection) -> None:
        add_to(conn, speed_view_rows, [{"view": v, "entity": e, "window_start": w, "value": val, "events": n}
                                       for (v, e, w), (val, n) in self.rows.items() if val or n], add=("value", "events"))


# --- distinct counts -------------------------------------------------------------------------

@dataclass(frozen=True)
class DistinctCount(Measure):
    """Count of distinct members (user_id) per (entity, window); members are kept with their
    event counts so a retraction can remove one."""

    kind: ClassVar[str] = "distinct_users"

    @property
    def reads(self) -> tuple[str, ...]:
        return ("user_id",)

    def contribution(self, spec: ViewSpec, event: Event) -> tuple[Key, str] | None:
        key = _keyed(spec, event)
        return None if key is None else (key, event.user_id)

    def evaluate(self, spec: ViewSpec, latest: Iterable[Event]) -> dict[Key, int]:
        members: dict[Key, set[str]] = {}
        for event in latest:
            found = spec.contribution(event)
            if found is not None:
                members.setdefault(found[0], set()).add(str(found[1]))
        return {k: len(v) for k, v in members.items()}

    def new_deltas(self) -> Deltas:
        return _MemberDeltas()

    def output_query(self, spec, entity=None, start=None, end=None, not_final_after=None):
        t = speed_view_members
        query = (select(t.c.entity, t.c.window_start, func.count().label("value"))
                 .where(t.c.view == spec.name, t.c.events > 0).group_by(t.c.entity, t.c.window_start))
        if not_final_after is not None:
            query = query.where(t.c.window_start > not_final_after - timedelta(seconds=spec.window_s))
        return _in_window(query, t, entity, start, end).order_by(t.c.entity, t.c.window_start)

    def gold_frame(self, silver, spec: ViewSpec):
        from pyspark.sql import functions as F

        return _grouped(_counted(silver, spec), spec, [F.countDistinct("user_id").cast("long").alias(spec.value_column)])

    def state_piece(self) -> StatePiece:
        t = speed_view_members
        return StatePiece(
            pa.schema([("entity", pa.string()), ("window_start", UTC_US), ("member", pa.string()), ("events", pa.int64())]), t,
            lambda c, out: c.execute(select(t.c.entity, t.c.window_start, t.c.member, t.c.events).where(t.c.view == out)), {})


class _MemberDeltas(Deltas):
    def __init__(self) -> None:
        self.members: dict[tuple[str, str, datetime, str], int] = {}  # events per member

    def add(self, spec: ViewSpec, contrib: Contrib, sign: int) -> None:
        key = (spec.name, contrib.entity, contrib.window, contrib.member or "")
        self.members[key] = self.members.get(key, 0) + sign

    def write(self, conn: Connection) -> None:
        add_to(conn, speed_view_members, [{"view": v, "entity": e, "window_start": w, "member": m, "events": n}
                                          for (v, e, w, m), n in self.members.items() if n], add=("events",))


def _counted(silver, spec: ViewSpec):
    from pyspark.sql import functions as F

    rows = silver if spec.event_types is None else silver.where(F.col("event_type").isin(sorted(spec.event_types)))
    return rows.where(F.col(spec.entity).isNotNull())


def _grouped(rows, spec: ViewSpec, measures: list):
    from pyspark.sql import functions as F

    keys = [F.col(spec.entity), window_start_col(F.col("event_time"), spec.window_s).alias("window_start")]
    return rows.groupBy(*keys).agg(*measures).withColumn("event_date", F.to_date("window_start"))


# --- sessions --------------------------------------------------------------------------------

SESSION_GAP_S = 30 * 60


@dataclass(frozen=True)
class Sessions(Measure):
    """Per (user, UTC day): sessions split by more than `gap_s` of inactivity, counted on the day
    they start, and their total duration in ms. Not additive: a changed event re-sessionizes its
    rider from all of the rider's event times (kept as contributions). `split_at_midnight` is the
    seed's documented bug (logic v1 of user_sessions). The Lambda speed layer does not maintain
    sessions: the merge serves the batch build's rows for every day."""

    split_at_midnight: bool = False
    gap_s: int = SESSION_GAP_S
    kind: ClassVar[str] = "sessions"
    speed_layer: ClassVar[bool] = False
    rereads_contribs: ClassVar[bool] = True  # rebuild() reads a rider's event times

    def contribution(self, spec: ViewSpec, event: Event) -> tuple[Key, str]:
        """Every event of a rider counts, at its exact event time."""
        return (getattr(event, spec.entity), event.event_time), event.event_id

    def is_final(self, spec: ViewSpec, start: datetime, T: datetime | None) -> bool:
        return False  # only streams that never close windows maintain sessions

    def new_session(self, previous: datetime, current: datetime) -> bool:
        gap = (current - previous).total_seconds() > self.gap_s
        return gap or (self.split_at_midnight and previous.date() != current.date())

    def sessions(self, times: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
        out: list[list[datetime]] = []
        for t in sorted(times):
            if out and not self.new_session(out[-1][1], t):
                out[-1][1] = t
            else:
                out.append([t, t])
        return [(a, b) for a, b in out]

    def per_day(self, times_by_user: Mapping[str, Iterable[datetime]]) -> dict[Key, tuple[int, int]]:
        """(user, day start) → (sessions, total duration in ms)."""
        result: dict[Key, tuple[int, int]] = {}
        for user, times in times_by_user.items():
            for start, end in self.sessions(times):
                key = (user, window_start(start, DAY_S))
                count, ms = result.get(key, (0, 0))
                result[key] = (count + 1, ms + int((end - start) / timedelta(milliseconds=1)))
        return result

    def evaluate(self, spec: ViewSpec, latest: Iterable[Event]) -> dict[Key, tuple[int, int]]:
        times: dict[str, list[datetime]] = {}
        for event in latest:
            times.setdefault(getattr(event, spec.entity), []).append(event.event_time)
        return self.per_day(times)

    def rebuild(self, conn: Connection, spec: ViewSpec, riders: list[str]) -> None:
        """Recompute these riders' sessions from all of their held event times (one SELECT and
        one DELETE per chunk of riders, then one bulk INSERT)."""
        times: dict[str, list[datetime]] = {rider: [] for rider in riders}
        for chunk in chunks(riders):
            for rider, at in conn.execute(select(speed_contrib.c.entity, speed_contrib.c.window_start)
                                          .where(speed_contrib.c.view == spec.name, speed_contrib.c.entity.in_(chunk))):
                times[rider].append(at)
            conn.execute(session_rows.delete().where(session_rows.c.view == spec.name, session_rows.c.user_id.in_(chunk)))
        rows = [{"view": spec.name, "user_id": user, "window_start": day, "sessions": n, "duration_ms": ms}
                for (user, day), (n, ms) in self.per_day({r: t for r, t in times.items() if t}).items()]
        if rows:
            conn.execute(session_rows.insert(), rows)

    def rebuild_all(self, conn: Connection, spec: ViewSpec) -> None:
        riders = [r for (r,) in conn.execute(select(speed_contrib.c.entity).where(speed_contrib.c.view == spec.name).distinct())]
        self.rebuild(conn, spec, riders)

    def new_deltas(self) -> Deltas:
        return _SessionDeltas()

    def value_columns(self, spec: ViewSpec) -> tuple[str, ...]:
        return "sessions", "duration_ms"

    def output_query(self, spec, entity=None, start=None, end=None, not_final_after=None):
        return _session_query(spec.name, entity, start, end)

    def value(self, row: Sequence) -> tuple[int, int]:
        return row[2], row[3]

    def size(self, value: tuple[int, int]) -> int:
        return value[0]  # a diff compares session counts

    def gold_frame(self, silver, spec: ViewSpec):
        """The same rule with window functions: a new session when the gap exceeds gap_s (or, with
        the midnight bug, the UTC date changes)."""
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        order = Window.partitionBy(spec.entity).orderBy("event_time", "event_id")
        prev = F.lag("event_time").over(order)
        new = prev.isNull() | ((F.unix_millis("event_time") - F.unix_millis(prev)) > self.gap_s * 1000)
        if self.split_at_midnight:
            new = new | (F.to_date(prev) != F.to_date("event_time"))
        numbered = silver.select(spec.entity, "event_id", "event_time").withColumn("new", new.cast("int"))
        numbered = numbered.withColumn("session", F.sum("new").over(order.rowsBetween(Window.unboundedPreceding, Window.currentRow)))
        sessions = numbered.groupBy(spec.entity, "session").agg(F.min("event_time").alias("start"), F.max("event_time").alias("end"))
        return (
            sessions.withColumn("window_start", window_start_col(F.col("start"), DAY_S))
            .groupBy(spec.entity, "window_start")
            .agg(F.count("*").cast("long").alias("sessions"),
                 F.sum(F.unix_millis("end") - F.unix_millis("start")).cast("long").alias("duration_ms"))
            .withColumn("event_date", F.to_date("window_start"))
        )

    def gold_input_dates(self, dates: DateRange | None) -> DateRange | None:
        """A session may cross midnight: read a day more on each side."""
        return None if dates is None else (dates[0] - timedelta(days=1), dates[1] + timedelta(days=1))

    def batch_rows(self, spec: ViewSpec, build_id: str, rows: Iterable[Sequence]) -> tuple[Table, list[dict]]:
        return session_rows, [{"view": _batch_output(spec, build_id), "user_id": u, "window_start": d, "sessions": int(n),
                               "duration_ms": int(ms)} for u, d, n, ms in rows]

    def batch_query(self, spec, build_id, T, entity=None, start=None, end=None):
        return _session_query(_batch_output(spec, build_id), entity, start, end)

    def state_piece(self) -> StatePiece:
        t = session_rows
        return StatePiece(
            pa.schema([("entity", pa.string()), ("window_start", UTC_US), ("sessions", pa.int64()), ("duration_ms", pa.int64())]), t,
            lambda c, out: c.execute(select(t.c.user_id.label("entity"), t.c.window_start, t.c.sessions, t.c.duration_ms)
                                     .where(t.c.view == out)), {"entity": "user_id"})

    def output_piece(self, value: tuple[int, int]) -> tuple[int, int | None]:
        return value

    def from_output_piece(self, row: Mapping) -> tuple[int, int]:
        return row["value"], row["duration_ms"]

    def gx_frame(self, spark, spec: ViewSpec, rows: Iterable[tuple]):
        from pyspark.sql import functions as F

        frame = spark.createDataFrame([(e, w.replace(tzinfo=None), n, ms) for e, w, (n, ms) in rows] or [],
                                      f"{spec.entity} string, window_start timestamp, sessions long, duration_ms long")
        return frame.withColumn("event_date", F.to_date("window_start"))


class _SessionDeltas(Deltas):
    def __init__(self) -> None:
        self.riders: dict[ViewSpec, set[str]] = {}

    def add(self, spec: ViewSpec, contrib: Contrib, sign: int) -> None:
        self.riders.setdefault(spec, set()).add(contrib.entity)

    def write(self, conn: Connection) -> None:
        for spec, riders in self.riders.items():
            spec.measure.rebuild(conn, spec, sorted(riders))


def _batch_output(spec: ViewSpec, build_id: str) -> str:
    return f"{spec.name}@{build_id}"


def _session_query(output: str, entity: str | None, start: datetime | None, end: datetime | None):
    t = session_rows
    query = select(t.c.user_id, t.c.window_start, t.c.sessions, t.c.duration_ms).where(t.c.view == output)
    return _in_window(query, t, entity, start, end, key="user_id").order_by(t.c.user_id, t.c.window_start)
