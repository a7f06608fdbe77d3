"""The speed layer's sink for every view in lklab.views.VIEWS: idempotent, transactional, offset-fenced.

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

import os

from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple

from sqlalchemy import Engine, Table, and_, select, update
from sqlalchemy.engine import Connection

from lklab import views
from lklab.core.config import Settings
from lklab.core.events import EventError, parse_event
from lklab.engine.outputs import speed_view_query
from lklab.serving.store import (
    session_rows,
    speed_contrib,
    speed_counters,
    speed_event_state,
    speed_heartbeat,
    speed_late_windows,
    speed_progress,
    speed_view_members,
    speed_view_rows,
    bulk_upsert,
    dialect_insert,
    upsert,
)

InputRecord = tuple[int, int, bytes]  # (partition, offset, value) in consumption order

# Counter names in speed_counters.
PROCESSED = "processed"  # records that parsed into an event (whatever happened to them next)
DUPLICATES_IGNORED = "duplicates_ignored"  # event_id already held at the same or a higher version
LATE_DROPPED = "late_dropped"  # too late for at least one view's window (already final); batch owns it
DEAD_LETTERED = "dead_lettered"  # broke the event contract; sent to the DLQ topic
CORRECTIONS_APPLIED = "corrections_applied"  # a higher event_version replaced a held contribution
REDELIVERED_SKIPPED = "redelivered_skipped"  # offset below the committed next_offset (Kafka re-delivery)
# Offsets the log no longer held when this consumer reached them: retention outran it (the consumer
# resets to the log start). Those events are not in this state; batch or a replay from bronze must cover them.
OFFSETS_MISSED = "offsets_missed"
COUNTERS = (PROCESSED, DUPLICATES_IGNORED, LATE_DROPPED, DEAD_LETTERED, CORRECTIONS_APPLIED, REDELIVERED_SKIPPED, OFFSETS_MISSED)

DEFAULT_SCOPE = Settings.model_fields["speed_group"].default  # the live speed layer's consumer group
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
    offsets_missed: int = 0  # gaps in a partition's offsets since the last committed one
    duplicates_ignored: int = 0
    late_dropped: int = 0
    corrections_applied: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    view_changes: int = 0  # (view, entity, window) rows or members whose value changed
    next_offsets: dict[int, int] = field(default_factory=dict)  # partitions advanced by this call
    watermark: datetime | None = None

    @property
    def dead_lettered(self) -> int:
        return len(self.dead_letters)


class ViewRow(NamedTuple):
    entity: str
    window_start: datetime
    value: int


@dataclass(frozen=True)
class PartitionProgress:
    partition: int
    next_offset: int
    max_event_time: datetime | None
    updated_at: datetime


class _Contrib(NamedTuple):
    """What one event contributes to one view (mirrors a speed_contrib row). A tuple, because a
    replay holds one per event in memory, and tuples of plain values are left alone by the GC."""

    entity: str
    window: datetime
    amount: int | None
    member: str | None

    @classmethod
    def of(cls, spec: views.ViewSpec, event) -> "_Contrib | None":
        found = spec.contribution(event)
        if found is None:
            return None
        (entity, window), value = found
        return cls(entity, window, value, None) if spec.measure == views.MONEY else cls(entity, window, None, str(value))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _add(conn: Connection, table: Table, rows: Sequence[dict[str, Any]], add: Sequence[str]) -> None:
    """INSERT … ON CONFLICT (pk) DO UPDATE SET col = col + excluded.col.

    Additive rather than read-modify-write, so concurrent workers owning different partitions
    can add to the same (city, window) or counter row without losing an update."""
    if not rows:
        return
    stmt = dialect_insert(conn)(table)
    keys = [c.name for c in table.primary_key.columns]
    stmt = stmt.on_conflict_do_update(
        index_elements=keys, set_={c: table.c[c] + stmt.excluded[c] for c in add}
    )
    conn.execute(stmt, list(rows))


def _chunks(items: Sequence, size: int = _IN_CHUNK) -> Iterable[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _by_ids(query, column, ids: Sequence[str] | None) -> Iterable:
    """`query` as is (ids None: all rows), or once per chunk of ids (an IN list each)."""
    if ids is None:
        yield query
        return
    for chunk in _chunks(sorted(set(ids))):
        yield query.where(column.in_(chunk))


def _load_versions(conn: Connection, scope: str, event_ids: Sequence[str] | None = None) -> dict[str, int]:
    """The held versions of these events, or of every event of the scope (None)."""
    t = speed_event_state
    found: dict[str, int] = {}
    for query in _by_ids(select(t.c.event_id, t.c.event_version).where(t.c.scope == scope), t.c.event_id, event_ids):
        found.update(conn.execute(query).all())
    return found


def _load_contribs(conn: Connection, view_names: Sequence[str],
                   event_ids: Sequence[str] | None = None) -> dict[tuple[str, str], _Contrib]:
    """The held contributions of these events to these views, or of every event (None)."""
    t = speed_contrib
    # view first: the primary key (view, event_id) serves the lookup, not a scan
    base = select(t.c.view, t.c.event_id, t.c.entity, t.c.window_start, t.c.amount, t.c.member).where(t.c.view.in_(view_names))
    found: dict[tuple[str, str], _Contrib] = {}
    for query in _by_ids(base, t.c.event_id, event_ids):
        for view_name, event_id, entity, window, amount, member in conn.execute(query):
            found[(view_name, event_id)] = _Contrib(entity, window, amount, member)
    return found


class _Deltas:
    """Per-batch changes, accumulated in Python and written in bulk (additively)."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str, datetime], list[int]] = {}  # MONEY: [value, events]
        self.members: dict[tuple[str, str, datetime, str], int] = {}  # DISTINCT: events
        self.late: dict[tuple[str, str, datetime], int] = {}
        self.contribs: dict[tuple[str, str], _Contrib | None] = {}  # None = delete
        self.riders: set[tuple[views.SessionSpec, str]] = set()  # sessionized views to recompute per rider

    def apply(self, spec: views.ViewSpec, contrib: _Contrib, sign: int) -> None:
        if spec.measure == views.SESSIONS:
            self.riders.add((spec, contrib.entity))
        elif spec.measure == views.MONEY:
            row = self.rows.setdefault((spec.name, contrib.entity, contrib.window), [0, 0])
            row[0] += sign * int(contrib.amount or 0)
            row[1] += sign
        else:
            key = (spec.name, contrib.entity, contrib.window, contrib.member or "")
            self.members[key] = self.members.get(key, 0) + sign

    def dropped(self, spec: views.ViewSpec, contrib: _Contrib) -> None:
        key = (spec.name, contrib.entity, contrib.window)
        self.late[key] = self.late.get(key, 0) + 1

    def write(self, conn: Connection) -> int:
        rows = [{"view": v, "entity": e, "window_start": w, "value": val, "events": n}
                for (v, e, w), (val, n) in self.rows.items() if val or n]
        members = [{"view": v, "entity": e, "window_start": w, "member": m, "events": n}
                   for (v, e, w, m), n in self.members.items() if n]
        _add(conn, speed_view_rows, rows, add=("value", "events"))
        _add(conn, speed_view_members, members, add=("events",))
        _add(conn, speed_late_windows, [{"view": v, "entity": e, "window_start": w, "dropped": n}
                                        for (v, e, w), n in self.late.items()], add=("dropped",))
        gone = [(v, eid) for (v, eid), c in self.contribs.items() if c is None]
        for view_name, event_id in gone:
            conn.execute(speed_contrib.delete().where(and_(speed_contrib.c.view == view_name, speed_contrib.c.event_id == event_id)))
        bulk_upsert(conn, speed_contrib, [(v, eid, *c) for (v, eid), c in self.contribs.items() if c is not None])
        by_spec: dict[views.SessionSpec, list[str]] = {}
        for spec, rider in self.riders:
            by_spec.setdefault(spec, []).append(rider)
        for spec, riders in by_spec.items():
            resessionize(conn, spec, sorted(riders))
        return len(rows) + len(members) + len(self.riders)


