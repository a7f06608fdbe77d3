"""Schema evolution on the real stack: v1 and v2 events through `lklab produce`, the speed layer,
the batch layer (over a silver table written before v2 existed) and Kappa replays, against the
oracle of each revenue logic; and a year of mixed-version history that the current code must
read, from Kafka and from bronze, with one planted unreadable record it must name."""
from __future__ import annotations

import json
from datetime import date, datetime, timezone

import pytest
from pyspark.sql import functions as F
from typer.testing import CliRunner

from lklab import kappa, views
from lklab.cli import app
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.core.events import Event, EventType
from lklab.engine import dead_letters, snapshots
from lklab.engine.fold import ApplyStats, DeadLetter
from lklab.engine.sink import apply_records, read_view
from lklab.evolution import history
from lklab.kappa.cutover import history_check
from lklab.lake import reconcile
from lklab.lake import tables as lake
from lklab.log import kafka_io
from lklab.log.generator import GeneratorConfig, bad_lines, generate, wire_json, write_ledger
from lklab.log.produce import produce_events, produce_lines
from lklab.serving.store import make_engine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

MIDNIGHT = datetime(2026, 11, 18, tzinfo=timezone.utc)
# Day 1 was written before schema v2 existed; on day 2 half the producers are on v2.
BEFORE = GeneratorConfig(seed=71, start=datetime(2026, 11, 17, 23, 30, tzinfo=timezone.utc), duration_s=1200,
                         rides_per_minute=15, correction_shift_max_s=60, late_fraction=0)
AFTER = GeneratorConfig(seed=72, start=MIDNIGHT, duration_s=1200, rides_per_minute=15, correction_shift_max_s=60,
                        late_fraction=0, schema_v2_fraction=0.5, correction_fraction=0.3)
V2_BAD = [line for line, why in bad_lines() if why.startswith("schema v2")]


def _records(settings: Settings) -> list[tuple[int, int, bytes]]:
    first, end = kafka_io.run(kafka_io.log_range(settings))
    return [(r.partition, r.offset, r.value) for r in kafka_io.run(kafka_io.read_range(settings, first, end))]


def _gold(spark, settings: Settings, logic: int) -> dict:
    spec = views.spec_at("revenue_per_minute", logic)
    lake.build_gold(spark, settings, spec)
    rows = spark.read.format("delta").load(lake.path(settings, lake.gold_table(spec.name))).collect()
    return {(r["city"], r["window_start"].replace(tzinfo=timezone.utc)): r["revenue_cents"] for r in rows}


def _v1_with_v2_fields() -> tuple[Event, str]:
    """A v1 capture whose producer also wrote tip_cents and currency: unknown fields in v1, ignored."""
    event = Event("v1-tipped", 1, 1, EventType.PAYMENT_CAPTURED, MIDNIGHT.replace(minute=5), "v1-tipped-ride", "u00001",
                  "d0001", "berlin", 1000)
    line = json.loads(event.to_json())
    return event, json.dumps({**line, "tip_cents": 999, "currency": "XXX"})


