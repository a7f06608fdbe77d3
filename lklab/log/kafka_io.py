"""Talking to the event log: topics, idempotent producing, offsets. Offsets are the contract
between layers, so every reader here works with explicit per-partition offsets."""
from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.client import AIOKafkaClient, CoordinationType
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordListTooLargeError, TopicAlreadyExistsError
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder

from lklab.core.config import Settings

Offsets = dict[int, int]  # partition -> offset
MAX_REQUEST_BYTES = 1024 * 1024  # the producer's max_request_size: no single send may exceed it
DLQ_PREVIEW_BYTES = 64 * 1024  # what a dead letter keeps of a line too large to keep whole
# The broker refuses these for the record itself, not for its own state: such a record can be
# dead-lettered and the import go on. Anything else (broker gone, timeouts) stops the import.
RECORD_REFUSALS = (MessageSizeTooLargeError, RecordListTooLargeError)


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


def run(coro):
    """Run a coroutine from sync code (CLI, Dagster ops, tests)."""
    return asyncio.run(coro)


async def ensure_topics(settings: Settings) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name, num_partitions=settings.partitions, replication_factor=settings.topic_replication_factor,
                     topic_configs=_topic_configs(settings) or None)
            for name in (settings.topic, settings.dlq_topic)
            if name not in existing
        ]
        if wanted:
            try:
                await admin.create_topics(wanted)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    await _wait_for_metadata(settings, [settings.topic, settings.dlq_topic])


def _topic_configs(settings: Settings) -> dict[str, str]:
    configs = {"segment.bytes": str(settings.topic_segment_bytes)} if settings.topic_segment_bytes else {}
    if settings.topic_replication_factor >= 2:
        # acks=all then means "on this many replicas": an acknowledged record survives losing the others
        configs["min.insync.replicas"] = str(settings.topic_min_insync_replicas)
    return configs


@asynccontextmanager
async def _metadata_client(settings: Settings, timeout_s: float):
    """A bare client for metadata (brokers, partition leaders), not a consumer: no group, nothing to commit."""
    client = AIOKafkaClient(bootstrap_servers=settings.bootstrap, request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout_s)
        yield client
    finally:
        await client.close()


async def broker_ids(settings: Settings, timeout_s: float = 10.0) -> set[int]:
    """Ids of the brokers the cluster lists (registered, not fenced) as every listed broker sees
    it: right after a start or a restart the brokers agree only once each has caught up."""
    async with _metadata_client(settings, timeout_s) as client:
        # an answer listing no broker leaves "bootstrap-N" pseudo brokers: not registered ones
        listed = {b.nodeId for b in (await client.fetch_all_metadata()).brokers() if isinstance(b.nodeId, int)}
        seen = set(listed)
        for node_id in listed:
            answer = await asyncio.wait_for(client.send(node_id, MetadataRequest([])), timeout_s)  # [] = brokers only
            seen &= {b["node_id"] for b in answer.to_object()["brokers"]}
        return seen


async def partition_leader(settings: Settings, partition: int, topic: str | None = None, timeout_s: float = 10.0) -> int | None:
    """The broker id leading one partition now; None while it has no leader (one is being elected)."""
    topic = topic or settings.topic
    async with _metadata_client(settings, timeout_s) as client:
        cluster = await asyncio.wait_for(client.fetch_all_metadata(), timeout_s)
        leader = cluster.leader_for_partition(TopicPartition(topic, partition))
        if leader is None and not cluster.partitions_for_topic(topic):
            raise LookupError(f"topic {topic!r} does not exist on {settings.bootstrap}")
        return None if leader is None or leader < 0 else leader


def wait_for_leader(settings: Settings, partition: int, not_on: int | None = None, topic: str | None = None,
                    wait_s: float = 30.0) -> int:
    """The partition's leader once it has one (other than `not_on`, a broker just killed): after a
    start or an election the metadata reaches each broker a moment apart."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            leader = run(partition_leader(settings, partition, topic))
        except Exception:  # noqa: BLE001 - a broker not caught up yet (LookupError), or a connection to a killed one
            leader = None
        if leader is not None and leader != not_on:
            return leader
        if time.monotonic() >= deadline:
            raise TimeoutError(f"partition {partition} of {topic or settings.topic} has no leader"
                               f"{'' if not_on is None else f' other than broker {not_on}'} after {wait_s:.0f}s")
        time.sleep(0.2)


async def in_sync_replicas(settings: Settings, topic: str | None = None, timeout_s: float = 10.0) -> dict[int, set[int]]:
    """Per partition, the broker ids of its in-sync replica set, as the cluster's metadata lists them."""
    topic = topic or settings.topic
    async with _metadata_client(settings, timeout_s) as client:
        request = MetadataRequest([topic], allow_auto_topic_creation=False)
        answer = await asyncio.wait_for(client.send(client.get_random_node(), request), timeout_s)
    [found] = answer.to_object()["topics"]
    return {p["partition"]: set(p["isr"]) for p in found["partitions"]}


