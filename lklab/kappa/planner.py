"""A Kappa replay's plan: its arguments checked, and which offsets it reads from which tier
(bronze below Kafka's retention, then Kafka), starting from what, with an estimate. Changes nothing."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, select

from lklab.core.config import Settings
from lklab import views
from lklab.core.events import SCHEMA_VERSION
from lklab.evolution import history as log_history
from lklab.engine import snapshots
from lklab.engine.snapshots import Snapshot
from lklab.kappa.names import KAPPA_VIEWS, ReplayError, replay_scope, spec_for
from lklab.kappa.records import build_record
from lklab.lake import tiers
from lklab.lake.spark import ensure_spark
from lklab.log import kafka_io
from lklab.log.kafka_io import Offsets
from lklab.serving import progress
from lklab.serving.store import kappa_builds


def parse_from(value: str) -> Offsets | None:
    """`earliest` → None; `0:120,1:98` → {0: 120, 1: 98}. Partitions it does not name start
    from the earliest offset, like `earliest` (check_start checks them against the log)."""
    if value == "earliest":
        return None
    offsets: Offsets = {}
    for pair in value.split(","):
        partition, _, offset = pair.strip().partition(":")
        try:
            p, o = int(partition), int(offset)
        except ValueError:
            raise ReplayError(f"--from {value!r}: {pair!r} is not partition:offset; expected 'earliest' or pairs like 0:120,1:98") from None
        if p < 0 or o < 0:
            raise ReplayError(f"--from {value!r}: {pair!r}: partitions and offsets are never negative")
        if p in offsets:
            raise ReplayError(f"--from {value!r}: partition {p} is given twice")
        offsets[p] = o
    return offsets


def check_start(start: Offsets | None, end: Offsets, topic: str) -> None:
    """Each partition of a --from exists and its offset is within the log (at most its end offset)."""
    for p, o in sorted((start or {}).items()):
        if p not in end:
            raise ReplayError(f"--from {p}:{o}: topic {topic} has {len(end)} partitions (0..{len(end) - 1}); there is no partition {p}")
        if o > end[p]:
            raise ReplayError(f"--from {p}:{o}: partition {p} of {topic} ends at offset {end[p]}; {o} is past its end")


def check_request(settings: Settings, view: str, version: int, start: Offsets | None = None,
                  snapshot: str | None = None, max_rate: float | None = None) -> None:
    """Every argument of a replay, checked before anything starts: only the log's end offsets are read."""
    check_args(view, version, max_rate, start, snapshot)
    if start:
        check_start(start, kafka_io.run(kafka_io.end_offsets(settings)), settings.topic)


def _held(engine: Engine, scope: str, topic: str) -> Offsets:
    with engine.connect() as conn:
        return progress.next_offsets(conn, scope, topic)


@dataclass(frozen=True)
class ReplayPlan:
    """What a replay would do, computed without changing anything (`lklab replay --plan`)."""

    view: str
    output: str
    scope: str
    start: Offsets  # where the replay's input starts: the requested offsets or the snapshot's
    position: Offsets  # where it continues: `start`, or further if this output already holds progress
    target: Offsets  # the log's end offsets now: the replay stops there
    kafka_first: Offsets  # Kafka's first retained offset per partition
    ranges: list[tiers.TierRange]
    snapshot: Snapshot | None
    load_snapshot: bool  # False when resuming an output already seeded from this snapshot
    rate_eps: float | None  # measured replay throughput, for the estimate
    rate_source: str

    @property
    def lost(self) -> list[tiers.TierRange]:
        return [r for r in self.ranges if r.tier == tiers.LOST]

    def records(self, tier: str | None = None) -> int:
        return sum(r.records for r in self.ranges if tier is None or r.tier == tier)

    def estimated_s(self, max_rate: float | None = None) -> float | None:
        rate = min(x for x in (self.rate_eps, max_rate) if x) if (self.rate_eps or max_rate) else None
        return self.records() / rate if rate else None

    def lost_message(self) -> str:
        spans = ", ".join(f"[{r.partition}] {r.start}..{r.end - 1}" for r in self.lost)
        return (f"{self.records(tiers.LOST)} records needed by {self.output} are lost from both tiers (Kafka retention "
                f"dropped them and bronze never ingested them): {spans}; nothing replayed")


