"""A consumer's dead letters: each record of the log that breaks the event contract goes to the
DLQ topic with its reason, its place on the log (`topic[partition]@offset`), the consumer that
rejected it (its group) and its bytes (lklab.log.kafka_io.dlq_payload), cut to what the DLQ
takes: a record can be far larger once its bytes are escaped as JSON, and a dead letter the
broker refused would stop the consumer on that record for good. Consumers send them before they
commit the batch or checkpoint that skipped the records: at-least-once, never lost."""
from __future__ import annotations

import asyncio

from lklab.core.config import Settings
from lklab.engine.fold import ApplyStats, DeadLetter
from lklab.log import kafka_io


def letter(dead: DeadLetter, topic: str, consumer: str, limit: int, key: bytes | None = None) -> bytes:
    """The dead letter's value, fitting a DLQ record of `limit` bytes with this key."""
    return kafka_io.dlq_payload(dead.reason, f"{topic}[{dead.partition}]@{dead.offset}", dead.raw,
                                kafka_io.dead_letter_budget(limit, key), consumer)


async def dlq_limit(settings: Settings) -> int:
    """The largest record the DLQ topic takes from lklab's producers (kafka_io.record_limits)."""
    return (await kafka_io.record_limits(settings, [settings.dlq_topic]))[settings.dlq_topic]


def send(settings: Settings, stats: ApplyStats, consumer: str) -> None:
    """Send `stats`' dead letters and wait until Kafka acknowledged each (acks=all). For code
    without an event loop of its own: a Kappa job's checkpoint writer."""
    if stats.dead_letters:
        kafka_io.run(_send(settings, stats, consumer))


async def _send(settings: Settings, stats: ApplyStats, consumer: str) -> None:
    limit = await dlq_limit(settings)
    async with kafka_io.producer(settings, max_batch_bytes=limit) as producer:
        acks = [await producer.send(settings.dlq_topic, value=letter(d, stats.topic, consumer, limit)) for d in stats.dead_letters]
        await asyncio.gather(*acks)
