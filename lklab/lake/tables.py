"""The lake: bronze (raw Kafka records with offsets), silver (typed, deduplicated), gold (views).

Pure Spark + Delta functions; the Dagster assets in assets/ call them.
"""
from __future__ import annotations

import copy
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from delta.tables import DeltaTable
from deltalake import DeltaTable as DeltaLog  # the log itself, read without Spark
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lklab import views
from lklab.views import measures
from lklab.core.config import Settings
from lklab.core import schemas
from lklab.core.events import EVENT_FIELDS, PAYMENT_TYPES, Event, EventType, as_utc, schema
from lklab.log.kafka_io import Offsets
from lklab.privacy import requests

BRONZE, SILVER, SILVER_REJECTS = "bronze/rides_events", "silver/rides_events", "silver/rides_events_rejects"


def path(settings: Settings, table: str) -> str:
    return f"{settings.lake_root.rstrip('/')}/{table}"


def exists(spark: SparkSession, location: str) -> bool:
    """Whether `location` holds a Delta table, from its log (delta-rs: no Spark job)."""
    return DeltaLog.is_deltatable(location)


def delta_version(spark: SparkSession, location: str) -> int:
    """The table's latest version, from its log (delta-rs: Spark's history() runs a job per call)."""
    return _log(location).version()


def _log(location: str) -> DeltaLog:
    return DeltaLog(location)


_PER_VERSION_LIMIT = 64
_per_version: dict[tuple[str, str, int], Any] = {}


def at_latest_version(spark: SparkSession, location: str, what: str, compute: Callable[[DataFrame], Any]) -> Any:
    """`compute` over the table as of its latest version, remembered per (what, location, version):
    the batch's gates and its promotion ask the same question of an unchanged table several times
    a run. The frame is pinned to that version, so a commit in between cannot mix two versions."""
    version = delta_version(spark, location)
    key = (what, location, version)
    if key not in _per_version:
        if len(_per_version) >= _PER_VERSION_LIMIT:
            _per_version.clear()
        _per_version[key] = compute(spark.read.format("delta").option("versionAsOf", version).load(location))
    return copy.deepcopy(_per_version[key])


# --- bronze -------------------------------------------------------------------------------

def read_kafka_range(spark: SparkSession, settings: Settings, start: Offsets, end: Offsets) -> DataFrame:
    """Exactly the records in [start, end) per partition, via Spark's Kafka source."""
    topic = settings.topic
    as_json = lambda offs: json.dumps({topic: {str(p): o for p, o in offs.items()}})  # noqa: E731
    return (
        spark.read.format("kafka")
        .option("kafka.bootstrap.servers", settings.bootstrap)
        .option("subscribe", topic)
        .option("startingOffsets", as_json({p: start.get(p, 0) for p in end}))
        .option("endingOffsets", as_json(end))
        .option("failOnDataLoss", "true")
        .load()
        .select(
            F.col("topic"),
            F.col("partition").cast("int").alias("partition"),
            F.col("offset").cast("long").alias("offset"),
            F.col("timestamp").alias("kafka_timestamp"),
            F.col("key").cast("string").alias("key"),
            F.col("value").cast("string").alias("value"),
        )
    )


def bronze_next_offsets(spark: SparkSession, settings: Settings) -> Offsets:
    """Per partition, the first offset bronze does not hold yet (0 for an empty lake)."""
    location = path(settings, BRONZE)
    if not exists(spark, location):
        return {}
    rows = (
        spark.read.format("delta").load(location)
        .where(F.col("topic") == settings.topic)
        .groupBy("partition").agg(F.max("offset").alias("last"))
        .collect()
    )
    return {r["partition"]: r["last"] + 1 for r in rows}


def bronze_offsets_held(spark: SparkSession, settings: Settings) -> dict[int, list[int]]:
    """Per partition, the [first, next) offset range held in bronze."""
    location = path(settings, BRONZE)
    if not exists(spark, location):
        return {}
    return at_latest_version(spark, location, "offsets held", _offsets_held)


def _offsets_held(bronze: DataFrame) -> dict[int, list[int]]:
    rows = bronze.groupBy("partition").agg(F.min("offset").alias("first"), F.max("offset").alias("last")).collect()
    return {r["partition"]: [r["first"], r["last"] + 1] for r in rows}


