"""A targeted re-replay: recompute only the windows of a Kappa output that records beyond the
correction horizon would have touched (lklab.engine.horizon), from the whole log.

A Kappa job refuses a record older than the horizon and records the windows it would have
touched, beside the output (`speed_late_windows`, under the output's name). Repairing recomputes
those windows, and every window another version of an event in them touched (a refused
correction could not retract what its original added there), from every record of the log up to
the output's committed offsets: bronze where Kafka no longer holds them, then Kafka. Each window
gets exactly what the view logic says of the newest version of every event in it: the oracle's
answer for that window, at the output's position. The recorded windows are then cleared.

The log is read four times (which events touch the recorded windows; which other windows those
events touched; which events touch any of them; their newest versions), holding only the events
of the windows repaired. The output must not move meanwhile: a live job on it is refused, and the
write checks that the output's offsets are those the repair read to.

Not repaired: a correction that moved an event out of a bucket already dropped is applied as a
new event (the horizon's documented blind spot) and records no window. Sessions are not additive
per window (a rider's sessions depend on all of the rider's events): a sessionized output is refused.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine

from lklab.core.config import Settings
from lklab.core.events import Event
from lklab.engine import chunks, horizon
from lklab.engine.chunks import ChunkWriter
from lklab.engine.fold import ApplyStats, contrib_of, fence_and_parse
from lklab.engine.sink import load_held
from lklab.engine.outputs import late_windows
from lklab.kappa.freshness import running_pid
from lklab.kappa.job import _Pacer, _replay_tiers
from lklab.kappa.names import ReplayError, replay_scope, spec_for
from lklab.kappa.planner import check_args
from lklab.lake import tiers
from lklab.log import kafka_io
from lklab.lake.spark import ensure_spark
from lklab.serving import progress
from lklab.serving.store import speed_late_windows

Key = tuple[str, datetime]  # (entity, window start)


@dataclass(frozen=True)
class RepairResult:
    output: str
    recorded: int  # windows records beyond the horizon had touched
    repaired: int  # windows recomputed (the recorded ones, and those their events' other versions touched)
    changed: int  # of those, windows whose value the repair changed
    events: int  # events whose newest version the repaired windows hold
    records_read: int  # over the four passes
    seconds: float
    tiers: dict[str, int] = field(default_factory=dict)  # records read per tier (lklab.lake.tiers), over the passes


class _Scan:
    """A sink for the replay's tier reader that hands each parsed event to `each` and keeps nothing."""

    every = 1 << 62  # never due: the reader commits no offsets for a scan

    def __init__(self, scope: str, each: Callable[[Event], None]) -> None:
        self.scope, self.each, self.since, self.committed, self.read = f"{scope}.repair", each, 0, {}, 0
        self.next_offset: dict[int, int] = {}
        self.stats = ApplyStats(topic="")

    def apply(self, records) -> None:
        self.read += len(records)
        for _, event in fence_and_parse(records, self.next_offset, self.stats):
            self.each(event)

    def checkpoint(self) -> dict[int, int]:
        return {}


def check_repair(settings: Settings, view: str, version: int):
    """The output's view spec, or ReplayError (one line) when it cannot be repaired: checked before
    anything starts."""
    check_args(view, version)
    spec = spec_for(view, version, settings.faults.get("kappa"))
    if spec.contribs_as_rows:
        raise ReplayError(f"{spec.name}: a view keyed by the user or sessionized is not additive per window (a rider's sessions "
                          "depend on all of the rider's events), so a targeted repair cannot recompute it; replay a new "
                          "version with a longer LKLAB_CORRECTION_HORIZON_S instead")
    if (pid := running_pid(settings, spec.name)) is not None:
        raise ReplayError(f"{spec.name} has a live job (pid {pid}): stop it first (`lklab kappa stop {view} --version {version}`)")
    return spec


