"""Bronze/silver/gold on a real Spark session with real Delta tables, fed from real Kafka."""
import pytest
from pyspark.sql import functions as F

from lklab.log import kafka_io
from lklab.lake import tables as lake
from lklab.lambda_arch import merge
from lklab.core import oracle
from lklab import views
from orchestration.launch import run_batch
from lklab.core.config import Settings
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import produce_events
from lklab.serving.store import make_engine

pytestmark = pytest.mark.integration


def test_the_session_takes_its_engine_options_from_settings(base_settings: Settings, spark) -> None:
    assert not base_settings.spark_codegen  # the tests' tiny tables: no code generation at all
    assert spark.conf.get("spark.sql.codegen.wholeStage") == "false"
    assert spark.conf.get("spark.sql.codegen.factoryMode") == "NO_CODEGEN"
    assert spark.conf.get("spark.sql.shuffle.partitions") == str(base_settings.spark_shuffle_partitions)
    assert base_settings.spark_java_options in spark.sparkContext.getConf().get("spark.driver.extraJavaOptions")


def test_a_question_asked_of_an_unchanged_table_is_answered_once_per_version(isolated: Settings, spark) -> None:
    location = str(isolated.home / "lake" / "memo")
    spark.range(3).write.format("delta").save(location)
    asked: list[int] = []

    def total(frame) -> int:
        asked.append(1)
        return frame.agg(F.sum("id")).collect()[0][0]

    assert lake.at_latest_version(spark, location, "total", total) == 0 + 1 + 2
    assert lake.at_latest_version(spark, location, "total", total) == 3 and len(asked) == 1  # same version: not asked again
    spark.range(10, 12).write.format("delta").mode("append").save(location)
    assert lake.delta_version(spark, location) == 1 and lake.exists(spark, location)
    assert lake.at_latest_version(spark, location, "total", total) == 3 + 10 + 11 and len(asked) == 2  # a new commit: asked again
    assert not lake.exists(spark, str(isolated.home / "lake" / "nothing"))


