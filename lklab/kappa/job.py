"""Kappa: replay the log through a view's stream logic into a versioned output `<view>__v<N>`,
bounded by the end offsets recorded at start, so a replay is reproducible."""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from sqlalchemy import Engine, select

from lklab.log import kafka_io
from lklab.engine import snapshots
from lklab.lake import tiers
from lklab import views
from lklab.core.provenance import git_sha
from lklab.core.config import Settings
from lklab.core.events import SCHEMA_VERSION
from lklab.log.kafka_io import Offsets
from lklab.engine.snapshots import Snapshot
from lklab.lake.spark import ensure_spark
from lklab.engine.outputs import read_output
from lklab.serving import progress
from lklab.serving.store import kappa_builds, upsert
from lklab.engine.checkpoint import CheckpointedSink

BATCH = 10_000


@contextmanager
def _bulk_gc() -> Iterator[None]:
    """A replay allocates a few objects per record while it holds millions of long-lived state
    entries, and the cyclic GC kept re-scanning those: with fewer collections (and the state
    loaded before the replay frozen out of them) the replay ran about 10 % faster (bench/RESULTS.md).
    Nothing in the replay's hot path makes reference cycles."""
    before = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


class ReplayError(RuntimeError):
    """A replay that cannot start; nothing was written."""


def output_name(view: str, version: int) -> str:
    return views.VersionedOutput(view, version).name


def replay_scope(view: str, version: int) -> str:
    """The replay's consumer group, and the scope of its dedup state and offsets."""
    return f"lklab-replay-{output_name(view, version)}"


KAPPA_VIEWS = tuple(views.VIEWS)  # Kappa runs every view (no batch layer behind it)


def spec_for(view: str, version: int) -> views.ViewSpec:
    """The view's stream logic for version N (logic version N where the view has it, else its
    newest: user_sessions v1 has the midnight bug, v2 the fix), writing into `<view>__v<N>`."""
    return views.spec_at(view, version).for_output(views.VersionedOutput(view, version))


@dataclass
class ReplayProgress:
    done: int
    total: int
    events_per_s: float


@dataclass(frozen=True)
class ReplayResult:
    output: str
    events: int
    rows: int
    start_offsets: Offsets
    target_offsets: Offsets
    seconds: float
    tiers: dict[str, int] = dataclasses.field(default_factory=dict)  # records read per tier
    snapshot_id: str | None = None

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


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


def _snapshot_start(engine: Engine, view: str, spec, scope: str, held: Offsets, ref: str) -> tuple[Snapshot, bool]:
    """The snapshot to start from, and whether it still has to be loaded (False: resuming)."""
    try:
        snap = snapshots.resolve(engine, view, ref)
        snapshots.migrations_for(snap, view, spec.logic_version, SCHEMA_VERSION)
    except snapshots.SnapshotError as exc:
        raise ReplayError(str(exc)) from None
    if not held:
        return snap, True
    record = build_record(engine, spec.name) or {}
    if record.get("snapshot_id") != snap.snapshot_id:
        raise ReplayError(f"{spec.name} already has state that did not start from snapshot {snap.snapshot_id}: "
                          "choose a new --version for a replay from a snapshot")
    return snap, False


def plan(settings: Settings, engine: Engine, view: str, version: int, start: Offsets | None = None,
         snapshot: str | None = None, spark=None, end: Offsets | None = None) -> ReplayPlan:
    """Which offsets a replay would read, from which tier, starting from what; changes nothing.
    `end` fixes the end offsets (a replay re-planning keeps the ones it recorded at start)."""
    check_args(view, version, start=start, snapshot=snapshot)
    spec, scope = spec_for(view, version), replay_scope(view, version)
    held = _held(engine, scope, settings.topic)
    snap, load = (None, False) if snapshot is None else _snapshot_start(engine, view, spec, scope, held, snapshot)
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


class _Pacer:
    """Progress reporting and the --max-rate throttle, shared by both tiers."""

    def __init__(self, total: int, max_rate: float | None, on_progress: Callable[[ReplayProgress], None] | None) -> None:
        self.total, self.max_rate, self.on_progress = total, max_rate, on_progress
        self.done, self.clock = 0, time.monotonic()

    def advance(self, n: int) -> float:
        """Count n records; returns the seconds to sleep to stay at --max-rate."""
        self.done += n
        rate = self.done / max(time.monotonic() - self.clock, 1e-6)
        if self.on_progress:
            self.on_progress(ReplayProgress(self.done, self.total, rate))
        if self.max_rate and rate > self.max_rate:
            return self.done / self.max_rate - (time.monotonic() - self.clock)
        return 0.0


