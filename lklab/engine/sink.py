"""The engine's sink: a batch of records applied to the outputs in one transaction, idempotent and
offset-fenced. The Lambda speed layer (streaming.app) applies every batch here; a Kappa job keeps
its state in memory and checkpoints it through the same writes (lklab.engine.checkpoint).

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
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import Engine, and_, select
from sqlalchemy.engine import Connection

from lklab import views
from lklab.core.config import Settings
from lklab.engine import chunks, horizon
from lklab.engine.outputs import late_windows
from lklab.engine.fold import ApplyStats, BatchDeltas, InputRecord, fence_and_parse, fold
from lklab.engine.horizon import HeldBuckets
from lklab.privacy import requests
from lklab.serving import progress
from lklab.serving.store import add_to, bulk_upsert, speed_contrib, speed_event_state, speed_late_windows
from lklab.views import Contrib
from lklab.views.measures import chunks as id_chunks


class ViewRow(NamedTuple):
    entity: str
    window_start: datetime
    value: int


def _by_ids(query, column, ids: Sequence[str] | None) -> Iterable:
    """`query` as is (ids None: all rows), or once per chunk of ids (an IN list each)."""
    if ids is None:
        yield query
        return
    for chunk in id_chunks(sorted(set(ids))):
        yield query.where(column.in_(chunk))


def load_versions(conn: Connection, scope: str, event_ids: Sequence[str] | None = None, *,
                  chunked: bool = True) -> dict[str, int]:
    """The held versions of these events, or of every event of the scope (None): its rows, and
    (`chunked`) a Kappa job's chunks over them (lklab.engine.chunks)."""
    t = speed_event_state
    found: dict[str, int] = {}
    for query in _by_ids(select(t.c.event_id, t.c.event_version).where(t.c.scope == scope), t.c.event_id, event_ids):
        found.update(conn.execute(query).all())
    if not chunked:
        return found
    held = chunks.read(conn, [chunks.VERSIONS], scope).get(chunks.VERSIONS, {})
    wanted = None if event_ids is None else set(event_ids)
    found.update((eid, version) for eid, (_, version) in held.items() if wanted is None or eid in wanted)
    return found


class HeldState(NamedTuple):
    """What a consumer holds for dedup and corrections: each event's version, its contributions,
    and its held version's event-time bucket (lklab.engine.horizon.bucket_of; None: held before
    buckets were kept), by which it expires."""

    versions: dict[str, int]
    contribs: dict[tuple[str, str], Contrib]
    buckets: list[tuple[str, int | None]]


def load_held(conn: Connection, scope: str, view_names: Sequence[str]) -> HeldState:
    """Everything the scope holds (a Kappa job's state at start): rows, then its chunks over them."""
    t = speed_event_state
    rows = conn.execute(select(t.c.event_id, t.c.event_version, t.c.time_bucket).where(t.c.scope == scope)).all()
    held = chunks.read(conn, [chunks.VERSIONS, *view_names], scope)
    versions = {eid: v for eid, v, _ in rows}
    buckets = {eid: at for eid, _, at in rows}
    for eid, (bucket, version) in held.pop(chunks.VERSIONS, {}).items():
        versions[eid], buckets[eid] = version, bucket
    contribs = load_contribs(conn, view_names, chunked=False)
    for view, found in held.items():
        contribs.update(chunks.contribs(view, found))
    return HeldState(versions, contribs, list(buckets.items()))