def resessionize(conn: Connection, spec: views.SessionSpec, riders: list[str]) -> None:
    """Sessions are not additive: recompute these riders' sessions from all of their events
    (one SELECT and one DELETE per chunk of riders, then one bulk INSERT)."""
    times: dict[str, list[datetime]] = {rider: [] for rider in riders}
    for chunk in _chunks(riders):
        for rider, at in conn.execute(select(speed_contrib.c.entity, speed_contrib.c.window_start)
                                      .where(speed_contrib.c.view == spec.name, speed_contrib.c.entity.in_(chunk))):
            times[rider].append(at)
        conn.execute(session_rows.delete().where(session_rows.c.view == spec.name, session_rows.c.user_id.in_(chunk)))
    rows = [{"view": spec.name, "user_id": user, "window_start": day, "sessions": n, "duration_ms": ms}
            for (user, day), (n, ms) in spec.per_day({r: t for r, t in times.items() if t}).items()]
    if rows:
        conn.execute(session_rows.insert(), rows)


def _apply_event(event, specs: Sequence[views.ViewSpec], contribs: dict[tuple[str, str], _Contrib],
                 deltas: _Deltas, wm: datetime | None, lateness: int | None) -> bool:
    """Move each view from the event's old contribution to its new one, side by side: the old
    one is retracted where its window is still open, the new one added where its window is still
    open, and a side whose window is already final is left to batch (recorded as such). A
    correction may move an event to another window, day, city or driver, so the two sides are
    judged apart. The held contribution becomes the new one either way: a final window never
    reopens, so what was not added there is never retracted later. Returns True if any side was
    left to batch."""
    dropped = False
    T = None if lateness is None else views.final_through(wm, lateness)
    for spec in specs:
        old, new = contribs.get((spec.name, event.event_id)), _Contrib.of(spec, event)
        if old is None and new is None:
            continue
        for contrib, sign in ((old, -1), (new, +1)):
            if contrib is None:
                continue
            if spec.is_final(contrib.window, T):
                deltas.dropped(spec, contrib)
                dropped = True
            else:
                deltas.apply(spec, contrib, sign)
        contribs[(spec.name, event.event_id)] = deltas.contribs[(spec.name, event.event_id)] = new
    return dropped


