"""The Kappa job: the log through a view's stream logic into its versioned output `<view>__v<N>`,
bounded by the end offsets recorded at start, so a replay is reproducible."""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from dataclasses import dataclass
from datetime import datetime, timezone

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError
from sqlalchemy import Engine

from lklab.engine import snapshots
from lklab.lake import tiers
from lklab import views
from lklab.core.config import Settings
from lklab.log.kafka_io import Offsets
from lklab.lake.spark import ensure_spark
from lklab.engine.outputs import output_rows
from lklab.serving import progress
from lklab.engine import dead_letters
from lklab.engine.checkpoint import CheckpointedSink
from lklab.kappa.names import ReplayError, spec_for
from lklab.kappa.planner import ReplayPlan, check_args, plan
from lklab.kappa.records import record

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
    beyond_horizon: int = 0  # records refused so far by this output, older than the correction horizon (lklab.engine.horizon)

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


class ReplayStopped(Exception):
    """The replay was asked to stop (a live job's SIGTERM while it hydrates); its progress is checkpointed."""


class _Pacer:
    """Progress reporting, the --max-rate throttle and the stop request, shared by both tiers."""

    def __init__(self, total: int, max_rate: float | None, on_progress: Callable[[ReplayProgress], None] | None,
                 stop: threading.Event | None = None) -> None:
        self.total, self.max_rate, self.on_progress, self.stop = total, max_rate, on_progress, stop
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

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def throttle(self, n: int) -> None:
        """advance(n), then sleep as it says, in slices: a stop request ends the replay (ReplayStopped)."""
        until = time.monotonic() + self.advance(n)
        while not self._stopping() and (left := until - time.monotonic()) > 0:
            time.sleep(min(left, 0.2))
        if self._stopping():
            raise ReplayStopped

    async def athrottle(self, n: int) -> None:
        """throttle(n) for the Kafka tier's event loop."""
        until = time.monotonic() + self.advance(n)
        while not self._stopping() and (left := until - time.monotonic()) > 0:
            await asyncio.sleep(min(left, 0.2))
        if self._stopping():
            raise ReplayStopped


def replay(
    settings: Settings, engine: Engine, view: str, version: int, start: Offsets | None = None,
    max_rate: float | None = None, on_progress: Callable[[ReplayProgress], None] | None = None,
    snapshot: str | None = None, spark=None, checkpoint_every: int = 100_000, stop: threading.Event | None = None,
    end: Offsets | None = None,
) -> ReplayResult:
    """Replay [start (default: offset 0, or the snapshot's offsets), end offsets now) into
    `<view>__v<N>`, from bronze where Kafka no longer holds the offsets, then from Kafka.
    Re-running the same version resumes from its own committed offsets up to the new end.
    State and offsets are checkpointed every `checkpoint_every` records (lklab.engine.checkpoint.CheckpointedSink).
    Setting `stop` ends it early with ReplayStopped, after a checkpoint of what it applied.
    `end`, if given, replaces the end offsets (a replay of a prefix of the log)."""
    check_args(view, version, max_rate)
    spec = spec_for(view, version, settings.faults.get("kappa"))
    began = datetime.now(timezone.utc)
    the_plan = plan(settings, engine, view, version, start, snapshot, spark, end=end)
    if the_plan.lost:
        raise ReplayError(the_plan.lost_message())
    spark = spark or _spark_if(the_plan, settings)
    restored = None  # the sink's first state, when a snapshot was just loaded (not read back)
    if the_plan.load_snapshot:
        try:
            restored = snapshots.held_state(snapshots.load(settings, engine, the_plan.snapshot, spec, the_plan.scope), spec)
        except snapshots.SnapshotError as exc:
            raise ReplayError(str(exc)) from None
    snapshot_id = the_plan.snapshot.snapshot_id if the_plan.snapshot else None
    record(engine, spec, view, version, the_plan.scope, the_plan.start, the_plan.target, began, status="running",
            snapshot_id=snapshot_id)
    pacer = _Pacer(the_plan.records(), max_rate, on_progress, stop)
    counts = {tiers.BRONZE: 0, tiers.KAFKA: 0}
    first_plan = the_plan
    while True:
        sink = CheckpointedSink(engine, settings, settings.topic, [spec], the_plan.scope, every=checkpoint_every,
                                before_commit=partial(dead_letters.send, settings, consumer=the_plan.scope), restored=restored)
        restored = None
        try:
            with _bulk_gc():  # after the state is loaded, so that it is frozen out of collections
                _replay_tiers(settings, spark, sink, the_plan, pacer, counts)
            break
        except ReplayStopped:
            sink.checkpoint()
            raise
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
        rows = output_rows(conn, view, spec.name)
        maxima = progress.max_event_times(conn, the_plan.scope, settings.topic)
        refused = progress.read_counters(engine, the_plan.scope)[progress.BEYOND_HORIZON]
    seconds = time.monotonic() - pacer.clock
    done = pacer.done
    record(engine, spec, view, version, the_plan.scope, the_plan.start, the_plan.target, began, status="complete", events=done,
            rows=rows, watermark=views.watermark(maxima),
            seconds={"wall_s": round(seconds, 3), "events_per_s": round(done / seconds, 1) if seconds else None},
            snapshot_id=snapshot_id, tier_counts=counts)
    return ReplayResult(spec.name, done, rows, the_plan.start, the_plan.target, seconds, counts, snapshot_id, refused)


def _replay_tiers(settings: Settings, spark, sink: CheckpointedSink, the_plan: ReplayPlan, pacer: _Pacer,
                  counts: dict[str, int]) -> None:
    """The plan's bronze ranges (Spark, in offset order), then its Kafka ranges, then a checkpoint."""
    for span in (r for r in the_plan.ranges if r.tier == tiers.BRONZE):
        for records in tiers.read_bronze(spark, settings, span):
            sink.apply(records)
            counts[tiers.BRONZE] += len(records)
            pacer.throttle(len(records))
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
            await pacer.athrottle(len(records))
    finally:
        await consumer.stop()