def append_bronze(spark: SparkSession, settings: Settings, start: Offsets, end: Offsets) -> int:
    """Append [start, end) to bronze; records already held (same topic/partition/offset) are
    skipped, so re-running a range adds nothing. Returns rows inserted."""
    records = read_kafka_range(spark, settings, start, end).withColumn("ingested_at", F.current_timestamp())
    location = path(settings, BRONZE)
    if not exists(spark, location):
        records.write.format("delta").partitionBy("partition").save(location)
        return spark.read.format("delta").load(location).count()
    (
        DeltaTable.forPath(spark, location).alias("b")
        .merge(records.alias("r"), "b.topic = r.topic AND b.partition = r.partition AND b.offset = r.offset")
        .whenNotMatchedInsertAll()
        .execute()
    )
    return merged_rows_inserted(spark, location)


def merged_rows_inserted(spark: SparkSession, location: str) -> int:
    """Rows the table's last commit (a MERGE) inserted, from the Delta log's operation metrics."""
    metrics = _log(location).history(1)[0].get("operationMetrics") or {}
    return int(metrics.get("numTargetRowsInserted", 0))


# --- silver -------------------------------------------------------------------------------

def _spark_type(annotation) -> T.DataType:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    base = args[0] if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union else annotation
    if base is int:
        return T.LongType()
    return T.StringType()  # str, enum and timestamps (parsed after, to keep bad values visible)


def event_struct() -> T.StructType:
    """Spark schema of the event JSON, derived from the one Event model."""
    hints = typing.get_type_hints(Event)
    return T.StructType([T.StructField(name, _spark_type(hints[name])) for name in EVENT_FIELDS])


def _rejection_reason() -> F.Column:
    """First schema-v1 rule a parsed row breaks, or null. Rules come from the JSON Schema/Event model."""
    e = F.col("e")
    checks = [(F.col("_json").isNull(), "malformed JSON")]
    checks += [(e[f].isNull(), f"field '{f}' missing or of the wrong type") for f in schema()["required"] if f != "driver_id"]
    checks += [
        (~e["event_type"].isin([t.value for t in EventType]), "unknown event_type"),
        (F.col("event_time").isNull(), "event_time is not an ISO-8601 timestamp with an offset (Z or ±HH:MM)"),
        (e["event_version"] < 1, "event_version below 1"),
        (e["event_type"].isin([t.value for t in PAYMENT_TYPES]) & (e["amount_cents"].isNull() | (e["amount_cents"] < 0)),
         "payment without a non-negative amount_cents"),
    ]
    checks += _later_version_checks()
    reason = F.lit(None).cast("string")
    for condition, text in reversed(checks):
        reason = F.when(condition, F.lit(text)).otherwise(reason)
    return reason


def _versions_lacking(field: str) -> list[int]:
    return [v for v, body in schemas.versions().items() if field not in body["properties"]]


def _later_version_checks() -> list[tuple[F.Column, str]]:
    """Schema v2's rules, for records that claim v2 or later (a v1 record's tip_cents and currency
    are unknown fields, ignored): the same rules the wire path checks (lklab.core.events)."""
    e, present = F.col("e"), F.expr("json_object_keys(value)")
    claims = lambda field: ~e["schema_version"].isin(_versions_lacking(field)) & F.array_contains(present, field)  # noqa: E731
    currency = schema()["properties"]["currency"]["pattern"]
    return [
        (claims("tip_cents") & e["tip_cents"].isNull(), "schema v2: field 'tip_cents' is not an integer"),
        (claims("tip_cents") & (e["tip_cents"] < 0), "schema v2: field 'tip_cents' is negative"),
        (claims("tip_cents") & (e["tip_cents"] != 0) & (e["event_type"] != EventType.PAYMENT_CAPTURED.value),
         "schema v2: field 'tip_cents' is only allowed on payment_captured events"),
        (claims("currency") & (e["currency"].isNull() | ~e["currency"].rlike(currency)),
         f"schema v2: field 'currency' does not match {currency}"),
    ]