def _load_progress(conn: Connection, scope: str, topic: str) -> dict[int, tuple[int, datetime | None]]:
    t = speed_progress
    rows = conn.execute(select(t.c.partition, t.c.next_offset, t.c.max_event_time).where(t.c.scope == scope, t.c.topic == topic))
    return {p: (next_offset, max_time) for p, next_offset, max_time in rows}


def _fence_and_parse(records: Sequence[InputRecord], next_offset: dict[int, int], stats: ApplyStats) -> list[tuple[int, Any]]:
    """Skip offsets below next_offset (re-deliveries), advance it, parse; bad records become dead letters."""
    fresh: list[tuple[int, Any]] = []  # (partition, Event) in consumption order
    for partition, offset, raw in records:
        if offset < next_offset.get(partition, 0):
            stats.skipped_redelivered += 1
            continue
        if partition in next_offset and offset > next_offset[partition]:
            stats.offsets_missed += offset - next_offset[partition]
        next_offset[partition] = offset + 1
        stats.next_offsets[partition] = offset + 1
        try:
            event = parse_event(raw if raw is not None else b"")
        except EventError as exc:
            stats.dead_letters.append(DeadLetter(exc.reason, partition, offset, raw or b""))
            continue
        fresh.append((partition, event))
    return fresh


def _fold(fresh: Sequence[tuple[int, Any]], specs: Sequence[views.ViewSpec], versions: dict[str, int],
          contribs: dict[tuple[str, str], _Contrib], max_time: dict[int, datetime], deltas: _Deltas,
          changed_versions: dict[str, int], stats: ApplyStats, lateness: int | None, partitions: int | None = None) -> None:
    """The view deltas of these events, in consumption order, against the held state (updated in place).
    Windows close only once all `partitions` have reported (views.watermark)."""
    wm = views.watermark(max_time, partitions)
    for partition, event in fresh:
        stats.processed += 1
        # The event advances its own partition first, so the first event seen on a partition
        # is judged against that partition's progress, never only against the others'.
        if partition not in max_time or event.event_time > max_time[partition]:
            max_time[partition] = event.event_time
            wm = views.watermark(max_time, partitions)
        held = versions.get(event.event_id)
        if not views.supersedes(event.event_version, held):
            stats.duplicates_ignored += 1
            continue
        if held is not None:
            stats.corrections_applied += 1
        if _apply_event(event, specs, contribs, deltas, wm, lateness):
            stats.late_dropped += 1
        versions[event.event_id] = changed_versions[event.event_id] = event.event_version
    stats.watermark = wm