def replay(
    settings: Settings, engine: Engine, view: str, version: int, start: Offsets | None = None,
    max_rate: float | None = None, on_progress: Callable[[ReplayProgress], None] | None = None,
    snapshot: str | None = None, spark=None, checkpoint_every: int = 100_000,
) -> ReplayResult:
    """Replay [start (default: offset 0, or the snapshot's offsets), end offsets now) into
    `<view>__v<N>`, from bronze where Kafka no longer holds the offsets, then from Kafka.
    Re-running the same version resumes from its own committed offsets up to the new end.
    State and offsets are checkpointed every `checkpoint_every` records (lklab.engine.sink.CheckpointedSink)."""
    check_args(view, version, max_rate)
    spec = spec_for(view, version)
    began = datetime.now(timezone.utc)
    the_plan = plan(settings, engine, view, version, start, snapshot, spark)
    if the_plan.lost:
        raise ReplayError(the_plan.lost_message())
    spark = spark or _spark_if(the_plan, settings)
    if the_plan.load_snapshot:
        spark = ensure_spark(settings, spark)
        try:
            snapshots.load(settings, engine, spark, the_plan.snapshot, spec, the_plan.scope)
        except snapshots.SnapshotError as exc:
            raise ReplayError(str(exc)) from None
    snapshot_id = the_plan.snapshot.snapshot_id if the_plan.snapshot else None
    _record(engine, spec, view, version, the_plan.scope, the_plan.start, the_plan.target, began, status="running",
            snapshot_id=snapshot_id)
    pacer = _Pacer(the_plan.records(), max_rate, on_progress)
    counts = {tiers.BRONZE: 0, tiers.KAFKA: 0}
    first_plan = the_plan
    while True:
        sink = CheckpointedSink(engine, settings, settings.topic, [spec], the_plan.scope, every=checkpoint_every)
        try:
            with _bulk_gc():  # after the state is loaded, so that it is frozen out of collections
                _replay_tiers(settings, spark, sink, the_plan, pacer, counts)
            break
        except OffsetOutOfRangeError:
            # Retention deleted offsets after the plan was made: checkpoint what was applied, plan
            # again from that progress to the same end offsets; bronze serves what Kafka dropped,
            # or we stop.
            sink.checkpoint()
        finally:
            sink.close()
        the_plan = plan(settings, engine, view, version, start, snapshot_id, spark, end=first_plan.target)
        if the_plan.lost:
            raise ReplayError(the_plan.lost_message()) from None
        spark = spark or _spark_if(the_plan, settings)
    the_plan = first_plan
    with engine.connect() as conn:
        rows = len(read_output(engine, view, spec.name, conn=conn))
        maxima = progress.max_event_times(conn, the_plan.scope, settings.topic)
    seconds = time.monotonic() - pacer.clock
    done = pacer.done
    _record(engine, spec, view, version, the_plan.scope, the_plan.start, the_plan.target, began, status="complete", events=done,
            rows=rows, watermark=views.watermark(maxima),
            seconds={"wall_s": round(seconds, 3), "events_per_s": round(done / seconds, 1) if seconds else None},
            snapshot_id=snapshot_id, tier_counts=counts)
    return ReplayResult(spec.name, done, rows, the_plan.start, the_plan.target, seconds, counts, snapshot_id)


def _replay_tiers(settings: Settings, spark, sink: CheckpointedSink, the_plan: ReplayPlan, pacer: _Pacer,
                  counts: dict[str, int]) -> None:
    """The plan's bronze ranges (Spark, in offset order), then its Kafka ranges, then a checkpoint."""
    for span in (r for r in the_plan.ranges if r.tier == tiers.BRONZE):
        for records in tiers.read_bronze(spark, settings, span):
            sink.apply(records)
            counts[tiers.BRONZE] += len(records)
            time.sleep(max(pacer.advance(len(records)), 0))
    kafka = {r.partition: r.start for r in the_plan.ranges if r.tier == tiers.KAFKA}
    asyncio.run(_replay_kafka(settings, sink, kafka, the_plan.target, pacer, counts))
    sink.checkpoint()


def _spark_if(the_plan: ReplayPlan, settings: Settings):
    """A Spark session if the plan reads bronze (None otherwise: Kafka-only replays need no JVM)."""
    return ensure_spark(settings) if the_plan.records(tiers.BRONZE) else None


async def _replay_kafka(settings: Settings, sink: CheckpointedSink, position: Offsets, target: Offsets,
                        pacer: _Pacer, counts: dict[str, int]) -> None:
    """Consume [position, target) per partition from Kafka with the replay's own group. Raises
    OffsetOutOfRangeError if retention deleted a position meanwhile (never skips silently)."""
    if not position:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=sink.scope, enable_auto_commit=False,
                                auto_offset_reset="none", max_poll_records=BATCH,
                                fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        todo = set(position)
        consumer.assign([TopicPartition(settings.topic, p) for p in todo])
        for p in todo:
            consumer.seek(TopicPartition(settings.topic, p), position[p])
        while todo:
            batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            records = []
            for tp, messages in batches.items():
                end = target[tp.partition]
                if messages and messages[-1].offset + 1 >= end:
                    todo.discard(tp.partition)
                    consumer.pause(tp)
                    messages = [m for m in messages if m.offset < end]
                records += [(m.partition, m.offset, m.value) for m in messages]
            if records:
                checkpointing = sink.since + len(records) >= sink.every
                sink.apply(records)  # in memory; a due checkpoint is written by the sink's own thread
                counts[tiers.KAFKA] += len(records)
                if checkpointing:  # visibility for Kafka tooling; the checkpointed offsets are the truth
                    done = {TopicPartition(settings.topic, p): o for p, o in dict(sink.committed).items() if p in position}
                    if done:
                        await consumer.commit(done)
            await asyncio.sleep(max(pacer.advance(len(records)), 0))
    finally:
        await consumer.stop()


def _record(engine, spec, view, version, scope, start, target, began, status, events=0, rows=0, watermark=None,
            seconds=None, snapshot_id=None, tier_counts=None) -> None:
    row = {
        "output": spec.name, "view": view, "version": version, "status": status, "git_sha": git_sha(),
        "logic_version": spec.logic_version, "schema_version": SCHEMA_VERSION, "consumer_group": scope,
        "start_offsets": {str(k): v for k, v in start.items()}, "target_offsets": {str(k): v for k, v in target.items()},
        "events": events, "rows": rows, "watermark": watermark, "started_at": began,
        "finished_at": datetime.now(timezone.utc) if status == "complete" else None, "seconds": seconds,
        "snapshot_id": snapshot_id, "tiers": tier_counts,
    }
    with engine.begin() as conn:
        upsert(conn, kappa_builds, [row])


def build_record(engine: Engine, output: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(select(kappa_builds).where(kappa_builds.c.output == output)).mappings().first()
    return dict(row) if row else None