def test_v1_and_v2_through_produce_speed_batch_and_replay(isolated: Settings, spark) -> None:
    settings = isolated.model_copy(update={"allowed_lateness_s": 30 * 86_400})  # no window closes: every row compares
    before, after = generate(BEFORE), generate(AFTER)
    tipped_v1, tipped_line = _v1_with_v2_fields()
    truth = before.truth + after.truth + [tipped_v1]
    engine = make_engine(settings)
    write_ledger(engine, truth)
    with_tips, without = (oracle.for_view("revenue_per_minute", truth, logic) for logic in (2, 1))
    assert with_tips != without  # the two logics differ here, so each comparison below can fail

    # Day 1: produced and built into silver by a writer that predates v2 (no tip_cents, no currency).
    assert produce_events(settings, before.deliveries).dead_lettered == 0
    lake.append_bronze(spark, settings, {}, kafka_io.run(kafka_io.end_offsets(settings)))
    old = lake.dedup_latest(lake.valid_events(lake.parse_bronze(spark.read.format("delta").load(lake.path(settings, lake.BRONZE)))))
    lake.write_partitions(spark, old.drop("tip_cents", "currency"), lake.path(settings, lake.SILVER), None)
    assert "tip_cents" not in spark.read.format("delta").load(lake.path(settings, lake.SILVER)).columns

    # Day 2: v1 and v2 lines through `lklab produce`; lines that claim v2 but break it are dead-lettered.
    mid = kafka_io.run(kafka_io.end_offsets(settings))
    report = kafka_io.run(produce_lines(settings, [wire_json(e) for e in after.deliveries] + V2_BAD, "day2.jsonl"))
    assert (report.accepted, report.dead_lettered) == (len(after.deliveries), len(V2_BAD))
    kafka_io.run(_send_raw(settings, tipped_line.encode()))  # `lklab produce` would re-serialise it as v1: no tip
    assert all("schema v2" in reason for reason in report.reasons)

    # Lambda batch: only day 2 is rebuilt (the new columns join the old table), then gold with each logic.
    lake.append_bronze(spark, settings, mid, kafka_io.run(kafka_io.end_offsets(settings)))
    lake.build_silver(spark, settings, (MIDNIGHT.date(), date(2026, 11, 19)))
    silver = spark.read.format("delta").load(lake.path(settings, lake.SILVER))
    assert silver.where(F.col("event_date") < MIDNIGHT.date()).where(F.col("tip_cents").isNotNull()).count() == 0
    gold_v2 = _gold(spark, settings, 2)
    assert oracle.compare(gold_v2, with_tips).equal, str(oracle.compare(gold_v2, with_tips))
    assert oracle.compare(_gold(spark, settings, 1), without).equal
    per_day: dict = {}
    for (_, window), value in gold_v2.items():
        per_day[window.date()] = per_day.get(window.date(), 0) + value
    far = datetime(2026, 12, 31, tzinfo=timezone.utc)  # every day closed
    assert reconcile.compare_to_ledger(engine, settings, per_day, None, far, revenue_tips=True).passed
    assert not reconcile.compare_to_ledger(engine, settings, per_day, None, far, revenue_tips=False).passed

    # Speed layer with LKLAB_REVENUE_LOGIC=2, straight from the log.
    speed_settings = settings.model_copy(update={"revenue_logic": 2})
    records = _records(settings)
    for start in range(0, len(records), 400):
        apply_records(engine, speed_settings, settings.topic, records[start:start + 400])
    speed = {(r.entity, r.window_start): r.value for r in read_view(engine, "revenue_per_minute")}
    assert oracle.compare(speed, with_tips).equal, str(oracle.compare(speed, with_tips))

    # Kappa: v2 replays the mixed history with tips; v1 without.
    for version, expected in ((2, with_tips), (1, without)):
        kappa.replay(settings, engine, "revenue_per_minute", version)
        rows = kappa.read_output(engine, "revenue_per_minute", kappa.output_name("revenue_per_minute", version))
        result = oracle.compare({(e, w): v for e, w, v in rows}, expected)
        assert result.equal, f"v{version}: {result}"
    # v1's state ignores tips: a snapshot of it cannot seed v2 once tipped events precede it.
    snapshots.take(settings, engine, spark, "revenue_per_minute", kappa.spec_for("revenue_per_minute", 1),
                   kappa.replay_scope("revenue_per_minute", 1))
    with pytest.raises(kappa.ReplayError, match="events before its offsets set them"):
        kappa.replay(settings, engine, "revenue_per_minute", 3, snapshot="latest", spark=spark)
    engine.dispose()


YEAR = GeneratorConfig(seed=73, start=datetime(2025, 12, 1, tzinfo=timezone.utc), duration_s=365 * 86_400,
                       rides_per_minute=0.002, schema_v2_fraction=0.5)
PLANTED = b'{"event_id": "planted", "schema_version": 2, "tip_cents": "a lot"'


