"""The two-tier log: Kafka holds the recent offsets, bronze (Delta) holds every offset it ever
ingested. A replay reads each partition's offsets below Kafka's first retained offset from bronze,
in offset order, and switches to Kafka exactly at that offset: no gap, no overlap. An offset that
neither tier holds is lost, and a replay that needs it refuses to start."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from lklab.core.config import Settings
from lklab.log.kafka_io import Offsets

BRONZE, KAFKA, LOST = "bronze", "kafka", "lost"
Runs = dict[int, list[tuple[int, int]]]  # partition -> contiguous [first, next) offset runs
READ_CHUNK = 50_000  # offsets per bronze read


@dataclass(frozen=True)
class TierRange:
    partition: int
    start: int
    end: int  # exclusive
    tier: str  # bronze | kafka | lost

    @property
    def records(self) -> int:
        return self.end - self.start


def plan_ranges(start: Offsets, target: Offsets, kafka_first: Offsets, bronze: Runs) -> list[TierRange]:
    """Split each partition's [start, target) by tier: below Kafka's first retained offset the
    bronze runs serve, the holes between them are lost; from that offset on, Kafka serves."""
    ranges: list[TierRange] = []
    for p in sorted(target):
        begin, end = start.get(p, 0), target[p]
        if begin >= end:
            continue
        cut = min(max(begin, kafka_first.get(p, 0)), end)
        pos = begin
        for first, nxt in sorted(bronze.get(p, [])):
            first, nxt = max(first, pos), min(nxt, cut)
            if first >= nxt:
                continue
            if first > pos:
                ranges.append(TierRange(p, pos, first, LOST))
            ranges.append(TierRange(p, first, nxt, BRONZE))
            pos = nxt
        if pos < cut:
            ranges.append(TierRange(p, pos, cut, LOST))
        if cut < end:
            ranges.append(TierRange(p, cut, end, KAFKA))
    return ranges


def needs_bronze(start: Offsets, target: Offsets, kafka_first: Offsets) -> Offsets:
    """Per partition, the offset below which Kafka no longer holds what the replay needs."""
    return {p: kafka_first.get(p, 0) for p in target if start.get(p, 0) < min(kafka_first.get(p, 0), target[p])}


def bronze_runs(spark, settings: Settings, below: Offsets) -> Runs:
    """The contiguous offset runs bronze holds per partition, for offsets under `below[p]`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from lklab.lake import tables as lake

    location = lake.path(settings, lake.BRONZE)
    if not below or not lake.exists(spark, location):
        return {}
    wanted = None
    for p, limit in below.items():
        cond = (F.col("partition") == p) & (F.col("offset") < limit)
        wanted = cond if wanted is None else wanted | cond
    held = (spark.read.format("delta").load(location).where((F.col("topic") == settings.topic) & wanted)
            .select("partition", "offset").distinct())
    runs = (held.withColumn("run", F.col("offset") - F.row_number().over(Window.partitionBy("partition").orderBy("offset")))
            .groupBy("partition", "run").agg(F.min("offset").alias("first"), F.max("offset").alias("last")).collect())
    out: Runs = {}
    for r in runs:
        out.setdefault(r["partition"], []).append((r["first"], r["last"] + 1))
    return {p: sorted(v) for p, v in out.items()}


def read_bronze(spark, settings: Settings, span: TierRange, chunk: int = READ_CHUNK) -> Iterator[list[tuple[int, int, bytes | None]]]:
    """The records of `span` from bronze as (partition, offset, value) in offset order, in chunks.
    Raises RuntimeError if bronze no longer holds every offset of the span."""
    from pyspark.sql import functions as F

    from lklab.lake import tables as lake

    bronze = spark.read.format("delta").load(lake.path(settings, lake.BRONZE))
    for first in range(span.start, span.end, chunk):
        nxt = min(first + chunk, span.end)
        rows = (bronze.where((F.col("topic") == settings.topic) & (F.col("partition") == span.partition)
                             & (F.col("offset") >= first) & (F.col("offset") < nxt))
                .select("offset", "value").orderBy("offset").toArrow().to_pylist())  # unique: bronze MERGEs on the offset
        if [r["offset"] for r in rows] != list(range(first, nxt)):  # the sink's offset fence needs every offset, in order
            raise RuntimeError(f"bronze {settings.topic}[{span.partition}] returned {len(rows)} of offsets [{first}, {nxt}) "
                               "or out of order: it changed since the plan")
        yield [(span.partition, r["offset"], None if r["value"] is None else r["value"].encode()) for r in rows]