def repair(settings: Settings, engine: Engine, view: str, version: int, spark=None) -> RepairResult:
    """Recompute the windows of `<view>__v<N>` that records beyond the horizon touched; see the module."""
    spec = check_repair(settings, view, version)
    began = time.monotonic()
    scope = replay_scope(view, version)
    with engine.connect() as conn:
        recorded = set(late_windows(conn, spec.name))
        position = progress.next_offsets(conn, scope, settings.topic)  # what the output has read: the repair reads as far
    if not recorded:
        return RepairResult(spec.name, 0, 0, 0, 0, 0, time.monotonic() - began)
    kafka_first, _ = kafka_io.run(kafka_io.log_range(settings))
    below = tiers.needs_bronze({}, position, kafka_first)
    spark = ensure_spark(settings, spark) if below else spark
    ranges = tiers.plan_ranges({}, position, kafka_first, tiers.bronze_runs(spark, settings, below) if below else {})
    scan_plan = _ScanPlan(ranges, position)
    if lost := [r for r in ranges if r.tier == tiers.LOST]:
        raise ReplayError(f"{spec.name}: offsets {lost[0].partition}:{lost[0].start}-{lost[0].end} are neither in Kafka nor in "
                          "bronze: the windows cannot be recomputed from the log")
    read, counts = [0], {tiers.BRONZE: 0, tiers.KAFKA: 0}

    def scan(each: Callable[[Event], None]) -> None:
        sink = _Scan(scope, each)
        _replay_tiers(settings, spark, sink, scan_plan, _Pacer(0, None, None), counts)
        read[0] += sink.read

    def key(event: Event) -> Key | None:
        found = contrib_of(spec, event)
        return None if found is None else (found.entity, found.window)

    touched = _ids(scan, key, recorded)
    windows = set(recorded)
    scan(lambda e: windows.add(k) if e.event_id in touched and (k := key(e)) is not None else None)
    ids = touched if windows == recorded else _ids(scan, key, windows)
    newest: dict[str, Event] = {}
    scan(lambda e: newest.__setitem__(e.event_id, e) if e.event_id in ids and (
        e.event_id not in newest or e.event_version > newest[e.event_id].event_version) else None)
    changed = _write(engine, spec, scope, settings.topic, position, windows, newest.values())
    return RepairResult(spec.name, len(recorded), len(windows), changed, len(newest), read[0], time.monotonic() - began, counts)


@dataclass(frozen=True)
class _ScanPlan:
    """What _replay_tiers reads: every range of the log up to the output's position."""

    ranges: list
    target: dict[int, int]


def _ids(scan, key, windows: set[Key]) -> set[str]:
    """The events with any version in `windows`."""
    found: set[str] = set()
    scan(lambda e: found.add(e.event_id) if (k := key(e)) is not None and k in windows else None)
    return found


def _write(engine: Engine, spec, scope: str, topic: str, position: dict[int, int], windows: set[Key], newest) -> int:
    """Replace the windows' rows with the newest versions' contributions, in one transaction, if the
    output has not moved since the repair read the log; clear the recorded windows. Returns how
    many windows' values changed."""
    measure = spec.measure
    deltas = measure.new_deltas()
    for event in newest:
        if (c := contrib_of(spec, event)) is not None and (c.entity, c.window) in windows:
            deltas.add(spec, c, +1)
    with engine.begin() as conn:
        if progress.next_offsets(conn, scope, topic) != position:
            raise ReplayError(f"{spec.name} moved while it was being repaired (another writer): nothing was written; run it again")
        before = _values(conn, spec, windows)
        measure.clear_windows(conn, spec, sorted(windows))
        deltas.write(conn)
        _hold_newest(conn, spec, scope, newest)
        after = _values(conn, spec, windows)
        t = speed_late_windows
        for entity, window in sorted(windows):
            conn.execute(t.delete().where(t.c.view == spec.name, t.c.entity == entity, t.c.window_start == window))
    return sum(1 for k in windows if before.get(k) != after.get(k))


def _hold_newest(conn, spec, scope: str, newest) -> None:
    """Where the job still holds an event of the repaired windows at another version than its
    newest (a correction beyond the horizon was refused while the original is within it), hold the
    newest, so that a later correction retracts what the repaired window now has. Written as one
    more checkpoint's chunks (lklab.engine.chunks); the newest's bucket may be past the horizon,
    and then the job's next checkpoint drops it."""
    held = load_held(conn, scope, [spec.name])
    buckets, writer = dict(held.buckets), ChunkWriter()
    for event in newest:
        eid = event.event_id
        if eid not in held.versions or held.versions[eid] == event.event_version:
            continue
        bucket = horizon.bucket_of(event.event_time)
        writer.add(chunks.VERSIONS, bucket, chunks.version_entry(eid, event.event_version))
        writer.contrib(spec.name, bucket, eid, contrib_of(spec, event))
        if (left := buckets.get(eid)) is not None and left != bucket:
            writer.moved_out(eid, left, [spec.name])
    writer.write(conn, scope, chunks.next_seq(conn, scope))


def _values(conn, spec, windows: set[Key]) -> dict[Key, object]:
    rows = conn.execute(spec.measure.output_query(spec))
    return {(row[0], row[1]): spec.measure.value(row) for row in rows if (row[0], row[1]) in windows}