class OwnedState:
    """A per-batch consumer's held state, kept in memory between its batches while it owns every
    partition of its topic (the speed layer with one worker): each batch then reads nothing back
    but the progress row per partition and the tombstone list, instead of looking its events'
    versions and contributions up. The store stays the truth: every batch still writes its
    changes, and the memory is thrown away (`invalidate`) on a rebalance and whenever a batch
    fails, so the next batch reloads it. Not used while the consumer owns only some partitions: a
    correction may change an event's ride, its Kafka key, so its other versions may be another
    worker's. Bounded like the store, by the correction horizon."""

    def __init__(self, horizon_s: int) -> None:
        self.horizon_s, self.generation = horizon_s, 0
        self.invalidate()

    def invalidate(self) -> None:
        """Forget everything; safe from another thread (a rebalance) while a batch runs: a load
        that began before it does not count as loaded, and the batch's fold only touches what it
        was handed."""
        self.generation += 1
        self.loaded = False
        self.versions: dict[str, int] = {}
        self.contribs: dict[tuple[str, str], Contrib] = {}
        self.buckets = HeldBuckets(self.horizon_s)
        self.forgotten: frozenset[str] = frozenset()

    def load(self, conn: Connection, scope: str, view_names: Sequence[str], forgotten: frozenset[str]) -> None:
        generation, held = self.generation, load_held(conn, scope, view_names)
        buckets = HeldBuckets(self.horizon_s)
        # held before buckets were kept (NULL): never expires, as in the store (expire_held)
        buckets.hold_all((eid, bucket) for eid, bucket in held.buckets if bucket is not None)
        buckets.take_moved()
        self.versions, self.contribs, self.buckets, self.forgotten = held.versions, held.contribs, buckets, forgotten
        self.loaded = generation == self.generation

    def forget(self, forgotten: frozenset[str], specs: Sequence[views.ViewSpec]) -> None:
        """Users forgotten since the last batch: `lklab forget` purged their contributions to the
        views keyed by the user from the store, so they leave memory too."""
        if new := forgotten - self.forgotten:
            drop_users(self.contribs, new, specs)
        self.forgotten = forgotten

    def expire(self, cutoff: int, view_names: Sequence[str]) -> None:
        """Drop what the batch's expire_held dropped from the store: the buckets before `cutoff`."""
        for event_id in self.buckets.expire(cutoff):
            self.versions.pop(event_id, None)
            for view in view_names:
                self.contribs.pop((view, event_id), None)


def drop_users(contribs: dict[tuple[str, str], Contrib], users: frozenset[str], specs: Sequence[views.ViewSpec]) -> None:
    """Delete these users' held contributions to the views keyed by the user (in memory, in place):
    what a consumer holds of users `lklab forget` purged from the store meanwhile."""
    keyed = {spec.name for spec in specs if spec.keyed_by_user}
    for key in [k for k, c in contribs.items() if k[0] in keyed and c is not None and c.entity in users]:
        del contribs[key]


def has_rows(conn: Connection, scope: str) -> bool:
    """Does the scope hold state as rows (written before 0007)? A Kappa job converts it to chunks."""
    t = speed_event_state
    return conn.execute(select(t.c.event_id).where(t.c.scope == scope).limit(1)).first() is not None


def drop_rows(conn: Connection, scope: str, chunked_views: Sequence[str]) -> None:
    """Delete the scope's versions and these views' contributions held as rows (now chunks)."""
    conn.execute(speed_event_state.delete().where(speed_event_state.c.scope == scope))
    conn.execute(speed_contrib.delete().where(speed_contrib.c.view.in_(chunked_views)))


def expire_held(conn: Connection, scope: str, view_names: Sequence[str], cutoff: int,
                expired: Sequence[str] = ()) -> None:
    """Delete the held state of events whose held version's bucket is before `cutoff` (buckets past
    the correction horizon: lklab.engine.horizon.cutoff): their rows, the contribution rows of
    `expired` events (a Kappa job's, whose versions are chunks) and the scope's chunks. State
    written before buckets were kept (NULL) never matches."""
    t = speed_event_state
    old = select(t.c.event_id).where(t.c.scope == scope, t.c.time_bucket < cutoff)
    conn.execute(speed_contrib.delete().where(speed_contrib.c.view.in_(view_names), speed_contrib.c.event_id.in_(old)))
    conn.execute(t.delete().where(t.c.scope == scope, t.c.time_bucket < cutoff))
    for chunk in id_chunks(sorted(expired)):
        conn.execute(speed_contrib.delete().where(speed_contrib.c.view.in_(view_names), speed_contrib.c.event_id.in_(chunk)))
    chunks.expire(conn, scope, cutoff)