def _persist(conn: Connection, scope: str, topic: str, deltas: _Deltas, changed_versions: dict[str, int],
             stats: ApplyStats, committed: dict[int, int], max_time: dict[int, datetime]) -> None:
    """Views, per-event state, counters and offsets, in the caller's transaction (offset-fenced)."""
    stats.view_changes = deltas.write(conn)
    bulk_upsert(conn, speed_event_state, [(scope, eid, v) for eid, v in changed_versions.items()])
    counts = {
        PROCESSED: stats.processed,
        DUPLICATES_IGNORED: stats.duplicates_ignored,
        LATE_DROPPED: stats.late_dropped,
        DEAD_LETTERED: stats.dead_lettered,
        CORRECTIONS_APPLIED: stats.corrections_applied,
        REDELIVERED_SKIPPED: stats.skipped_redelivered,
        OFFSETS_MISSED: stats.offsets_missed,
    }
    _add(conn, speed_counters, [{"scope": scope, "name": k, "value": v} for k, v in counts.items() if v], add=("value",))
    _commit_progress(conn, scope, topic, stats.next_offsets, committed, max_time)


def apply_records(
    engine: Engine,
    settings: Settings,
    topic: str,
    records: Sequence[InputRecord],
    *,
    before_commit: Callable[[ApplyStats], None] | None = None,
    specs: Sequence[views.ViewSpec] | None = None,
    scope: str | None = None,
    close_windows: bool = True,
) -> ApplyStats:
    """Apply one consumed batch of `topic` to every speed view in ONE transaction.

    `records` are (partition, offset, value) in consumption order (per-partition offset order).
    `specs` are the views to maintain (default: lklab.views.VIEWS); `scope` names the consumer
    whose dedup state, offsets and counters these are (default: the live speed group), so a
    replay into versioned outputs never shares state with the live speed layer. With
    `close_windows=False` no window is ever final: a Kappa view has no batch layer behind it, so
    it must take late events and corrections into any window.
    `before_commit(stats)`, if given, runs inside the open transaction after every write (the
    worker sends dead letters there); if it raises, nothing of the batch is committed.
    Raises StaleProgressError when another consumer advanced one of these partitions first.
    """
    stats = ApplyStats(topic=topic)
    lateness = settings.allowed_lateness_s if close_windows else None
    specs = list(views.VIEWS.values()) if specs is None else specs
    scope = scope or settings.speed_group
    with engine.begin() as conn:
        progress = _load_progress(conn, scope, topic)
        committed = {p: nxt for p, (nxt, _) in progress.items()}
        max_time: dict[int, datetime] = {p: mt for p, (_, mt) in progress.items() if mt is not None}
        fresh = _fence_and_parse(records, dict(committed), stats)
        event_ids = [e.event_id for _, e in fresh]
        versions = _load_versions(conn, scope, event_ids)
        contribs = _load_contribs(conn, [spec.name for spec in specs], event_ids)
        deltas, changed_versions = _Deltas(), {}
        _fold(fresh, specs, versions, contribs, max_time, deltas, changed_versions, stats, lateness, settings.partitions)
        _persist(conn, scope, topic, deltas, changed_versions, stats, committed, max_time)
        if before_commit is not None:
            before_commit(stats)
    return stats


