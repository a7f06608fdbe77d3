"""Hydration: when a candidate version has caught up with the log and with the published version,
and where two versions can be compared while both keep consuming.

A candidate is hydrated once its lag is at most `kappa_hydration_max_lag` records and its
event-time watermark is within `kappa_hydration_tolerance_s` of the published version's. Two
live versions sit at different offsets, so a diff of everything they hold would report progress
still in flight as changes; `comparable` compares them at the same offsets when they are there,
else only on windows both hold as final (watermark minus allowed lateness)."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine

from lklab import views
from lklab.core import processes
from lklab.core.config import Settings
from lklab.engine.fold import ApplyStats, contrib_of, fence_and_parse
from lklab.engine.outputs import read_output
from lklab.engine.sink import load_contribs
from lklab.kappa import jobs
from lklab.kappa.freshness import committed, running_pid
from lklab.kappa.names import output_name, replay_scope
from lklab.kappa.query import published
from lklab.kappa.records import build_record
from lklab.log import kafka_io
from lklab.log.kafka_io import Offsets
from lklab.serving import progress
from lklab.serving.store import consistent_read


@dataclass(frozen=True)
class Position:
    """What one version has consumed (its committed offsets and watermark) and the rows it holds
    there, read in one transaction: the rows are exactly those offsets' result."""

    output: str
    offsets: Offsets
    watermark: datetime | None
    rows: list[tuple]

    def lag(self, ends: Offsets) -> int:
        return progress.lag(self.offsets, ends)


def position(settings: Settings, engine: Engine, view: str, version: int, with_rows: bool = True) -> Position:
    """The version's committed position (and its rows, unless `with_rows` is False)."""
    scope, output = replay_scope(view, version), output_name(view, version)
    with consistent_read(engine) as conn:
        offsets, wm = committed(conn, settings, scope)
        rows = read_output(None, view, output, conn=conn) if with_rows else []
    return Position(output, offsets, wm, rows)


def published_position(settings: Settings, engine: Engine, view: str, with_rows: bool = True) -> Position | None:
    """The position of the version `<view>` points at now (None: nothing published)."""
    with engine.connect() as conn:
        current = published(conn, view)
    record = build_record(engine, current) if current else None
    return position(settings, engine, view, int(record["version"]), with_rows) if record else None


@dataclass(frozen=True)
class Hydration:
    hydrated: bool
    summary: str  # one line: the figures, and why not when not


def hydration(settings: Settings, candidate: Position, published: Position | None, ends: Offsets) -> Hydration:
    """Whether `candidate` may take traffic from `published` (None: nothing published yet)."""
    lag = candidate.lag(ends)
    figures = f"lag {lag} records (at most {settings.kappa_hydration_max_lag})"
    if lag > settings.kappa_hydration_max_lag:
        return Hydration(False, f"{candidate.output} is not hydrated: {figures}; it is still catching up with the log")
    if published is None or published.watermark is None:
        return Hydration(True, f"{candidate.output} hydrated: {figures}; nothing published to compare watermarks with")
    if candidate.watermark is None:
        return Hydration(False, f"{candidate.output} is not hydrated: no watermark yet (a partition not read), "
                                f"{published.output}'s is {published.watermark.isoformat()}")
    behind = (published.watermark - candidate.watermark).total_seconds()
    figures += (f", watermark {candidate.watermark.isoformat()} vs {published.output}'s {published.watermark.isoformat()} "
                f"({behind:+.0f}s behind, tolerance {settings.kappa_hydration_tolerance_s:g}s)")
    if behind > settings.kappa_hydration_tolerance_s:
        return Hydration(False, f"{candidate.output} is not hydrated: {figures}")
    return Hydration(True, f"{candidate.output} hydrated: {figures}")


def hydration_now(settings: Settings, engine: Engine, view: str, version: int, ends: Offsets) -> Hydration:
    """Whether `<view>__v<N>` is hydrated against the version published now (figures only, no rows)."""
    return hydration(settings, position(settings, engine, view, version, with_rows=False),
                     published_position(settings, engine, view, with_rows=False), ends)


