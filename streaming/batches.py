"""`speed_source=batch`: the speed worker takes whole Kafka fetches, not one Faust event at a time.

An aiokafka consumer in the speed group (its own member: the Faust app runs no consumer, see
streaming.app.BatchSourceApp) hands each fetch to the sink as one batch. Faust's per-event
dispatch (message objects, the conductor, stream iteration, acks) had capped a worker at about
8 % of a raw consume on this lab's bench, before the sink did any work.

Where it resumes: on every assignment each partition is sought to the offset committed with the
results in the serving store, the truth the sink's fence works from; a partition with no progress
starts from Kafka's committed offset, else the earliest. A fetch that raced the seek (handed out
from Kafka's older copy while the store was being read) is dropped, not applied: the fence would
have skipped it anyway, but the sink's count of re-deliveries then means what it says. Kafka's committed offsets are a copy,
written at most once a second after a batch was applied, for lag tools; nothing reads them back.

Batches size themselves: `getmany` returns what the background fetcher has buffered, at most
`speed_batch_max` records, so while the sink applies one batch the next accumulates. An idle
worker waits at most `speed_batch_within_s` before asking again.
"""
from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import faust
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from lklab.core.config import Settings

if TYPE_CHECKING:
    from streaming.app import SpeedSink

log = logging.getLogger("lklab.speed")

KAFKA_COMMIT_EVERY_S = 1.0
FETCH_BYTES_PER_PARTITION = 8 * 1024 * 1024


class _Rebalance(ConsumerRebalanceListener):
    """Seeks each newly assigned partition to the store's offset, and gates the batch loop while it
    does: the store is read in a thread, and meanwhile the fetcher may already have handed the loop
    records from Kafka's (older) committed copy. `generation` counts assignments, so the loop can
    tell a fetch that overlapped one (not_raced)."""

    def __init__(self, consumer: AIOKafkaConsumer, sink: SpeedSink, topic: str) -> None:
        self.consumer, self.sink, self.topic = consumer, sink, topic
        self.positioned = asyncio.Event()
        self.sought: dict[TopicPartition, int] = {}
        self.generation = 0

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self.positioned.clear()
        self.sink.revoked()

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        committed = await asyncio.to_thread(self.sink.committed)
        self.sought = {tp: committed[tp.partition] for tp in assigned if tp.partition in committed}
        for tp, offset in self.sought.items():
            self.consumer.seek(tp, offset)
        self.generation += 1
        self.positioned.set()
        self.sink.assigned([tp.partition for tp in assigned if tp.topic == self.topic])

    async def settled(self, fetched: Mapping[TopicPartition, list[ConsumerRecord]],
                      generation: int) -> dict[TopicPartition, list[ConsumerRecord]]:
        """`fetched` (asked for at `generation`) once the partitions are positioned, without what
        an assignment since made doubtful (not_raced); the partitions whose records are dropped
        that way are sought to the store's offset again."""
        await self.positioned.wait()
        reassigned = self.generation != generation
        if reassigned:
            for tp in self.sought.keys() & fetched.keys():
                self.consumer.seek(tp, self.sought[tp])
        return not_raced(fetched, self.consumer.assignment(), self.sought, reassigned)


def not_raced(fetched: Mapping[TopicPartition, list[ConsumerRecord]], assigned: set[TopicPartition],
              sought: Mapping[TopicPartition, int], reassigned: bool) -> dict[TopicPartition, list[ConsumerRecord]]:
    """A fetch without what an assignment during it made doubtful: partitions no longer assigned
    (their new owner resumes from the store), and, if the partitions were assigned again meanwhile,
    every partition sought to the store's offset. Those records may come from Kafka's older copy
    (handed out before the seek: re-deliveries) or from the sought offset (after it); which, the
    fetch does not say, so they are all dropped and the partition is sought again: the fetcher
    reads them from the store's offset, none lost, none twice."""
    return {tp: records for tp, records in fetched.items()
            if tp in assigned and not (reassigned and tp in sought)}


def _consumer(settings: Settings) -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap, group_id=settings.speed_group,
        client_id=f"{settings.speed_group}-{settings.speed_worker_index}",
        enable_auto_commit=False, auto_offset_reset="earliest", max_poll_records=settings.speed_batch_max,
        session_timeout_ms=10_000, heartbeat_interval_ms=1_000,
        max_partition_fetch_bytes=FETCH_BYTES_PER_PARTITION, fetch_max_bytes=FETCH_BYTES_PER_PARTITION * 4,
    )


async def _commit_copy(consumer: AIOKafkaConsumer, fetched: dict[TopicPartition, list]) -> None:
    """Kafka's copy of the progress the sink just committed (lag tools read it; a rebalance may refuse it)."""
    try:
        await consumer.commit({tp: messages[-1].offset + 1 for tp, messages in fetched.items()})
    except KafkaError as exc:
        log.info("Kafka offset copy not committed (%s); the serving store holds the progress", exc)


def in_timestamp_order(fetched: Mapping[TopicPartition, list[ConsumerRecord]]) -> list[ConsumerRecord]:
    """One fetch's records across its partitions by Kafka timestamp, each partition's in offset
    order (Kafka Streams picks its next record the same way); records of one millisecond (a
    producer's burst) interleave in proportion, as Faust's round-robin over partitions did. The
    watermark is the slowest partition's progress, so the order decides what is late: applied a
    partition at a time, the last partition's events met a watermark already at their own
    partition's head, and a test workload left ten times more events to batch."""
    def keyed(messages: list[ConsumerRecord]):
        n = len(messages)
        return ((m.timestamp, i / n, m) for i, m in enumerate(messages))

    return [m for _, _, m in heapq.merge(*(keyed(ms) for ms in fetched.values()), key=lambda k: k[:2])]


def batch_source(app: faust.App, settings: Settings, sink: SpeedSink) -> None:
    """Run the batch consumer as one of the Faust worker's tasks."""

    @app.task
    async def consume_batches() -> None:
        consumer = _consumer(settings)
        await consumer.start()
        rebalance = _Rebalance(consumer, sink, settings.topic)
        consumer.subscribe([settings.topic], listener=rebalance)
        copied, pending = time.monotonic(), {}
        try:
            while True:
                generation = rebalance.generation
                fetched = await consumer.getmany(timeout_ms=int(settings.speed_batch_within_s * 1000),
                                                 max_records=settings.speed_batch_max)
                fetched = await rebalance.settled(fetched, generation)
                if fetched:
                    merged = in_timestamp_order(fetched)
                    keys = {(m.partition, m.offset): m.key for m in merged}
                    await sink.apply(settings.topic, [(m.partition, m.offset, m.value) for m in merged], keys)
                    pending.update(fetched)
                if pending and time.monotonic() - copied >= KAFKA_COMMIT_EVERY_S:
                    await _commit_copy(consumer, pending)
                    copied, pending = time.monotonic(), {}
        finally:
            await consumer.stop()
