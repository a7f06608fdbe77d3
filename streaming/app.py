"""The speed layer as a Faust app: it keeps every view of lklab.views current in the serving store.

Records come in by `speed_source`: `batch` (default), whole Kafka fetches from a consumer of
its own in the speed group (streaming.batches; the Faust app then runs no Faust consumer), or
`stream`, a Faust agent event by event. Either hands batches to SpeedSink. Faust runs the
worker either way: its lifecycle and signals, web, the heartbeat timer and the DLQ producer.

Delivery: consumption is at-least-once (a batch is acked or committed to Kafka only after it was
applied). Exactly-once *effect* on the serving store comes from lklab.engine.sink, which commits
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
from collections.abc import Callable, Sequence
from datetime import datetime, timezone

import faust
from faust.app.base import BootStrategy
from sqlalchemy import Engine

from lklab.core.config import Settings
from lklab.log.kafka_io import MAX_REQUEST_BYTES
from lklab.serving.store import make_engine
from streaming.faults import speed_specs
from lklab.lambda_arch.speed import assignment_file, worker_dir
from lklab.engine import dead_letters
from lklab.engine.fold import ApplyStats
from lklab.engine.sink import OwnedState, apply_records
from lklab.serving import progress
from lklab.serving.progress import StaleProgressError
from streaming.batches import batch_source

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


class SpeedSink:
    """What both sources hand their batches to: lklab.engine.sink.apply_records in a thread (the
    sink's DB I/O blocks), dead letters through the app's producer inside the sink transaction,
    the held state in memory while this worker owns every partition (OwnedState; per-batch
    lookups while it owns only some; thrown away on every rebalance), and the assignment file
    `lklab speed start` waits for."""

    def __init__(self, app: faust.App, settings: Settings) -> None:
        self.app, self.settings = app, settings
        self.specs = speed_specs(settings)
        self.owned = OwnedState(settings.correction_horizon_s)
        self.owns_all = False
        self._engine: Engine | None = None
        self._dlq_limit: int | None = None  # the DLQ's record limit, read at the first dead letter

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(self.settings)
        return self._engine

    def committed(self) -> dict[int, int]:
        """The next offset per partition, committed with the results: where a batch source resumes."""
        with self.engine.connect() as conn:
            return progress.next_offsets(conn, self.settings.speed_group, self.settings.topic)

    def assigned(self, partitions: Sequence[int]) -> None:
        mine = sorted(partitions)
        self.owned.invalidate()
        self.owns_all = self.settings.speed_state_in_memory and mine == list(range(self.settings.partitions))
        log.info("partitions assigned: %s %s (held state %s)", self.settings.topic, mine,
                 "in memory" if self.owns_all else "looked up per batch")
        path = assignment_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "group": self.settings.speed_group, "topic": self.settings.topic,
                                   "partitions": mine, "at": datetime.now(timezone.utc).isoformat()}))
        tmp.replace(path)

    def revoked(self) -> None:
        self.owns_all = False
        self.owned.invalidate()

    async def apply(self, topic: str, records: Sequence[tuple[int, int, bytes]], keys: dict[tuple[int, int], bytes | None]) -> None:
        """Apply one batch, in order with the ones before it; a batch that cannot be applied ends the
        process without acking or committing it (_crash)."""
        work = asyncio.ensure_future(asyncio.to_thread(self._apply, topic, records, keys, asyncio.get_running_loop()))
        try:
            stats = await asyncio.shield(work)
        except asyncio.CancelledError:
            # Stopping mid-batch: let the transaction finish, so that what the source acks or
            # commits on the way out matches what the store committed.
            await asyncio.wait({work})
            if work.exception() is not None:
                _crash(work.exception())
            raise
        except Exception as exc:  # noqa: BLE001 - anything else must not be acked
            _crash(exc)
        _log_batch(topic, len(records), stats)

    def _apply(self, topic: str, records: Sequence[tuple[int, int, bytes]], keys, loop) -> ApplyStats:
        def before_commit(stats: ApplyStats) -> None:
            if stats.dead_letters:
                asyncio.run_coroutine_threadsafe(self._send_dead_letters(stats, keys), loop).result(timeout=120)

        for attempt in range(1, STALE_RETRIES + 1):
            try:
                return apply_records(self.engine, self.settings, topic, records, before_commit=before_commit, specs=self.specs,
                                     owned=self.owned if self.owns_all else None)
            except StaleProgressError as exc:  # a rebalance race: retry; committed offsets are skipped
                if attempt == STALE_RETRIES:
                    raise
                log.warning("%s (attempt %d/%d)", exc, attempt, STALE_RETRIES)
        raise AssertionError("unreachable")

    async def _send_dead_letters(self, stats: ApplyStats, keys: dict[tuple[int, int], bytes | None]) -> None:
        if self._dlq_limit is None:
            self._dlq_limit = await dead_letters.dlq_limit(self.settings)
        pending = []
        for d in stats.dead_letters:
            value = dead_letters.letter(d, stats.topic, self.settings.speed_group, self._dlq_limit, keys.get((d.partition, d.offset)))
            pending.append(await self.app.producer.send(self.settings.dlq_topic, keys.get((d.partition, d.offset)), value,
                                                        None, None, None))
        await asyncio.gather(*pending)  # acks=all: on the DLQ before the sink transaction commits


def _log_batch(topic: str, records: int, stats: ApplyStats) -> None:
    if stats.offsets_missed:
        log.warning("%s: %d offsets were gone from the log when this worker reached them (retention outran "
                    "it); their events are missing from the speed views until batch covers them",
                    topic, stats.offsets_missed)
    log.info(
        "applied %s: %d records, %d processed, %d duplicate, %d late, %d dead-lettered, "
        "%d corrections, %d re-delivered skipped, watermark %s, next offsets %s",
        topic, records, stats.processed, stats.duplicates_ignored, stats.late_dropped,
        stats.dead_lettered, stats.corrections_applied, stats.skipped_redelivered,
        stats.watermark.isoformat() if stats.watermark else None, stats.next_offsets,
    )


def stream_source(app: faust.App, settings: Settings, sink: SpeedSink) -> None:
    """`speed_source=stream`: a Faust agent on the topic; Faust consumes, dispatches each event
    through its stream, and commits what the agent acked (a batch, after it was applied)."""

    @app.agent(event_source(app, settings), name="lklab.speed.views")
    async def speed_views(stream):
        async for events in stream.take_events(settings.speed_batch_max, within=settings.speed_batch_within_s):
            by_topic: dict[str, list[tuple[int, int, bytes]]] = {}
            keys: dict[tuple[int, int], bytes | None] = {}
            for event in events:
                msg = event.message
                by_topic.setdefault(msg.topic, []).append((msg.partition, msg.offset, msg.value))
                keys[(msg.partition, msg.offset)] = msg.key
            for topic, records in by_topic.items():
                await sink.apply(topic, records, keys)

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs) -> None:
        sink.revoked()

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs) -> None:
        sink.assigned([tp.partition for tp in assigned if tp.topic == settings.topic])


class _WithoutFaustConsumer(BootStrategy):
    enable_kafka_consumer = False  # the batch source's own consumer is the worker's one group member


class BatchSourceApp(faust.App):
    """A Faust app whose worker runs no Faust consumer (streaming.batches consumes)."""

    BootStrategy = _WithoutFaustConsumer


SOURCES: dict[str, tuple[type[faust.App], Callable[[faust.App, Settings, SpeedSink], None]]] = {
    "batch": (BatchSourceApp, batch_source),
    "stream": (faust.App, stream_source),
}


def make_app(settings: Settings) -> faust.App:
    """The speed-layer app for these settings (`speed_source` picks how records come in); run it
    with streaming.worker."""
    app_class, install_source = SOURCES[settings.speed_source]
    app = app_class(
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
    if "speed" in settings.faults:
        log.warning("speed layer running with the deliberate fault %r", settings.faults["speed"])
    sink = SpeedSink(app, settings)
    install_source(app, settings, sink)

    @app.timer(interval=1.0)
    async def heartbeat() -> None:
        # Serving reads this to decide whether speed rows may be merged (degraded mode).
        await asyncio.to_thread(progress.beat, sink.engine, settings.speed_group)

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