@dataclass(frozen=True)
class Comparable:
    old_rows: list[tuple]
    new_rows: list[tuple]
    basis: str  # how the two were aligned, for the diff's summary
    in_flight: int  # rows left out of the diff: windows not final in both versions yet


def comparable(settings: Settings, engine: Engine, view: str, old: Position, new: Position) -> Comparable:
    """The rows of two versions at a common input position: everything, if both committed the same
    offsets; else the windows both hold as final and that no record between the two positions
    touches, so that progress still in flight is not a change (a record later than the allowed
    lateness, or a correction, reaches a final window too)."""
    if old.offsets == new.offsets:
        return Comparable(old.rows, new.rows, "at the same offsets", 0)
    cuts = [views.final_through(p.watermark, settings.allowed_lateness_s) for p in (old, new)]
    cut = None if None in cuts else min(cuts)
    spec, touched = views.view(view), in_flight_windows(settings, engine, view, old, new)
    settled = lambda row: spec.measure.is_final(spec, row[1], cut) and (row[0], row[1]) not in touched  # noqa: E731
    final = [[r for r in rows if settled(r)] for rows in (old.rows, new.rows)]
    in_flight = len(old.rows) + len(new.rows) - len(final[0]) - len(final[1])
    basis = (f"on windows final in both (before {cut.isoformat()}) and untouched by the {len(touched)} windows "
             f"records in flight between them touch" if cut else "on no window: a version has no watermark yet")
    return Comparable(final[0], final[1], basis, in_flight)


def in_flight_windows(settings: Settings, engine: Engine, view: str, old: Position, new: Position) -> set[tuple[str, datetime]]:
    """The (entity, window) keys that records one version has consumed and the other has not touch:
    each record's own window, and the window its event held in either output (a correction moves
    an event out of it). Read after the positions: a correction that the slower version applies
    between the two reads hides the window it left (a few milliseconds; the tolerance absorbs it)."""
    parts = old.offsets.keys() | new.offsets.keys()
    lo = {p: min(old.offsets.get(p, 0), new.offsets.get(p, 0)) for p in parts}
    hi = {p: max(old.offsets.get(p, 0), new.offsets.get(p, 0)) for p in parts}
    records = kafka_io.run(kafka_io.read_range(settings, lo, hi))
    events = [e for _, e in fence_and_parse([(r.partition, r.offset, r.value) for r in records], {}, ApplyStats(settings.topic))]
    spec = views.view(view)
    touched = {(c.entity, c.window) for e in events if (c := contrib_of(spec, e)) is not None}
    with engine.connect() as conn:
        held = load_contribs(conn, [old.output, new.output], sorted({e.event_id for e in events}))
    return touched | {(c.entity, c.window) for c in held.values()}


def wait_until_hydrated(settings: Settings, engine: Engine, view: str, version: int, timeout_s: float,
                        on_wait: Callable[[str], None] | None = None, poll_s: float = 0.5) -> Hydration:
    """Poll `<view>__v<N>`'s live job until it is hydrated (`hydration_now`) and its hydrating
    replay has completed. JobError (one line) if the job stops first, or after `timeout_s`; the
    job then keeps running. `on_wait` gets each poll's summary while it is not hydrated."""
    output, deadline = output_name(view, version), time.monotonic() + timeout_s
    while True:
        ends = kafka_io.end_offsets_or_none(settings)
        ready = hydration_now(settings, engine, view, version, ends) if ends is not None else None
        if ready is not None and ready.hydrated and (build_record(engine, output) or {}).get("status") == "complete":
            return ready
        summary = ready.summary if ready else "Kafka did not answer"
        if running_pid(settings, output) is None:
            raise jobs.JobError(f"{output} stopped while hydrating: {processes.log_tail(jobs.log_file(settings, output))}")
        if time.monotonic() > deadline:
            raise jobs.JobError(f"{output} not hydrated after {timeout_s:g}s ({summary}); it keeps running: `lklab kappa status`")
        if on_wait is not None:
            on_wait(summary)
        time.sleep(poll_s)
