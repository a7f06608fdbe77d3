"""The speed layer's sink for revenue_per_minute: idempotent, transactional, offset-fenced.

Scope of the exactly-once claim: for records of one topic, the serving store (the view, the
per-event state, the counters and the consumed offsets) changes exactly once per Kafka offset,
because the offsets are committed in the same database transaction as the results and every
record below the stored `next_offset` is skipped. Faust's own Kafka offset commits are only
at-least-once; re-delivered records are absorbed here. On top of that, events are deduplicated
by `event_id` (views.supersedes), so a re-*produced* event (a new offset carrying an event that
is already held at the same or a higher version) does not change the view either.

The dead-letter queue is at-least-once: dead letters are handed to `before_commit` while the
transaction is still open, so a crash can repeat them but never lose them.

View semantics are imported from lklab.views; nothing here re-defines them.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

from sqlalchemy import Engine, Table, and_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from lklab import views
from lklab.config import Settings
from lklab.events import EventError, parse_event
from lklab.serving import (
    speed_counters,
    speed_event_state,
    speed_progress,
    speed_revenue_per_minute,
    upsert,
)

InputRecord = tuple[int, int, bytes]  # (partition, offset, value) in consumption order

# Counter names in speed_counters.
PROCESSED = "processed"  # records that parsed into an event (whatever happened to them next)
DUPLICATES_IGNORED = "duplicates_ignored"  # event_id already held at the same or a higher version
LATE_DROPPED = "late_dropped"  # window already final (watermark - allowed lateness); batch owns it
DEAD_LETTERED = "dead_lettered"  # broke the event contract; sent to the DLQ topic
CORRECTIONS_APPLIED = "corrections_applied"  # a higher event_version replaced a held contribution
REDELIVERED_SKIPPED = "redelivered_skipped"  # offset below the committed next_offset (Kafka re-delivery)
COUNTERS = (PROCESSED, DUPLICATES_IGNORED, LATE_DROPPED, DEAD_LETTERED, CORRECTIONS_APPLIED, REDELIVERED_SKIPPED)

_IN_CHUNK = 500  # bound parameters per IN list (SQLite's limit is far above; Postgres has none)


class StaleProgressError(RuntimeError):
    """Another consumer committed offsets for a partition of this batch first (a rebalance race).

    Nothing of the batch was written; calling apply_records again with the same records is safe
    (the already-committed offsets are skipped)."""


@dataclass(frozen=True)
class DeadLetter:
    reason: str
    partition: int
    offset: int
    raw: bytes


@dataclass
class ApplyStats:
    topic: str
    processed: int = 0
    skipped_redelivered: int = 0
    duplicates_ignored: int = 0
    late_dropped: int = 0
    corrections_applied: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    view_changes: int = 0  # (city, window) rows whose revenue or event count changed
    next_offsets: dict[int, int] = field(default_factory=dict)  # partitions advanced by this call
    watermark: datetime | None = None

    @property
    def dead_lettered(self) -> int:
        return len(self.dead_letters)


class ViewRow(NamedTuple):
    city: str
    window_start: datetime
    revenue_cents: int


@dataclass(frozen=True)
class PartitionProgress:
    partition: int
    next_offset: int
    max_event_time: datetime | None
    updated_at: datetime


@dataclass
class _Held:
    """What an event_id currently contributes (mirrors a speed_event_state row)."""

    version: int
    city: str
    window: datetime
    amount: int


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _dialect_insert(conn: Connection):
    try:
        return {"sqlite": sqlite.insert, "postgresql": postgresql.insert}[conn.dialect.name]
    except KeyError:
        raise NotImplementedError(f"serving store dialect {conn.dialect.name!r} is not supported (sqlite, postgresql)") from None


def _add(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], add: Sequence[str]) -> None:
    """INSERT … ON CONFLICT (pk) DO UPDATE SET col = col + excluded.col.

    Additive rather than read-modify-write, so concurrent workers owning different partitions
    can add to the same (city, window) or counter row without losing an update."""
    if not rows:
        return
    stmt = _dialect_insert(conn)(table)
    keys = [c.name for c in table.primary_key.columns]
    stmt = stmt.on_conflict_do_update(
        index_elements=keys, set_={c: table.c[c] + stmt.excluded[c] for c in add}
    )
    conn.execute(stmt, list(rows))


def _chunks(items: Sequence, size: int = _IN_CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _load_held(conn: Connection, event_ids: Sequence[str]) -> dict[str, _Held]:
    held: dict[str, _Held] = {}
    t = speed_event_state
    for chunk in _chunks(sorted(set(event_ids))):
        rows = conn.execute(
            select(t.c.event_id, t.c.event_version, t.c.city, t.c.window_start, t.c.amount_cents).where(
                t.c.event_id.in_(chunk)
            )
        )
        for event_id, version, city, window, amount in rows:
            held[event_id] = _Held(version, city, window, amount)
    return held


def _load_progress(conn: Connection, topic: str) -> dict[int, tuple[int, datetime | None]]:
    t = speed_progress
    rows = conn.execute(select(t.c.partition, t.c.next_offset, t.c.max_event_time).where(t.c.topic == topic))
    return {p: (next_offset, max_time) for p, next_offset, max_time in rows}


def apply_records(
    engine: Engine,
    settings: Settings,
    topic: str,
    records: Sequence[InputRecord],
    *,
    before_commit: Callable[[ApplyStats], None] | None = None,
) -> ApplyStats:
    """Apply one consumed batch of `topic` to speed_revenue_per_minute in ONE transaction.

    `records` are (partition, offset, value) in consumption order (per-partition offset order).
    `before_commit(stats)`, if given, runs inside the open transaction after every write (the
    worker sends dead letters there); if it raises, nothing of the batch is committed.
    Raises StaleProgressError when another consumer advanced one of these partitions first.
    """
    stats = ApplyStats(topic=topic)
    lateness = settings.allowed_lateness_s
    with engine.begin() as conn:
        progress = _load_progress(conn, topic)
        committed = {p: nxt for p, (nxt, _) in progress.items()}
        max_time: dict[int, datetime] = {p: mt for p, (_, mt) in progress.items() if mt is not None}

        # 1. Offset fence and parsing (no DB work).
        next_offset = dict(committed)
        fresh: list[tuple[int, Any]] = []  # (partition, Event) in consumption order
        for partition, offset, raw in records:
            if offset < next_offset.get(partition, 0):
                stats.skipped_redelivered += 1
                continue
            next_offset[partition] = offset + 1
            stats.next_offsets[partition] = offset + 1
            try:
                event = parse_event(raw if raw is not None else b"")
            except EventError as exc:
                stats.dead_letters.append(DeadLetter(exc.reason, partition, offset, raw or b""))
                continue
            fresh.append((partition, event))

        # 2. One SELECT (chunked IN list) for the state of every event_id that may touch the view.
        held = _load_held(conn, [e.event_id for _, e in fresh if views.signed_amount(e) is not None])

        # 3. Deltas in Python, in consumption order.
        deltas: dict[tuple[str, datetime], list[int]] = {}  # (city, window) -> [revenue, events]
        changed_state: dict[str, _Held] = {}
        wm = views.watermark(max_time)

        def add(key: tuple[str, datetime], amount: int, events: int) -> None:
            d = deltas.setdefault(key, [0, 0])
            d[0] += amount
            d[1] += events

        for partition, event in fresh:
            stats.processed += 1
            # The event advances its own partition first, so the first event seen on a partition
            # is judged against that partition's progress, never only against the others'.
            if partition not in max_time or event.event_time > max_time[partition]:
                max_time[partition] = event.event_time
                wm = views.watermark(max_time)
            amount = views.signed_amount(event)
            if amount is None:
                continue  # carries no money: nothing for this view
            if views.is_too_late(event.event_time, wm, lateness):
                stats.late_dropped += 1
                continue
            old = held.get(event.event_id)
            if not views.supersedes(event.event_version, old.version if old else None):
                stats.duplicates_ignored += 1
                continue
            if old is not None:
                add((old.city, old.window), -old.amount, -1)
                stats.corrections_applied += 1
            city, window = views.revenue_key(event)
            add((city, window), amount, 1)
            new = _Held(event.event_version, city, window, amount)
            held[event.event_id] = changed_state[event.event_id] = new
        stats.watermark = wm

        # 4. Bulk writes.
        view_rows = [
            {"city": c, "window_start": w, "revenue_cents": r, "events": n}
            for (c, w), (r, n) in deltas.items()
            if r or n
        ]
        stats.view_changes = len(view_rows)
        _add(conn, speed_revenue_per_minute, view_rows, add=("revenue_cents", "events"))
        upsert(
            conn,
            speed_event_state,
            [
                {"event_id": eid, "event_version": h.version, "city": h.city, "window_start": h.window, "amount_cents": h.amount}
                for eid, h in changed_state.items()
            ],
        )
        counts = {
            PROCESSED: stats.processed,
            DUPLICATES_IGNORED: stats.duplicates_ignored,
            LATE_DROPPED: stats.late_dropped,
            DEAD_LETTERED: stats.dead_lettered,
            CORRECTIONS_APPLIED: stats.corrections_applied,
            REDELIVERED_SKIPPED: stats.skipped_redelivered,
        }
        _add(conn, speed_counters, [{"name": k, "value": v} for k, v in counts.items() if v], add=("value",))
        _commit_progress(conn, topic, stats.next_offsets, committed, max_time)

        if before_commit is not None:
            before_commit(stats)
    return stats


def _commit_progress(
    conn: Connection,
    topic: str,
    advanced: dict[int, int],
    committed: dict[int, int],
    max_time: dict[int, datetime],
) -> None:
    """Write the new next_offset per partition, fenced on the value read at the start: if another
    consumer moved it meanwhile, the whole transaction is rolled back (StaleProgressError)."""
    if not advanced:
        return
    now = _now()
    t = speed_progress
    inserts = []
    for partition, nxt in sorted(advanced.items()):
        values = {"next_offset": nxt, "max_event_time": max_time.get(partition), "updated_at": now}
        if partition in committed:
            result = conn.execute(
                update(t)
                .where(and_(t.c.topic == topic, t.c.partition == partition, t.c.next_offset == committed[partition]))
                .values(**values)
            )
            if result.rowcount != 1:
                raise StaleProgressError(
                    f"{topic}[{partition}]: next_offset moved past {committed[partition]} while this batch ran; batch rolled back"
                )
        else:
            inserts.append({"topic": topic, "partition": partition, **values})
    if inserts:
        stmt = _dialect_insert(conn)(t).on_conflict_do_nothing(index_elements=["topic", "partition"])
        for row in inserts:  # one per newly seen partition, once in the topic's lifetime
            if conn.execute(stmt, row).rowcount != 1:
                raise StaleProgressError(f"{topic}[{row['partition']}]: progress created concurrently; batch rolled back")


def read_view(
    engine: Engine, city: str | None = None, start: datetime | None = None, end: datetime | None = None
) -> list[ViewRow]:
    """speed revenue_per_minute rows with at least one contributing event, window_start in [start, end)."""
    t = speed_revenue_per_minute
    query = select(t.c.city, t.c.window_start, t.c.revenue_cents).where(t.c.events > 0)
    if city is not None:
        query = query.where(t.c.city == city)
    if start is not None:
        query = query.where(t.c.window_start >= start)
    if end is not None:
        query = query.where(t.c.window_start < end)
    with engine.connect() as conn:
        return [ViewRow(*row) for row in conn.execute(query.order_by(t.c.city, t.c.window_start))]


def read_progress(engine: Engine, topic: str) -> dict[int, PartitionProgress]:
    """Committed progress per partition of `topic` (partitions never consumed are absent)."""
    t = speed_progress
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.c.partition, t.c.next_offset, t.c.max_event_time, t.c.updated_at)
            .where(t.c.topic == topic)
            .order_by(t.c.partition)
        )
        return {p: PartitionProgress(p, nxt, mt, ua) for p, nxt, mt, ua in rows}


def read_counters(engine: Engine) -> dict[str, int]:
    """Every speed counter, with the known ones present (0) even before they first move."""
    with engine.connect() as conn:
        found = dict(conn.execute(select(speed_counters.c.name, speed_counters.c.value)).all())
    return {**{name: 0 for name in COUNTERS}, **found}