def load_contribs(conn: Connection, view_names: Sequence[str],
                  event_ids: Sequence[str] | None = None, *, chunked: bool = True) -> dict[tuple[str, str], Contrib]:
    """The held contributions of these events to these views, or of every event (None): rows, and
    (`chunked`) a Kappa job's chunks over them."""
    t = speed_contrib
    # view first: the primary key (view, event_id) serves the lookup, not a scan
    base = select(t.c.view, t.c.event_id, t.c.entity, t.c.window_start, t.c.amount, t.c.member).where(t.c.view.in_(view_names))
    found: dict[tuple[str, str], Contrib] = {}
    for query in _by_ids(base, t.c.event_id, event_ids):
        for view_name, event_id, entity, window, amount, member in conn.execute(query):
            found[(view_name, event_id)] = Contrib(entity, window, amount, member)
    if chunked:
        wanted = None if event_ids is None else set(event_ids)
        for view, held in chunks.read(conn, view_names).items():
            found.update((key, c) for key, c in chunks.contribs(view, held).items() if wanted is None or key[1] in wanted)
    return found


def write_deltas(conn: Connection, deltas: BatchDeltas) -> None:
    """The windows left to batch, the contributions, then each measure's outputs (sessions are
    recomputed from the contributions just written)."""
    add_to(conn, speed_late_windows, [{"view": v, "entity": e, "window_start": w, "dropped": n}
                                      for (v, e, w), n in deltas.late.items()], add=("dropped",))
    gone = [(v, eid) for (v, eid), c in deltas.contribs.items() if c is None]
    for view_name, event_id in gone:
        conn.execute(speed_contrib.delete().where(and_(speed_contrib.c.view == view_name, speed_contrib.c.event_id == event_id)))
    bulk_upsert(conn, speed_contrib, [(v, eid, *c) for (v, eid), c in deltas.contribs.items() if c is not None])
    scrub_forgotten(conn, deltas)
    for _, measure_deltas in sorted(deltas.by_measure.items(), key=lambda item: item[0].kind):  # one lock order
        measure_deltas.write(conn)


def scrub_forgotten(conn: Connection, deltas: BatchDeltas) -> None:
    """Delete again the contributions just written of users forgotten meanwhile: a request that
    committed after this batch's fold read the tombstone list (a live job re-reads it only per
    checkpoint) would otherwise write their rows back after `lklab forget` purged them. The measure
    writes that follow then rebuild those users' rows from nothing. Read after the writes above:
    on SQLite the transaction then holds the write lock, so no request can commit unseen."""
    if not deltas.users:
        return
    gone = requests.forgotten(conn)
    for view, user in sorted(u for u in deltas.users if u[1] in gone):
        conn.execute(speed_contrib.delete().where(and_(speed_contrib.c.view == view, speed_contrib.c.entity == user)))