def _with_defaults(name: str) -> F.Column:
    """A parsed field, or its default where the record's schema version does not have it (or,
    in a version that has it, where it is absent)."""
    default = schema()["properties"][name].get("default")
    column = F.col(f"e.{name}")
    if default is None:
        return column.alias(name)
    lacking = _versions_lacking(name)
    value = F.coalesce(column, F.lit(default))
    return (F.when(F.col("e.schema_version").isin(lacking), F.lit(default)).otherwise(value) if lacking else value).alias(name)


def parse_bronze(bronze: DataFrame) -> DataFrame:
    """Typed rows with a `reject_reason` column (null for valid events)."""
    parsed = bronze.withColumn("e", F.from_json("value", event_struct(), {"mode": "PERMISSIVE"}))
    parsed = parsed.withColumn("_json", F.try_parse_json("value"))
    parsed = parsed.withColumn("event_time", _event_time(F.col("e.event_time")))
    return parsed.withColumn("reject_reason", _rejection_reason()).drop("_json")


def dedup_latest(events: DataFrame) -> DataFrame:
    """Highest event_version per event_id; for equal versions the first delivered (lowest offset)."""
    order = Window.partitionBy("event_id").orderBy(F.desc("event_version"), F.asc("kafka_partition"), F.asc("kafka_offset"))
    return events.withColumn("_rank", F.row_number().over(order)).where("_rank = 1").drop("_rank")


@dataclass(frozen=True)
class SilverResult:
    rows: int
    rejected: int
    duplicates_removed: int


DateRange = measures.DateRange  # [first, end) in UTC event dates; None means every date


def _in_range(column: str, dates: DateRange | None) -> F.Column:
    if dates is None:
        return F.lit(True)
    return (F.col(column) >= F.lit(dates[0])) & (F.col(column) < F.lit(dates[1]))


def _replace_where(dates: DateRange | None) -> str | None:
    return None if dates is None else f"event_date >= '{dates[0].isoformat()}' AND event_date < '{dates[1].isoformat()}'"


def write_partitions(spark: SparkSession, frame: DataFrame, location: str, dates: DateRange | None) -> None:
    """Overwrite only the event_date partitions in `dates` (all of them when None): a rebuild or
    backfill of some days never touches the others."""
    # one task, so one file, per date: a gold date is a few MB, and each file is a task and a listing entry
    writer = frame.repartition("event_date").write.format("delta").mode("overwrite").partitionBy("event_date")
    predicate = _replace_where(dates)
    if predicate is None or not exists(spark, location):
        writer.option("overwriteSchema", "true").save(location)
    else:  # mergeSchema: columns a newer schema version adds join a table written before it (old files read them as null)
        writer.option("replaceWhere", predicate).option("mergeSchema", "true").save(location)


def event_dates(spark: SparkSession, settings: Settings, start: Offsets | None = None) -> list[date]:
    """Event dates that bronze records at or after `start` offsets (all records if None) change:
    their own dates, and the dates of every other version of the same event_ids, because a
    correction that moves an event to another day takes it out of the day the old version is in."""
    bronze = spark.read.format("delta").load(path(settings, BRONZE))
    event_id = F.get_json_object("value", "$.event_id")
    changed = bronze
    if start:
        newer = F.lit(False)
        for partition, offset in start.items():
            newer = newer | ((F.col("partition") == partition) & (F.col("offset") >= offset))
        known = F.col("partition").isin(list(start))
        new = bronze.where(newer | ~known)
        ids = new.select(event_id.alias("_id")).where(F.col("_id").isNotNull()).distinct()
        versions = bronze.withColumn("_id", event_id).join(ids, "_id", "left_semi").drop("_id")
        changed = new.unionByName(versions)
    day = F.to_date(_event_time(F.get_json_object("value", "$.event_time")))
    return sorted(r["d"] for r in changed.select(day.alias("d")).distinct().collect() if r["d"] is not None)


def _event_time(text: F.Column) -> F.Column:
    """An event_time string as a timestamp (UTC), or null unless it has the schema's form: Spark
    would read a time without an offset in the session zone, and ANSI mode would raise on garbage."""
    return F.when(text.rlike(schema()["properties"]["event_time"]["pattern"]), F.try_to_timestamp(text))