class CheckpointedSink:
    """A replay's sink: its state lives in memory and is checkpointed to the serving store, with
    the offsets, in one transaction every `every` records (and at checkpoint()).

    Same effect as apply_records batch by batch (the same fence, fold and writes), but a replay
    owns its scope alone, so the state is read once at start instead of per batch, and each
    event's state is written once per checkpoint instead of once per batch. A crash loses only
    the work since the last checkpoint: the offsets committed with it are where a re-run resumes,
    and the offset fence makes that exactly-once. The output moves checkpoint by checkpoint.

    Checkpoints are written by one background thread while the next records are folded (the
    driver releases the GIL while it writes); at most one is in flight, and they commit in order.
    Memory: one entry per event ever seen, per view (a heap state backend, as in Flink)."""

    def __init__(self, engine: Engine, settings: Settings, topic: str, specs: Sequence[views.ViewSpec], scope: str,
                 *, close_windows: bool = False, every: int = 100_000) -> None:
        self.engine, self.topic, self.specs, self.scope, self.every = engine, topic, list(specs), scope, every
        self.lateness, self.partitions = (settings.allowed_lateness_s if close_windows else None), settings.partitions
        with engine.connect() as conn:
            progress = _load_progress(conn, scope, topic)
            self.versions = _load_versions(conn, scope)
            self.contribs = _load_contribs(conn, [spec.name for spec in self.specs])
        self.committed = {p: nxt for p, (nxt, _) in progress.items()}
        self.max_time: dict[int, datetime] = {p: mt for p, (_, mt) in progress.items() if mt is not None}
        self.next_offset = dict(self.committed)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"checkpoint-{scope}")
        self._in_flight: Future | None = None
        self._reset()

    def _reset(self) -> None:
        self.pending, self.deltas, self.changed, self.since = ApplyStats(topic=self.topic), _Deltas(), {}, 0

    def apply(self, records: Sequence[InputRecord]) -> None:
        fresh = _fence_and_parse(records, self.next_offset, self.pending)
        _fold(fresh, self.specs, self.versions, self.contribs, self.max_time, self.deltas, self.changed,
              self.pending, self.lateness, self.partitions)
        self.since += len(records)
        if self.since >= self.every:
            self._start_checkpoint()

    def _start_checkpoint(self) -> None:
        self._wait()
        done = self.pending
        if done.next_offsets:
            self._in_flight = self._writer.submit(self._write, done, self.deltas, self.changed, dict(self.max_time))
        self._reset()

    def _write(self, done: ApplyStats, deltas: _Deltas, changed: dict[str, int], max_time: dict[int, datetime]) -> None:
        with self.engine.begin() as conn:
            _persist(conn, self.scope, self.topic, deltas, changed, done, dict(self.committed), max_time)
        self.committed.update(done.next_offsets)

    def _wait(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.result()  # re-raises a failed checkpoint here, in the replay's thread

    def checkpoint(self) -> dict[int, int]:
        """Write everything applied so far and wait for it; returns the committed offsets."""
        self._start_checkpoint()
        self._wait()
        return dict(self.committed)

    def close(self) -> None:
        """Stop the writer thread; what was not checkpointed is dropped (a re-run redoes it)."""
        try:
            self._wait()
        finally:
            self._writer.shutdown(wait=True)


def _commit_progress(
    conn: Connection,
    scope: str,
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
                .where(and_(t.c.scope == scope, t.c.topic == topic, t.c.partition == partition,
                            t.c.next_offset == committed[partition]))
                .values(**values)
            )
            if result.rowcount != 1:
                raise StaleProgressError(
                    f"{topic}[{partition}]: next_offset moved past {committed[partition]} while this batch ran; batch rolled back"
                )
        else:
            inserts.append({"scope": scope, "topic": topic, "partition": partition, **values})
    if inserts:
        stmt = dialect_insert(conn)(t).on_conflict_do_nothing(index_elements=["scope", "topic", "partition"])
        for row in inserts:  # one per newly seen partition, once in the topic's lifetime
            if conn.execute(stmt, row).rowcount != 1:
                raise StaleProgressError(f"{topic}[{row['partition']}]: progress created concurrently; batch rolled back")


def read_view(
    engine: Engine, view: str = "revenue_per_minute", entity: str | None = None,
    start: datetime | None = None, end: datetime | None = None,
) -> list[ViewRow]:
    """The speed layer's rows of a view (at least one contributing event), window_start in [start, end)."""
    with engine.connect() as conn:
        return [ViewRow(*row) for row in conn.execute(speed_view_query(views.view(view), entity, start, end))]


def read_late_windows(engine: Engine, view: str) -> dict[tuple[str, datetime], int]:
    """Windows of a view that the speed layer left to batch, with how many events it dropped."""
    t = speed_late_windows
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.entity, t.c.window_start, t.c.dropped).where(t.c.view == view))
        return {(e, w): n for e, w, n in rows}


def read_progress(engine: Engine, topic: str, scope: str = DEFAULT_SCOPE) -> dict[int, PartitionProgress]:
    """Committed progress per partition of `topic` for a consumer (partitions never consumed are absent)."""
    t = speed_progress
    with engine.connect() as conn:
        rows = conn.execute(
            select(t.c.partition, t.c.next_offset, t.c.max_event_time, t.c.updated_at)
            .where(t.c.scope == scope, t.c.topic == topic)
            .order_by(t.c.partition)
        )
        return {p: PartitionProgress(p, nxt, mt, ua) for p, nxt, mt, ua in rows}


def beat(engine: Engine, group: str) -> None:
    """The worker's liveness signal (one row per consumer group)."""
    with engine.begin() as conn:
        upsert(conn, speed_heartbeat, [{"group_id": group, "pid": os.getpid(), "beat_at": _now()}])


def read_counters(engine: Engine, scope: str = DEFAULT_SCOPE) -> dict[str, int]:
    """A consumer's counters, with the known ones present (0) even before they first move."""
    with engine.connect() as conn:
        found = dict(conn.execute(select(speed_counters.c.name, speed_counters.c.value).where(speed_counters.c.scope == scope)).all())
    return {**{name: 0 for name in COUNTERS}, **found}