def measured_rate(engine: Engine) -> tuple[float | None, str]:
    """The replay throughput of the last benchmark (bench/results.json), else of the last complete
    replay recorded here; (None, reason) if neither exists."""
    results = Path(__file__).resolve().parents[2] / "bench" / "results.json"
    if results.exists():
        try:
            eps = json.loads(results.read_text()).get("replay_eps")
            if eps:
                return float(eps), f"{results.name} (last benchmark)"
        except (ValueError, AttributeError):
            pass
    with engine.connect() as conn:
        row = conn.execute(select(kappa_builds.c.output, kappa_builds.c.seconds).where(kappa_builds.c.status == "complete")
                           .order_by(kappa_builds.c.finished_at.desc()).limit(1)).first()
    if row and row.seconds and row.seconds.get("events_per_s"):
        return float(row.seconds["events_per_s"]), f"last complete replay ({row.output})"
    return None, "no benchmark and no complete replay yet"


def check_args(view: str, version: int, max_rate: float | None = None, start: Offsets | None = None,
               snapshot: str | None = None) -> None:
    """The arguments of a replay that need nothing but themselves to check."""
    if view not in KAPPA_VIEWS:
        raise ReplayError(f"unknown view {view!r}; one of: {', '.join(KAPPA_VIEWS)}")
    if version < 1:
        raise ReplayError(f"--version {version}: versions start at 1")
    if max_rate is not None and not max_rate > 0:  # NaN too
        raise ReplayError(f"--max-rate {max_rate:g}: must be > 0 events/s")
    if start is not None and snapshot is not None:
        raise ReplayError("--from and --from-snapshot exclude each other: a snapshot fixes the start offsets")


def _snapshot_start(settings: Settings, engine: Engine, view: str, spec, scope: str, held: Offsets,
                    ref: str) -> tuple[Snapshot, bool]:
    """The snapshot to start from, and whether it still has to be loaded (False: resuming)."""
    try:
        snap = snapshots.resolve(engine, view, ref)
        snapshots.migrations_for(snap, view, spec.logic_version, SCHEMA_VERSION)
    except snapshots.SnapshotError as exc:
        raise ReplayError(str(exc)) from None
    if not held:
        _check_new_fields_unset(settings, snap, view, spec)
        return snap, True
    record = build_record(engine, spec.name) or {}
    if record.get("snapshot_id") != snap.snapshot_id:
        raise ReplayError(f"{spec.name} already has state that did not start from snapshot {snap.snapshot_id}: "
                          "choose a new --version for a replay from a snapshot")
    return snap, False


def _check_new_fields_unset(settings: Settings, snap: Snapshot, view: str, spec) -> None:
    """A snapshot of older logic loads into logic that reads fields the older one ignored (revenue
    v2 reads tip_cents) only if no event before the snapshot's offsets set them: then the two
    logics computed the same state. Otherwise the state is wrong for the new logic: refuse."""
    older = views.spec_at(view, snap.logic_version)
    fields = [f for f in log_history.new_fields(spec) if f not in older.measure.reads]
    if not fields:
        return
    found = log_history.set_before(settings, fields, snap.offsets)
    if found:
        raise ReplayError(f"snapshot {snap.snapshot_id} holds logic v{snap.logic_version} state, which ignores "
                          f"{', '.join(fields)}, and {found:,} events before its offsets set them: its state is not "
                          f"v{spec.logic_version}'s. Replay from earliest instead (no --from-snapshot)")


def plan(settings: Settings, engine: Engine, view: str, version: int, start: Offsets | None = None,
         snapshot: str | None = None, spark=None, end: Offsets | None = None) -> ReplayPlan:
    """Which offsets a replay would read, from which tier, starting from what; changes nothing.
    `end` fixes the end offsets (a replay re-planning keeps the ones it recorded at start)."""
    check_args(view, version, start=start, snapshot=snapshot)
    spec, scope = spec_for(view, version), replay_scope(view, version)
    held = _held(engine, scope, settings.topic)
    snap, load = (None, False) if snapshot is None else _snapshot_start(settings, engine, view, spec, scope, held, snapshot)
    kafka_first, now_end = kafka_io.run(kafka_io.log_range(settings))
    target = end or now_end
    check_start(start, target, settings.topic)
    begin = snap.offsets if snap else (start or {})
    begin = {p: begin.get(p, 0) for p in target}
    position = {p: max(begin[p], held.get(p, 0)) for p in target}
    below = tiers.needs_bronze(position, target, kafka_first)
    if below:
        spark = ensure_spark(settings, spark)
    runs = tiers.bronze_runs(spark, settings, below) if below else {}
    rate, source = measured_rate(engine)
    return ReplayPlan(view, spec.name, scope, begin, position, target, kafka_first,
                      tiers.plan_ranges(position, target, kafka_first, runs), snap, load, rate, source)