def persist(conn: Connection, scope: str, topic: str, deltas: BatchDeltas, changed_versions: dict[str, tuple[int, int]],
             stats: ApplyStats, committed: dict[int, int], max_time: dict[int, datetime]) -> None:
    """Views, per-event state, counters and offsets, in the caller's transaction (offset-fenced)."""
    write_deltas(conn, deltas)
    bulk_upsert(conn, speed_event_state, [(scope, eid, v, bucket) for eid, (v, bucket) in changed_versions.items()])
    counts = {
        progress.PROCESSED: stats.processed,
        progress.DUPLICATES_IGNORED: stats.duplicates_ignored,
        progress.LATE_DROPPED: stats.late_dropped,
        progress.DEAD_LETTERED: stats.dead_lettered,
        progress.CORRECTIONS_APPLIED: stats.corrections_applied,
        progress.REDELIVERED_SKIPPED: stats.skipped_redelivered,
        progress.OFFSETS_MISSED: stats.offsets_missed,
        progress.BEYOND_HORIZON: stats.beyond_horizon,
    }
    progress.add_counters(conn, scope, counts)
    progress.commit(conn, scope, topic, stats.next_offsets, committed, max_time)


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
    owned: OwnedState | None = None,
) -> ApplyStats:
    """Apply one consumed batch of `topic` to every speed view in ONE transaction.

    `records` are (partition, offset, value) in consumption order (per-partition offset order).
    `specs` are the views to maintain (default: the views the speed layer maintains, with the logic the settings pick); `scope` names the consumer
    whose dedup state, offsets and counters these are (default: the live speed group), so a
    replay into versioned outputs never shares state with the live speed layer. With
    `close_windows=False` no window is ever final: a Kappa view has no batch layer behind it, so
    it must take late events and corrections into any window.
    `before_commit(stats)`, if given, runs inside the open transaction after every write (the
    worker sends dead letters there); if it raises, nothing of the batch is committed.
    `owned`, if given, is the held state in memory (OwnedState: only while this consumer owns every
    partition); without it, the batch's events are looked up.
    Raises StaleProgressError when another consumer advanced one of these partitions first.
    """
    stats = ApplyStats(topic=topic)
    lateness = settings.allowed_lateness_s if close_windows else None
    specs = views.speed_layer_specs(settings) if specs is None else specs
    scope = scope or settings.speed_group
    view_names = [spec.name for spec in specs]
    try:
        with engine.begin() as conn:
            held = progress.load(conn, scope, topic)
            committed = {p: nxt for p, (nxt, _) in held.items()}
            max_time: dict[int, datetime] = {p: mt for p, (_, mt) in held.items() if mt is not None}
            fresh = fence_and_parse(records, dict(committed), stats)
            forgotten = requests.forgotten(conn) if any(spec.keyed_by_user for spec in specs) else frozenset()
            versions, contribs = _held_for(conn, owned, scope, specs, view_names, [e.event_id for _, e in fresh], forgotten)
            deltas, changed_versions = BatchDeltas(), {}
            before = views.watermark(max_time, settings.partitions)
            fold(fresh, specs, versions, contribs, max_time, deltas, changed_versions, stats, lateness, settings.partitions,
                 forgotten, horizon_s=settings.correction_horizon_s, buckets=None if owned is None else owned.buckets)
            persist(conn, scope, topic, deltas, changed_versions, stats, committed, max_time)
            if (cut := _new_cutoff(before, stats.watermark, settings.correction_horizon_s)) is not None:
                expire_held(conn, scope, view_names, cut)
                if owned is not None:
                    owned.expire(cut, view_names)
            if before_commit is not None:
                before_commit(stats)
    except BaseException:
        if owned is not None:  # the fold changed it, the store rolled back
            owned.invalidate()
        raise
    if owned is not None:
        owned.buckets.take_moved()  # a per-batch sink writes rows, not a bucket's tombstones
    return stats


def _held_for(conn: Connection, owned: OwnedState | None, scope: str, specs: Sequence[views.ViewSpec],
              view_names: Sequence[str], event_ids: Sequence[str],
              forgotten: frozenset[str]) -> tuple[dict[str, int], dict[tuple[str, str], Contrib]]:
    """The held versions and contributions the fold updates in place: the ones in memory (loaded
    at the first batch since the last invalidation), or these events' looked up (`owned` None)."""
    if owned is None:
        # the per-batch sink's state is rows (chunks are a Kappa job's): no chunk reads on its hot path
        return load_versions(conn, scope, event_ids, chunked=False), load_contribs(conn, view_names, event_ids, chunked=False)
    if not owned.loaded:
        owned.load(conn, scope, view_names, forgotten)
    owned.forget(forgotten, specs)
    return owned.versions, owned.contribs


def _new_cutoff(before: datetime | None, after: datetime | None, horizon_s: int) -> int | None:
    """The horizon's cutoff, when this batch moved it to a later bucket (state then expires once
    per bucket of event time, not at every batch)."""
    if after is None:
        return None
    cut = horizon.cutoff(after, horizon_s)
    return cut if before is None or cut > horizon.cutoff(before, horizon_s) else None


def read_view(
    engine: Engine, view: str = "revenue_per_minute", entity: str | None = None,
    start: datetime | None = None, end: datetime | None = None,
) -> list[ViewRow]:
    """The speed layer's rows of a view (at least one contributing event), window_start in [start, end)."""
    spec = views.SPEED_LAYER.get(view)
    if spec is None:
        raise KeyError(f"{view!r} is not maintained by the speed layer; one of: {', '.join(views.SPEED_LAYER)}")
    with engine.connect() as conn:
        return [ViewRow(*row) for row in conn.execute(spec.measure.output_query(spec, entity, start, end))]


def read_late_windows(engine: Engine, view: str) -> dict[tuple[str, datetime], int]:
    """Windows of a view that the speed layer left to batch, with how many events it dropped."""
    with engine.connect() as conn:
        return late_windows(conn, view)
