"""The speed layer as a Faust app: one agent that keeps every view of lklab.views current in the serving store.

Delivery: Faust consumes and commits Kafka offsets at-least-once (a batch is acked only after it
was applied). Exactly-once *effect* on the serving store comes from lklab.engine.sink, which commits
the consumed offsets with the results in one transaction and skips anything below them.

No Faust tables or windows are used: Faust windowed tables expire by wall clock and would lose
late events; the event-time watermark and allowed lateness come from lklab.views instead.

Faust never creates topics here (topic_allow_declare=False, no leader topic): the event topic
and the DLQ are created by lklab.log.kafka_io.ensure_topics with the configured partition count.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone

import faust
from sqlalchemy import Engine

from lklab.core.config import Settings
from lklab.log.kafka_io import MAX_REQUEST_BYTES
from lklab.serving.store import make_engine
from streaming.faults import speed_specs
from lklab.lambda_arch.speed import assignment_file, worker_dir
from lklab.engine import dead_letters
from lklab.engine.fold import ApplyStats
from lklab.engine.sink import OwnedState, apply_records
from lklab.serving.progress import StaleProgressError, beat

log = logging.getLogger("lklab.speed")

STALE_RETRIES = 5
CRASH_EXIT_CODE = 70  # EX_SOFTWARE


def _brokers(settings: Settings) -> list[str]:
    return [f"kafka://{host.strip()}" for host in settings.bootstrap.split(",") if host.strip()]


def consumer_options(settings: Settings) -> dict:
    """How the speed layer's Faust app consumes (shared with the benchmark's Faust ceiling)."""
    return dict(
        broker=_brokers(settings),
        store="memory://",
        autodiscover=False,
        topic_replication_factor=settings.topic_replication_factor,
        topic_partitions=settings.partitions,
        topic_allow_declare=False,
        topic_disable_leader=True,
        consumer_auto_offset_reset="earliest",
        # Faust's defaults (500 records per poll, 4096 buffered) starved the sink of records:
        # 4.2k ev/s with them, 6.8k with these, on the bench's 100k events.
        broker_max_poll_records=settings.speed_batch_max,
        stream_buffer_maxsize=settings.speed_prefetch,
    )


def event_source(app: faust.App, settings: Settings) -> faust.TopicT:
    """The event topic as raw bytes: the sink parses (and dead-letters) each record itself."""
    return app.topic(settings.topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                     partitions=settings.partitions, internal=False)


def make_app(settings: Settings) -> faust.App:
    """The speed-layer app for these settings; run it with streaming.worker."""
    app = faust.App(
        settings.speed_group,
        **consumer_options(settings),
        datadir=str(worker_dir(settings) / "faust"),
        broker_commit_every=settings.speed_batch_max,
        broker_commit_interval=1.0,
        broker_session_timeout=10.0,
        broker_heartbeat_interval=1.0,
        producer_acks=-1,
        producer_max_request_size=MAX_REQUEST_BYTES,  # what dead_letters.dlq_limit assumes of lklab's producers
        web_enabled=True,
        web_bind="127.0.0.1",
        web_host="127.0.0.1",
        web_port=settings.speed_web_port + settings.speed_worker_index,
    )
    source = event_source(app, settings)
    engine_holder: list[Engine] = []
    specs = speed_specs(settings)
    if "speed" in settings.faults:
        log.warning("speed layer running with the deliberate fault %r", settings.faults["speed"])

    def engine() -> Engine:
        if not engine_holder:
            engine_holder.append(make_engine(settings))
        return engine_holder[0]

    dlq_limits: list[int] = []  # the DLQ's record limit, read at the first dead letter
    # Held state in memory while this worker owns every partition (see OwnedState); per-batch
    # lookups while it owns only some. Every rebalance throws the memory away.
    owned = OwnedState(settings.correction_horizon_s)
    owns_all: list[bool] = [False]

    async def send_dead_letters(stats: ApplyStats, keys: dict[tuple[int, int], bytes | None]) -> None:
        if not dlq_limits:
            dlq_limits.append(await dead_letters.dlq_limit(settings))
        pending = []
        for d in stats.dead_letters:
            key = keys.get((d.partition, d.offset))
            value = dead_letters.letter(d, stats.topic, settings.speed_group, dlq_limits[0], key)
            pending.append(await app.producer.send(settings.dlq_topic, key, value, None, None, None))
        await asyncio.gather(*pending)  # acks=all: on the DLQ before the sink transaction commits

    def apply_batch(topic: str, records: Sequence[tuple[int, int, bytes]], keys, loop) -> ApplyStats:
        def before_commit(stats: ApplyStats) -> None:
            if stats.dead_letters:
                asyncio.run_coroutine_threadsafe(send_dead_letters(stats, keys), loop).result(timeout=120)

        for attempt in range(1, STALE_RETRIES + 1):
            try:
                return apply_records(engine(), settings, topic, records, before_commit=before_commit, specs=specs,
                                     owned=owned if owns_all[0] else None)
            except StaleProgressError as exc:  # a rebalance race: retry; committed offsets are skipped
                if attempt == STALE_RETRIES:
                    raise
                log.warning("%s (attempt %d/%d)", exc, attempt, STALE_RETRIES)
        raise AssertionError("unreachable")

    @app.timer(interval=1.0)
    async def heartbeat() -> None:
        # Serving reads this to decide whether speed rows may be merged (degraded mode).
        await asyncio.to_thread(beat, engine(), settings.speed_group)

    @app.agent(source, name="lklab.speed.views")
    async def speed_views(stream):
        loop = asyncio.get_running_loop()
        async for events in stream.take_events(settings.speed_batch_max, within=settings.speed_batch_within_s):
            by_topic: dict[str, list[tuple[int, int, bytes]]] = {}
            keys: dict[tuple[int, int], bytes | None] = {}
            for event in events:
                msg = event.message
                by_topic.setdefault(msg.topic, []).append((msg.partition, msg.offset, msg.value))
                keys[(msg.partition, msg.offset)] = msg.key
            for topic, records in by_topic.items():
                # The sink runs in a thread (blocking DB I/O); awaiting it keeps batches in order.
                work = asyncio.ensure_future(asyncio.to_thread(apply_batch, topic, records, keys, loop))
                try:
                    stats = await asyncio.shield(work)
                except asyncio.CancelledError:
                    # Stopping mid-batch: Faust acks the batch on the way out, so let the
                    # transaction finish and make sure the acks match what was committed.
                    await asyncio.wait({work})
                    if work.exception() is not None:
                        _crash(work.exception())
                    raise
                except Exception as exc:  # noqa: BLE001 - anything else must not be acked
                    _crash(exc)
                if stats.offsets_missed:
                    log.warning("%s: %d offsets were gone from the log when this worker reached them (retention outran "
                                "it); their events are missing from the speed views until batch covers them",
                                topic, stats.offsets_missed)
                log.info(
                    "applied %s: %d records, %d processed, %d duplicate, %d late, %d dead-lettered, "
                    "%d corrections, %d re-delivered skipped, watermark %s, next offsets %s",
                    topic, len(records), stats.processed, stats.duplicates_ignored, stats.late_dropped,
                    stats.dead_lettered, stats.corrections_applied, stats.skipped_redelivered,
                    stats.watermark.isoformat() if stats.watermark else None, stats.next_offsets,
                )

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        owns_all[0] = False
        owned.invalidate()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        mine = sorted(tp.partition for tp in assigned if tp.topic == settings.topic)
        owned.invalidate()
        owns_all[0] = settings.speed_state_in_memory and mine == list(range(settings.partitions))
        log.info("partitions assigned: %s %s (held state %s)", settings.topic, mine,
                 "in memory" if owns_all[0] else "looked up per batch")
        path = assignment_file(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({
            "pid": os.getpid(),
            "group": settings.speed_group,
            "topic": settings.topic,
            "partitions": mine,
            "at": datetime.now(timezone.utc).isoformat(),
        }))
        tmp.replace(path)

    return app


def _crash(exc: BaseException) -> None:
    """Exit at once, without acking the failed batch or letting Faust commit its offsets.

    The sink transaction was rolled back, so on restart the batch is consumed again from the
    last committed offset (at-least-once) and the sink's offset fence keeps the effect exactly-once."""
    log.critical("speed layer cannot apply a batch; exiting without committing it: %r", exc, exc_info=exc)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(CRASH_EXIT_CODE)