async def group_coordinator(settings: Settings, group: str, timeout_s: float = 10.0) -> int:
    """The broker id coordinating consumer group `group` (its offsets and rebalances)."""
    async with _metadata_client(settings, timeout_s) as client:
        return await asyncio.wait_for(_coordinator(client, group), timeout_s)


async def _coordinator(client: AIOKafkaClient, group: str) -> int:
    while True:
        try:
            return await client.coordinator_lookup(CoordinationType.GROUP, group)
        except KafkaError as exc:
            if not exc.retriable:  # e.g. the offsets topic is still being created, or its leader elected
                raise
        await asyncio.sleep(0.2)


async def _wait_for_metadata(settings: Settings, topics: list[str], timeout_s: float = 30.0) -> None:
    """Until every broker lists `topics` with a leader for each partition: a new topic reaches
    the brokers of a cluster a moment apart, and the next command may ask any of them."""
    async with _metadata_client(settings, timeout_s) as client:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            if await _every_broker_sees(client, topics):
                return
            await asyncio.sleep(0.2)
        raise TimeoutError(f"topics {topics} not visible on {settings.bootstrap} after {timeout_s}s")


async def _every_broker_sees(client: AIOKafkaClient, topics: list[str]) -> bool:
    for broker in (await client.fetch_all_metadata()).brokers():
        try:
            answer = await client.send(broker.nodeId, MetadataRequest(topics, allow_auto_topic_creation=False))
        except KafkaError:
            return False
        led = {t["topic"] for t in answer.to_object()["topics"]
               if t["error_code"] == 0 and t["partitions"] and all(p["leader"] >= 0 for p in t["partitions"])}
        if not set(topics) <= led:
            return False
    return True


async def record_limits(settings: Settings, topics: Iterable[str]) -> dict[str, int]:
    """The largest record batch, in bytes, a send to each topic can carry: the producer's
    max_request_size or the topic's max.message.bytes, whichever is smaller."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        wanted = [ConfigResource(ConfigResourceType.TOPIC, t, configs={"max.message.bytes": None}) for t in topics]
        limits = {}
        for response in await admin.describe_configs(wanted):
            for _error, _message, _type, name, entries, *_ in response.resources:
                limits[name] = min([MAX_REQUEST_BYTES, *(int(e[1]) for e in entries if e[0] == "max.message.bytes")])
        return limits
    finally:
        await admin.close()


def record_size(key: bytes | None, value: bytes | None) -> int:
    """The bytes one record takes on the wire in a batch of its own (what the broker compares
    with max.message.bytes)."""
    return DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, [])


@asynccontextmanager
async def producer(settings: Settings, max_batch_bytes: int | None = None):
    """acks=all + idempotence: a retried send never duplicates a record within a producer session.
    `max_batch_bytes`: the smallest record limit of the topics it sends to, so that a batch of
    records that each fit is never refused as a whole."""
    batch = min(256 * 1024, settings.topic_segment_bytes // 2) if settings.topic_segment_bytes else 256 * 1024
    prod = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=5,
        # Kafka refuses a batch larger than a segment; topics with small segments get small batches
        max_batch_size=min(batch, max_batch_bytes) if max_batch_bytes else batch,
        max_request_size=MAX_REQUEST_BYTES,
        compression_type=None,
    )
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


async def _partitions(consumer: AIOKafkaConsumer, settings: Settings, topic: str) -> list[TopicPartition]:
    cluster = await consumer._client.fetch_all_metadata()  # no public call returns partitions of a fresh consumer
    partitions = cluster.partitions_for_topic(topic)
    if not partitions:
        raise LookupError(f"topic {topic!r} does not exist on {settings.bootstrap}; run `lklab produce` first")
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def _log_offsets(settings: Settings, topic: str | None, *which: str) -> list[Offsets]:
    """Per partition offsets for each of `which` (beginning_offsets, end_offsets), one consumer."""
    topic = topic or settings.topic
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, request_timeout_ms=10_000)
    try:
        await consumer.start()
        parts = await _partitions(consumer, settings, topic)
        return [{tp.partition: offset for tp, offset in (await getattr(consumer, name)(parts)).items()} for name in which]
    finally:
        await consumer.stop()


async def end_offsets(settings: Settings, topic: str | None = None) -> Offsets:
    """Next offset to be written, per partition (the high watermark)."""
    return (await _log_offsets(settings, topic, "end_offsets"))[0]


def end_offsets_or_none(settings: Settings, timeout_s: float = 5.0) -> Offsets | None:
    """end_offsets read now, or None when Kafka does not answer in time (or the topic is missing):
    for readers that report lag as unknown instead of failing (health, freshness, status)."""
    try:
        return run(asyncio.wait_for(end_offsets(settings), timeout_s))
    except Exception:  # noqa: BLE001 - Kafka down or topic missing: lag unknown, the rest still answers
        return None


async def beginning_offsets(settings: Settings, topic: str | None = None) -> Offsets:
    """First offset still held, per partition (moves up as retention deletes segments)."""
    return (await _log_offsets(settings, topic, "beginning_offsets"))[0]


async def log_range(settings: Settings, topic: str | None = None) -> tuple[Offsets, Offsets]:
    """(first retained, next to be written) per partition, read together."""
    first, end = await _log_offsets(settings, topic, "beginning_offsets", "end_offsets")
    return first, end


async def set_retention_bytes(settings: Settings, retention_bytes: int, topic: str | None = None) -> None:
    """Size-based retention per partition: the broker deletes whole closed segments beyond it at
    its next retention check, which moves each partition's first retained offset up."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic or settings.topic,
                                                  configs={"retention.bytes": str(retention_bytes)})])
    finally:
        await admin.close()


