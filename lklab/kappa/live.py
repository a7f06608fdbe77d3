"""The Kappa job, live: hydrate (the bounded replay up to the log's end offsets at start, from
bronze below Kafka's retention, then Kafka), then keep consuming Kafka from where the output's
own committed progress is, checkpointing at least every `kappa_checkpoint_interval_s`. The same
fold and the same checkpointed sink as the replay (lklab.engine); a restart resumes from the
checkpointed offsets, and the offset fence makes that exactly-once for the output."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from functools import partial
from datetime import datetime, timezone

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import Engine

from lklab.core.config import Settings
from lklab.engine import dead_letters
from lklab.engine.checkpoint import CheckpointedSink
from lklab.kappa.job import BATCH, ReplayResult, ReplayStopped, replay
from lklab.kappa.names import replay_scope, spec_for
from lklab.kappa.retirement import retire_reason
from lklab.log import kafka_io
from lklab.log.kafka_io import Offsets
from lklab.serving import progress

BEAT_EVERY_S = 1.0


def run_live(settings: Settings, engine: Engine, view: str, version: int, stop: threading.Event,
             start: Offsets | None = None, snapshot: str | None = None,
             on_hydrated: Callable[[ReplayResult], None] | None = None, max_rate: float | None = None,
             on_retire: Callable[[str], None] | None = None) -> None:
    """Run `<view>__v<N>` until `stop` is set, or until its rollback window after a swap away
    from it has passed (lklab.kappa.retirement): hydrate (at most `max_rate` events/s), then
    follow the log. The heartbeat runs beside it for the whole life of the job."""
    beating = threading.Thread(target=_beat, args=(settings, engine, view, version, stop, on_retire),
                               name=f"heartbeat-{replay_scope(view, version)}", daemon=True)
    beating.start()
    try:
        hydrated = replay(settings, engine, view, version, start, max_rate, snapshot=snapshot, stop=stop)
    except ReplayStopped:
        return  # stopped while hydrating; what it applied is checkpointed
    if on_hydrated is not None:
        on_hydrated(hydrated)
    asyncio.run(_follow(settings, engine, view, version, stop))


def _beat(settings: Settings, engine: Engine, view: str, version: int, stop: threading.Event,
          on_retire: Callable[[str], None] | None) -> None:
    """Beat every second; stop the job once its rollback window has passed."""
    scope, started = replay_scope(view, version), datetime.now(timezone.utc)
    while not stop.is_set():
        progress.beat(engine, scope)
        if (reason := retire_reason(settings, engine, view, version, started)) is not None:
            if on_retire is not None:
                on_retire(reason)
            stop.set()
        stop.wait(BEAT_EVERY_S)


async def _follow(settings: Settings, engine: Engine, view: str, version: int, stop: threading.Event) -> None:
    """Consume every partition from the output's committed offsets until stopped; a checkpoint is
    written whenever records are pending and the interval has passed (and once more at the end)."""
    scope = replay_scope(view, version)
    sink = CheckpointedSink(engine, settings, settings.topic, [spec_for(view, version, settings.faults.get("kappa"))], scope,
                            every=BATCH * 10, before_commit=partial(dead_letters.send, settings, consumer=scope))
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=scope, enable_auto_commit=False,
                                auto_offset_reset="none", max_poll_records=BATCH)
    await consumer.start()
    try:
        partitions = sorted(await kafka_io.end_offsets(settings))  # LookupError if the topic is gone
        consumer.assign([TopicPartition(settings.topic, p) for p in partitions])
        for p in partitions:
            consumer.seek(TopicPartition(settings.topic, p), sink.next_offset.get(p, 0))
        last = time.monotonic()
        while not stop.is_set():
            batches = await consumer.getmany(timeout_ms=100, max_records=BATCH)
            records = [(m.partition, m.offset, m.value) for messages in batches.values() for m in messages]
            if records:
                sink.apply(records)
            if sink.since and time.monotonic() - last >= settings.kappa_checkpoint_interval_s:
                sink.start_checkpoint()  # written in the background while the loop goes on consuming
                last = time.monotonic()
        sink.checkpoint()
    finally:
        sink.close()
        await consumer.stop()