def valid_events(parsed: DataFrame) -> DataFrame:
    """Typed event rows (with their Kafka position and event_date) from parse_bronze's valid rows."""
    return parsed.where(F.col("reject_reason").isNull()).select(
        *[_with_defaults(name) for name in EVENT_FIELDS if name != "event_time"],
        F.col("event_time"),
        F.col("partition").alias("kafka_partition"),
        F.col("offset").alias("kafka_offset"),
    ).withColumn("event_date", F.to_date("event_time"))


def build_silver(spark: SparkSession, settings: Settings, dates: DateRange | None = None) -> SilverResult:
    """Rebuild silver (for `dates`, or all) from bronze: parse, quarantine what breaks the schema,
    dedup over all of bronze (so a correction that arrives days later still wins), then keep the
    requested event dates."""
    parsed = parse_bronze(spark.read.format("delta").load(path(settings, BRONZE))).cache()
    rejected = parsed.where(F.col("reject_reason").isNotNull())
    rejected.select("topic", "partition", "offset", "value", "reject_reason").write.format("delta").mode("overwrite").save(
        path(settings, SILVER_REJECTS)
    )
    valid = valid_events(parsed)
    latest = dedup_latest(valid).where(_in_range("event_date", dates))
    write_partitions(spark, latest, path(settings, SILVER), dates)
    delivered = valid.where(_in_range("event_date", dates)).count()
    rejected_count = rejected.count()
    parsed.unpersist()
    rows = spark.read.format("delta").load(path(settings, SILVER)).where(_in_range("event_date", dates)).count()
    return SilverResult(rows=rows, rejected=rejected_count, duplicates_removed=delivered - rows)


def silver_watermark(spark: SparkSession, settings: Settings) -> datetime | None:
    """The batch watermark: the slowest Kafka partition's latest event time in silver."""
    return at_latest_version(spark, path(settings, SILVER), "watermark", _watermark)


def _watermark(silver: DataFrame) -> datetime | None:
    maxima = silver.groupBy("kafka_partition").agg(F.max("event_time").alias("m")).collect()
    return views.watermark({r["kafka_partition"]: as_utc(r["m"]) for r in maxima})



# --- gold ---------------------------------------------------------------------------------

def gold_table(view_name: str) -> str:
    return f"gold/{view_name}"


def view_frame(silver: DataFrame, spec: views.ViewSpec) -> DataFrame:
    """A gold view from silver, by executing the view's one definition (its measure's Spark frame)."""
    return spec.measure.gold_frame(silver, spec)


def build_gold(spark: SparkSession, settings: Settings, spec: views.ViewSpec, dates: DateRange | None = None) -> int:
    """Rebuild one gold view from silver for `dates` (or all); returns the rows in that range.
    A view reads the silver dates its measure needs (windows never straddle a UTC date; a
    session may cross midnight) and writes only the `dates` partitions. A view keyed by the user
    leaves out the users in the tombstone list."""
    read = spec.measure.gold_input_dates(dates)
    silver = spark.read.format("delta").load(path(settings, SILVER)).where(_in_range("event_date", read))
    if spec.keyed_by_user and (gone := requests.tombstones(settings)):
        silver = silver.where(~F.col("user_id").isin(sorted(gone)))  # forgotten users never come back (lklab.privacy)
    frame = view_frame(silver, spec)
    if read != dates:
        frame = frame.where(_in_range("event_date", dates))
    location = path(settings, gold_table(spec.name))
    write_partitions(spark, frame, location, dates)
    return written_rows(location)


def written_rows(location: str) -> int:
    """The rows the table's latest commit wrote, from the commit's metrics (delta-rs reads the
    log; no Spark job counts them back). Its writes overwrite exactly the rows they return."""
    from deltalake import DeltaTable

    commit = DeltaTable(location).history(1)[0]
    metrics = commit.get("operationMetrics") or {}
    if commit.get("operation") != "WRITE" or "numOutputRows" not in metrics:
        raise RuntimeError(f"{location}: the latest commit is {commit.get('operation')} without numOutputRows, "
                           "not the write just made (another writer?)")
    return int(metrics["numOutputRows"])