async def delete_before(settings: Settings, offsets: Offsets, topic: str | None = None) -> Offsets:
    """Kafka's DeleteRecords: drop every record below `offsets[p]` (what retention does, at an
    exact offset). Returns the new first retained offsets."""
    topic = topic or settings.topic
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        done = await admin.delete_records({TopicPartition(topic, p): RecordsToDelete(before_offset=o) for p, o in offsets.items()})
        return {tp.partition: low for tp, low in done.items()}
    finally:
        await admin.close()


async def read_range(settings: Settings, start: Offsets, end: Offsets, topic: str | None = None) -> list[Record]:
    """Every record in [start, end) per partition, in partition/offset order."""
    topic = topic or settings.topic
    todo = {p: (start.get(p, 0), e) for p, e in end.items() if e > start.get(p, 0)}
    out: list[Record] = []
    if not todo:
        return out
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, p) for p in todo])
        for p, (s, _) in todo.items():
            consumer.seek(TopicPartition(topic, p), s)
        while todo:
            batches = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for tp, msgs in batches.items():
                stop_at = todo.get(tp.partition, (0, 0))[1]
                out.extend(
                    Record(m.partition, m.offset, m.timestamp, m.key, m.value) for m in msgs if m.offset < stop_at
                )
                if msgs and msgs[-1].offset + 1 >= stop_at:
                    todo.pop(tp.partition, None)
                    consumer.pause(tp)
    finally:
        await consumer.stop()
    return sorted(out, key=lambda r: (r.partition, r.offset))


def dlq_payload(reason: str, source: str, raw: bytes | str, max_bytes: int | None = None, consumer: str | None = None) -> bytes:
    """Dead-letter record: the original bytes (as text) with the one-line reason, where it came
    from and, from a consumer of the log, which one (its group). Bytes that are not UTF-8 are kept
    exactly in `raw_base64` beside a readable `raw`. When the whole line would not fit in
    `max_bytes`, `raw` keeps its first bytes (at most DLQ_PREVIEW_BYTES, fewer if still too large),
    `raw_bytes` gives the line's size and `raw_kept_bytes` how much of it was kept."""
    data = raw.encode("utf-8", errors="replace") if isinstance(raw, str) else raw
    letter = {"reason": reason, "source": source, **({"consumer": consumer} if consumer else {})}
    payload = _with_raw(letter, data)
    keep = min(len(data), DLQ_PREVIEW_BYTES)
    while max_bytes is not None and len(payload) > max_bytes:
        if keep == 0:
            raise ValueError(f"a dead letter for {source} does not fit in {max_bytes:,} bytes even without its line")
        kept = _prefix(data, keep)
        payload = _with_raw({**letter, "raw_bytes": len(data), "raw_kept_bytes": len(kept)}, kept)
        keep //= 2
    return payload


def dead_letter_budget(limit: int, key: bytes | None) -> int:
    """The largest dead-letter value a record of `limit` bytes with this key can carry: the value's
    length varint grows with it (up to 5 bytes), so keep that much headroom."""
    return limit - record_size(key, b"") - 5


def _with_raw(letter: dict, data: bytes) -> bytes:
    try:
        return _compact({**letter, "raw": data.decode("utf-8")})
    except UnicodeDecodeError:  # not text: a readable rendering, and the exact bytes
        return _compact({**letter, "raw": data.decode("utf-8", errors="replace"), "raw_base64": base64.b64encode(data).decode()})


def _prefix(data: bytes, keep: int) -> bytes:
    """The first `keep` bytes, never ending in half a character of UTF-8 text."""
    cut = data[:keep]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return cut  # not text: kept byte for byte (base64)
    return cut.decode("utf-8", errors="ignore").encode()


def _compact(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()
