"""The fold: what a batch of records does to a view's outputs, computed in memory against the
held state (dedup versions and contributions). No I/O here; lklab.engine.sink persists the result.

View semantics come from lklab.views; nothing here re-defines them."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lklab import views
from lklab.core.events import Event, EventError, parse_event
from lklab.engine import horizon
from lklab.engine.horizon import HeldBuckets
from lklab.views import Contrib
from lklab.views.measures import Deltas

InputRecord = tuple[int, int, bytes]  # (partition, offset, value) in consumption order


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
    beyond_horizon: int = 0  # older than the correction horizon: refused (Kappa) or left to batch (Lambda)
    corrections_applied: int = 0
    dead_letters: list[DeadLetter] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)  # partitions advanced by this call
    watermark: datetime | None = None

    @property
    def dead_lettered(self) -> int:
        return len(self.dead_letters)


def contrib_of(spec: views.ViewSpec, event: Event) -> Contrib | None:
    """What `event` contributes to `spec`'s output, in its stored form, or None."""
    found = spec.contribution(event)
    return None if found is None else spec.measure.contrib(*found)


class BatchDeltas:
    """One batch's changes: per measure (each measure's own accumulator), the windows left to
    batch, and the contributions to store (None = delete)."""

    def __init__(self) -> None:
        self.by_measure: dict[views.Measure, Deltas] = {}
        self.late: dict[tuple[str, str, datetime], int] = {}
        self.contribs: dict[tuple[str, str], Contrib | None] = {}
        self.users: set[tuple[str, str]] = set()  # (view, user) of contributions to views keyed by the user

    def apply(self, spec: views.ViewSpec, contrib: Contrib, sign: int) -> None:
        deltas = self.by_measure.get(spec.measure)
        if deltas is None:
            deltas = self.by_measure[spec.measure] = spec.measure.new_deltas()
        deltas.add(spec, contrib, sign)

    def dropped(self, spec: views.ViewSpec, contrib: Contrib) -> None:
        key = (spec.name, contrib.entity, contrib.window)
        self.late[key] = self.late.get(key, 0) + 1


def apply_event(event, specs: Sequence[views.ViewSpec], contribs: dict[tuple[str, str], Contrib],
                 deltas: BatchDeltas, T: datetime | None, forgotten: frozenset[str] = frozenset()) -> bool:
    """Move each view from the event's old contribution to its new one, side by side: the old
    one is retracted where its window is still open, the new one added where its window is still
    open, and a side whose window is already final at `T` (views.final_through; None: none is)
    is left to batch (recorded as such). A correction may move an event to another window, day,
    city or driver, so the two sides are judged apart. The held contribution becomes the new one either way: a final window never
    reopens, so what was not added there is never retracted later. Returns True if any side was
    left to batch.
    A forgotten user's event (one in the tombstone list `forgotten`) adds nothing to a view keyed
    by the user, and its held contribution there is dropped from the state, not retracted: the
    purge (lklab.deletion) deletes the rows themselves."""
    dropped = False
    for spec in specs:
        if spec.keyed_by_user and event.user_id in forgotten:
            if contribs.get((spec.name, event.event_id)) is not None:
                contribs[(spec.name, event.event_id)] = deltas.contribs[(spec.name, event.event_id)] = None
            continue
        old, new = contribs.get((spec.name, event.event_id)), contrib_of(spec, event)
        if old is None and new is None:
            continue
        if spec.keyed_by_user and new is not None:
            deltas.users.add((spec.name, new.entity))
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


def fence_and_parse(records: Sequence[InputRecord], next_offset: dict[int, int], stats: ApplyStats) -> list[tuple[int, Any]]:
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
            if raw is None:  # a tombstone: a record with a key and no value
                raise EventError("the record has no value (null)")
            event = parse_event(raw)
        except EventError as exc:
            stats.dead_letters.append(DeadLetter(exc.reason, partition, offset, raw or b""))
            continue
        fresh.append((partition, event))
    return fresh


def refuse_beyond_horizon(event, specs: Sequence[views.ViewSpec], deltas: BatchDeltas, forgotten: frozenset[str]) -> None:
    """Record the windows a record beyond the horizon would have touched (not those of a
    forgotten user's views keyed by the user: the id must not come back)."""
    for spec in specs:
        if spec.keyed_by_user and event.user_id in forgotten:
            continue
        if (contrib := contrib_of(spec, event)) is not None:
            deltas.dropped(spec, contrib)


def fold(fresh: Sequence[tuple[int, Any]], specs: Sequence[views.ViewSpec], versions: dict[str, int],
          contribs: dict[tuple[str, str], Contrib], max_time: dict[int, datetime], deltas: BatchDeltas,
          changed_versions: dict[str, tuple[int, int]], stats: ApplyStats, lateness: int | None,
          partitions: int | None = None, forgotten: frozenset[str] = frozenset(), *,
          horizon_s: int | None = None, buckets: HeldBuckets | None = None) -> None:
    """The view deltas of these events, in consumption order, against the held state (updated in place).
    Windows close only once all `partitions` have reported (views.watermark); `forgotten` is the
    tombstone list (lklab.privacy.requests). A record more than `horizon_s` behind its partition's
    progress is refused (lklab.engine.horizon); `buckets`, if given, indexes the held events by
    event-time bucket so that they can expire. `changed_versions` gets each applied event's
    (version, event-time bucket)."""
    wm = views.watermark(max_time, partitions)
    T = None if lateness is None else views.final_through(wm, lateness)  # windows before it are final
    # horizon.beyond, with each partition's floor computed when its progress moves, not per event
    floors = {} if horizon_s is None else {p: horizon.floor(t, horizon_s) for p, t in max_time.items()}
    stats.processed += len(fresh)
    for partition, event in fresh:
        # The event advances its own partition first, so the first event seen on a partition
        # is judged against that partition's progress, never only against the others'.
        progress = max_time.get(partition)
        if progress is None or event.event_time > progress:
            max_time[partition] = event.event_time
            if wm is None or progress is None or progress == wm:  # a new or the slowest partition moved: the watermark may
                wm = views.watermark(max_time, partitions)
                T = None if lateness is None else views.final_through(wm, lateness)
            if horizon_s is not None:
                floors[partition] = horizon.floor(event.event_time, horizon_s)
        if horizon_s is not None and event.event_time < floors[partition]:
            stats.beyond_horizon += 1
            refuse_beyond_horizon(event, specs, deltas, forgotten)
            continue
        held = versions.get(event.event_id)
        if not views.supersedes(event.event_version, held):
            stats.duplicates_ignored += 1
            continue
        if held is not None:
            stats.corrections_applied += 1
        if apply_event(event, specs, contribs, deltas, T, forgotten):
            stats.late_dropped += 1
        versions[event.event_id] = event.event_version
        bucket = horizon.bucket_of(event.event_time)
        changed_versions[event.event_id] = (event.event_version, bucket)
        if buckets is not None:
            buckets.hold(event.event_id, bucket)
    stats.watermark = wm