def test_bronze_is_idempotent_over_the_same_offset_range(isolated: Settings, spark) -> None:
    workload = generate(GeneratorConfig(seed=21, duration_s=120, rides_per_minute=20))
    produce_events(isolated, workload.deliveries)
    end = kafka_io.run(kafka_io.end_offsets(isolated))

    first = lake.append_bronze(spark, isolated, {}, end)
    again = lake.append_bronze(spark, isolated, {}, end)
    half = {p: o // 2 for p, o in end.items()}
    overlap = lake.append_bronze(spark, isolated, half, end)

    assert first == len(workload.deliveries) == sum(end.values())
    assert again == 0 and overlap == 0
    bronze = spark.read.format("delta").load(lake.path(isolated, lake.BRONZE))
    assert bronze.count() == first
    assert bronze.select("partition", "offset").distinct().count() == first
    assert lake.bronze_next_offsets(spark, isolated) == {p: o for p, o in end.items() if o > 0}


def test_silver_dedups_and_gold_equals_the_oracle(isolated: Settings, spark) -> None:
    workload = generate(GeneratorConfig(seed=22, duration_s=600, rides_per_minute=30))
    produce_events(isolated, workload.deliveries)
    end = kafka_io.run(kafka_io.end_offsets(isolated))
    lake.append_bronze(spark, isolated, {}, end)

    silver = lake.build_silver(spark, isolated)
    for spec in views.SPEED_LAYER.values():
        lake.build_gold(spark, isolated, spec)

    assert silver.rows == len(workload.truth) and silver.rejected == 0
    assert silver.duplicates_removed == len(workload.deliveries) - len(workload.truth)
    rows = spark.read.format("delta").load(lake.path(isolated, lake.SILVER)).select("event_id", "event_version", "amount_cents").collect()
    truth = {e.event_id: (e.event_version, e.amount_cents) for e in workload.truth}
    assert {r["event_id"]: (r["event_version"], r["amount_cents"]) for r in rows} == truth

    for name, spec in views.SPEED_LAYER.items():
        gold = spark.read.format("delta").load(lake.path(isolated, lake.gold_table(name)))
        actual = {(r[spec.entity], r["window_start"].replace(tzinfo=oracle_tz())): r[spec.value_column] for r in gold.collect()}
        comparison = oracle.compare(actual, oracle.for_view(name, workload.truth))
        assert comparison.equal, f"{name}: {comparison}"


def oracle_tz():
    from datetime import timezone

    return timezone.utc


def test_records_that_break_the_schema_are_quarantined_in_silver(isolated: Settings, spark) -> None:
    async def send_raw():
        async with kafka_io.producer(isolated) as producer:
            await producer.send(isolated.topic, key=b"r", value=b'{"event_id": "x"}')
            await producer.send(isolated.topic, key=b"r", value=b"not json")
            await producer.flush()

    kafka_io.run(send_raw())
    end = kafka_io.run(kafka_io.end_offsets(isolated))
    lake.append_bronze(spark, isolated, {}, end)
    result = lake.build_silver(spark, isolated)
    assert (result.rows, result.rejected) == (0, 2)
    reasons = {r["reject_reason"] for r in spark.read.format("delta").load(lake.path(isolated, lake.SILVER_REJECTS)).collect()}
    assert reasons == {"field 'event_version' missing or of the wrong type", "malformed JSON"}


def test_dagster_batch_promotes_a_build_whose_T_record_drives_the_merge(isolated: Settings, spark) -> None:
    workload = generate(GeneratorConfig(seed=23, duration_s=900, rides_per_minute=60))
    produce_events(isolated, workload.deliveries)
    end = kafka_io.run(kafka_io.end_offsets(isolated))

    result = run_batch(isolated)

    assert result.success
    answer = merge.query(make_engine(isolated), "revenue_per_minute")
    assert answer.T is not None and answer.build_id
    with make_engine(isolated).connect() as conn:
        from lklab.lambda_arch.builds import current_build

        build = current_build(conn)
    assert {p: r[1] for p, r in build.offsets.items()} == {p: o for p, o in end.items() if o > 0}
    assert build.validation["passed"] and build.status == "promoted"
    truth = oracle.revenue_per_minute(workload.truth)
    batch_rows = {(r.entity, r.window_start): r.value for r in answer.rows if r.source == "batch"}
    assert all(r.window_start < answer.T for r in answer.rows if r.source == "batch")
    assert oracle.compare(batch_rows, {k: v for k, v in truth.items() if k[1] < answer.T}).equal
    assert spark.read.format("delta").load(lake.path(isolated, lake.SILVER)).where(F.col("event_date").isNull()).count() == 0


def test_a_correction_that_moves_an_event_to_another_day_rebuilds_both_days(isolated: Settings, spark) -> None:
    """v1 lands on day D in one ingest; v2, moved across midnight to D+1, in the next. The second
    ingest must name D too, or D keeps the superseded v1 and gold counts the event twice."""
    from datetime import date, datetime, timezone

    from lklab.core.events import Event, EventType

    def capture(version: int, at: datetime, amount: int) -> Event:
        return Event("m-1-payment_captured", version, 1, EventType.PAYMENT_CAPTURED, at, "m-1", "u1", "d1", "são paulo", amount)

    v1 = capture(1, datetime(2026, 11, 16, 23, 59, 30, tzinfo=timezone.utc), 700)
    v2 = capture(2, datetime(2026, 11, 17, 0, 0, 40, tzinfo=timezone.utc), 650)
    produce_events(isolated, [v1])
    first_end = kafka_io.run(kafka_io.end_offsets(isolated))
    lake.append_bronze(spark, isolated, {}, first_end)
    assert lake.event_dates(spark, isolated) == [date(2026, 11, 16)]
    lake.build_silver(spark, isolated)

    produce_events(isolated, [v2])
    end = kafka_io.run(kafka_io.end_offsets(isolated))
    lake.append_bronze(spark, isolated, first_end, end)
    touched = lake.event_dates(spark, isolated, first_end)
    assert touched == [date(2026, 11, 16), date(2026, 11, 17)]
    lake.build_silver(spark, isolated, (touched[0], date(2026, 11, 18)))
    lake.build_gold(spark, isolated, views.VIEWS["revenue_per_minute"])
    gold = spark.read.format("delta").load(lake.path(isolated, lake.gold_table("revenue_per_minute")))
    actual = {(r["city"], r["window_start"].replace(tzinfo=oracle_tz())): r["revenue_cents"] for r in gold.collect()}
    assert actual == oracle.for_view("revenue_per_minute", [v1, v2])