def test_a_year_of_mixed_history_is_readable_and_a_planted_record_is_named(isolated: Settings, spark) -> None:
    settings = isolated
    year = generate(YEAR)
    assert len({(e.event_time.year, e.event_time.month) for e in year.truth}) >= 12
    assert produce_events(settings, year.deliveries).dead_lettered == 0
    end = kafka_io.run(kafka_io.end_offsets(settings))
    lake.append_bronze(spark, settings, {}, end)
    # Retention: Kafka drops the first half of every partition; only bronze still holds it.
    kafka_io.run(kafka_io.delete_before(settings, {p: o // 2 for p, o in end.items()}))
    sent = kafka_io.run(_send_raw(settings, PLANTED))  # a producer that bypassed the check, after the last ingest

    report = history.verify_history(settings)
    total = sum(end.values()) + 1
    assert report.records == total and report.bronze_records == sum(end.values())
    assert report.kafka_records == total - sum(o // 2 for o in end.values())
    assert set(report.by_version) == {1, 2} and sum(report.by_version.values()) == total - 1
    assert report.defaulted["tip_cents"] == report.by_version[1]
    assert [(u.partition, u.offset, u.tiers) for u in report.unreadable] == [(sent.partition, sent.offset, ("kafka",))]
    assert not report.readable and "malformed JSON" in report.unreadable[0].reason

    # The cutover gate: logic that reads tip_cents is refused; logic that reads nothing new is not held up.
    refused = history_check(settings, views.spec_at("revenue_per_minute", 2))
    assert not refused.passed and any(f"offset {sent.offset}" in line for line in refused.lines)
    assert history_check(settings, views.spec_at("revenue_per_minute", 1)).passed

    cli = CliRunner().invoke(app, ["schema", "verify-history"], env=settings.to_env())
    assert cli.exit_code == 1, cli.output
    assert f"kafka partition {sent.partition} offset {sent.offset}: malformed JSON" in cli.stdout

    # Once a consumer dead-lettered it on arrival, it was never part of any view: it no longer blocks.
    stats = ApplyStats(topic=settings.topic, dead_letters=[DeadLetter("malformed JSON", sent.partition, sent.offset, PLANTED)])
    dead_letters.send(settings, stats, "lklab-speed-test")
    again = history.verify_history(settings)
    assert again.readable and again.unreadable[0].dead_lettered
    assert CliRunner().invoke(app, ["schema", "verify-history"], env=settings.to_env()).exit_code == 0


async def _send_raw(settings: Settings, value: bytes):
    async with kafka_io.producer(settings) as producer:
        return await producer.send_and_wait(settings.topic, key=b"foreign", value=value)


DAY = GeneratorConfig(seed=74, start=datetime(2026, 11, 20, 10, tzinfo=timezone.utc), duration_s=600, rides_per_minute=10,
                      schema_v2_fraction=0.5, late_fraction=0)


def test_a_lambda_backfill_with_tips_waits_for_a_readable_history(isolated: Settings) -> None:
    """`LKLAB_REVENUE_LOGIC=2 lklab batch` through Dagster: the blocking check history_readable
    stops the run while the log holds a record nothing has dead-lettered, and lets the next one
    promote once a consumer has; the promoted build counts tips, as the oracle of logic v2 does."""
    from lklab.lambda_arch.builds import current_build
    from orchestration.launch import run_batch

    settings = isolated.model_copy(update={"revenue_logic": 2, "batch_views": ["revenue_per_minute"]})
    workload = generate(DAY)
    engine = make_engine(settings)
    write_ledger(engine, workload.truth)
    assert produce_events(settings, workload.deliveries).dead_lettered == 0
    sent = kafka_io.run(_send_raw(settings, PLANTED))

    blocked = run_batch(settings)
    assert not blocked.success and any("history_readable" in gate for gate in blocked.failed_gates), blocked.failed_gates
    assert any(f"offset {sent.offset}" in gate for gate in blocked.failed_gates), blocked.failed_gates

    stats = ApplyStats(topic=settings.topic, dead_letters=[DeadLetter("malformed JSON", sent.partition, sent.offset, PLANTED)])
    dead_letters.send(settings, stats, settings.speed_group)
    promoted = run_batch(settings)
    assert promoted.success, f"{promoted.message}: {promoted.failed_gates}"
    spec = views.spec_at("revenue_per_minute", 2)
    with engine.connect() as conn:
        build = current_build(conn)
        served = {(e, w): v for e, w, v in conn.execute(spec.measure.batch_query(spec, build.build_id, None))}
    result = oracle.compare(served, oracle.for_view("revenue_per_minute", workload.truth, logic_version=2))
    assert result.equal, str(result)
    engine.dispose()
