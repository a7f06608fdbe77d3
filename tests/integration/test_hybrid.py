"""The hybrid snapshot-plus-replay design on real services: Delta snapshots of Kappa state that a
replay starts from, the two-tier log (bronze below Kafka's retention, Kafka above it), the replay
pre-flight plan, and refusals that write nothing."""
from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, update
from typer.testing import CliRunner

from expectations.runner import run_suite
from lklab.hybrid import audit
from lklab.lambda_arch import promote as batch
from orchestration.launch import dagster_instance
from lklab.log import kafka_io
from lklab import kappa
from lklab.lake import tables as lake
from lklab.core import oracle
from lklab.engine import snapshots
from lklab.lake import tiers
from lklab import views
from lklab.kappa import cutover as co
from lklab.kappa.query import query as kappa_query
from lklab.cli import app
from lklab.core.config import Settings
from lklab.log.generator import GeneratorConfig, generate, write_ledger
from lklab.log.produce import produce_events
from lklab.engine.sink import load_versions
from lklab.serving.store import (
    batch_view_rows,
    held_chunks,
    kappa_builds,
    make_engine,
    speed_contrib,
    speed_progress,
    view_snapshots,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ACROSS_MIDNIGHT = datetime(2026, 11, 17, 23, 50, tzinfo=timezone.utc)  # the first half crosses midnight: v1's bug shows


@pytest.fixture
def split(isolated: Settings):
    """One workload produced in two halves by arrival: the second half holds late events,
    duplicates and corrections of events in the first, so a snapshot between them is tested."""
    workload = generate(GeneratorConfig(seed=71, start=ACROSS_MIDNIGHT, duration_s=1800, rides_per_minute=40,
                                        late_fraction=0.02, correction_fraction=0.2, duplicate_fraction=0.05))
    engine = make_engine(isolated)
    write_ledger(engine, workload.truth)
    half = len(workload.deliveries) // 2
    produce_events(isolated, workload.deliveries[:half])
    return isolated, engine, workload


def as_map(rows) -> dict:
    return {(e, w): v for e, w, v in rows}


def output(engine, view: str, version: int) -> dict:
    return as_map(kappa.read_output(engine, view, kappa.output_name(view, version)))


def batch_rows(engine, build_id: str, view: str) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(batch_view_rows).where(batch_view_rows.c.build_id == build_id,
                                                                              batch_view_rows.c.view == view)).mappings()]


def dedup_state(engine, view: str, version: int) -> dict[str, int]:
    with engine.connect() as conn:
        return load_versions(conn, kappa.replay_scope(view, version))


def nothing_written(engine, view: str, version: int) -> bool:
    name, scope = kappa.output_name(view, version), kappa.replay_scope(view, version)
    with engine.connect() as conn:
        return (conn.execute(select(speed_progress).where(speed_progress.c.scope == scope)).first() is None
                and conn.execute(select(speed_contrib).where(speed_contrib.c.view == name)).first() is None
                and conn.execute(select(held_chunks).where(held_chunks.c.scope == scope)).first() is None
                and conn.execute(select(kappa_builds).where(kappa_builds.c.output == name)).first() is None)


def test_snapshot_plus_replay_equals_full_replay_and_the_oracle(split, spark) -> None:
    settings, engine, workload = split
    for view in ("revenue_per_minute", "daily_active_users", "user_sessions"):
        kappa.replay(settings, engine, view, 1)
    taken = {view: snapshots.take(settings, engine, spark, view, kappa.spec_for(view, 1), kappa.replay_scope(view, 1))
             for view in ("revenue_per_minute", "daily_active_users", "user_sessions")}
    first_half = workload.deliveries[:len(workload.deliveries) // 2]
    assert views.spec_at("user_sessions", 1).evaluate(first_half) != views.spec_at("user_sessions", 2).evaluate(first_half)  # the migration matters
    produce_events(settings, workload.deliveries[len(workload.deliveries) // 2:])

    for view, snap in taken.items():  # the catalog's checksum is Spark's own: snapshots written before delta-rs read them load
        assert snap.checksum == spark_checksum(spark, snap, kappa.spec_for(view, 1))
    for view, snap in taken.items():
        v1_target = kappa.build_record(engine, f"{view}__v1")["target_offsets"]
        assert snap.offsets == {int(p): o for p, o in v1_target.items()}
        assert sum(snap.offsets.values()) == len(workload.deliveries) // 2 and snap.row_counts["output"] > 0
        resumed = kappa.replay(settings, engine, view, 2, snapshot="latest")  # delta-rs reads it: no Spark needed
        full = kappa.replay(settings, engine, view, 3)
        assert resumed.snapshot_id == snap.snapshot_id and resumed.start_offsets == snap.offsets
        assert resumed.events == len(workload.deliveries) - len(workload.deliveries) // 2  # only what came after
        assert full.events == len(workload.deliveries)
        assert output(engine, view, 2) == output(engine, view, 3)
        assert dedup_state(engine, view, 2) == dedup_state(engine, view, 3) != {}  # the snapshot carried the dedup state
        if view == "user_sessions":  # v1 → v2 went through the declared migration (the midnight fix)
            truth = oracle.user_sessions(workload.truth)
            assert output(engine, view, 2) == truth != views.spec_at("user_sessions", 1).evaluate(workload.truth)
        else:
            assert oracle.compare(output(engine, view, 2), oracle.for_view(view, workload.truth)).equal
        assert kappa.build_record(engine, f"{view}__v2")["snapshot_id"] == snap.snapshot_id
    # a replay from a snapshot resumes like any other: a second run reads nothing new
    assert kappa.replay(settings, engine, "revenue_per_minute", 2, snapshot="latest").events == 0
    assert [s.snapshot_id for s in snapshots.listing(engine, "revenue_per_minute")] == [taken["revenue_per_minute"].snapshot_id]

    # no migration is declared from sessions logic 2 back to 1: refused, whatever the target holds
    back = snapshots.take(settings, engine, spark, "user_sessions", kappa.spec_for("user_sessions", 3),
                          kappa.replay_scope("user_sessions", 3))
    with pytest.raises(kappa.ReplayError, match="logic version 2, the replay needs 1.*no user_sessions migration 2→1"):
        kappa.replay(settings, engine, "user_sessions", 1, snapshot=back.snapshot_id, spark=spark)


def spark_checksum(spark, snap: snapshots.Snapshot, spec) -> str:
    """The checksum as Spark computes it over the pieces as written: per piece, the row count and
    the decimal sum of xxhash64 over every column (how snapshots were verified before delta-rs)."""
    from pyspark.sql import functions as F

    digests = {}
    for piece in snapshots.pieces(spec):
        frame = spark.read.format("delta").option("versionAsOf", snap.delta_versions[piece.name]).load(snap.piece_location(piece.name))
        row = frame.agg(F.count(F.lit(1)).alias("n"),
                        F.coalesce(F.sum(F.xxhash64(*frame.columns).cast("decimal(38,0)")), F.lit(0)).alias("h")).collect()[0]
        digests[piece.name] = [int(row["n"]), str(int(row["h"]))]
    meta = {"view": snap.view, "logic_version": snap.logic_version, "schema_version": snap.schema_version, "topic": snap.topic,
            "offsets": {str(p): o for p, o in sorted(snap.offsets.items())}}
    return snapshots.checksum(meta, digests)


def test_the_arrow_hash_is_sparks_xxhash64_bit_for_bit(spark) -> None:
    """Unicode and empty strings, every length class of XXH64 (0-3, 4-7, 8-31, 32+ bytes), nulls in
    any column, extreme longs and timestamps before 1970."""
    import random

    import pyarrow as pa
    from pyspark.sql import functions as F

    from lklab.engine.spark_hash import exact_sum, xxhash64

    rng = random.Random(5)
    alphabet = "aZ09-_ éü日本語🚕\u0000"
    text = lambda: None if rng.random() < 0.1 else "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 70)))  # noqa: E731
    moments = [None, datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc), datetime(2026, 3, 1, tzinfo=timezone.utc)]
    rows = [{"entity": text(), "amount": rng.choice([None, 0, -1, 2**63 - 1, -2**63, rng.randint(-10**12, 10**12)]),
             "window_start": rng.choice(moments), "member": text()} for _ in range(2000)]
    table = pa.Table.from_pylist(rows, schema=pa.schema([("entity", pa.string()), ("amount", pa.int64()),
                                                         ("window_start", pa.timestamp("us", tz="UTC")), ("member", pa.string())]))
    frame = spark.createDataFrame(table)
    theirs = frame.select(F.xxhash64(*frame.columns).alias("h")).toArrow().column("h").to_pylist()
    assert xxhash64(table).tolist() == theirs
    assert exact_sum(xxhash64(table)) == int(frame.agg(F.sum(F.xxhash64(*frame.columns).cast("decimal(38,0)"))).collect()[0][0])


def test_a_snapshot_written_before_event_times_were_kept_still_loads(split, spark, monkeypatch) -> None:
    """A snapshot whose dedup state has no event times (as every snapshot before the correction
    horizon): it verifies against its own checksum, and a replay from it equals a full replay."""
    import dataclasses

    import pyarrow as pa
    from deltalake import DeltaTable

    settings, engine, workload = split
    view = "revenue_per_minute"
    kappa.replay(settings, engine, view, 1)
    current = snapshots.pieces

    def before_horizon(spec):
        old = dataclasses.replace(
            next(p for p in current(spec) if p.name == "event_state"),
            schema=pa.schema([("event_id", pa.string()), ("event_version", pa.int64())]),
            read=lambda conn, _o, scope, _t: list(load_versions(conn, scope).items()))
        return [old if p.name == "event_state" else p for p in current(spec)]

    monkeypatch.setattr(snapshots, "pieces", before_horizon)
    old = snapshots.take(settings, engine, spark, view, kappa.spec_for(view, 1), kappa.replay_scope(view, 1))
    monkeypatch.undo()
    assert DeltaTable(old.piece_location("event_state")).schema().to_arrow().names == ["event_id", "event_version"]
    assert old.checksum == spark_checksum(spark, old, kappa.spec_for(view, 1))
    produce_events(settings, workload.deliveries[len(workload.deliveries) // 2:])
    assert kappa.replay(settings, engine, view, 2, snapshot=old.snapshot_id).snapshot_id == old.snapshot_id
    kappa.replay(settings, engine, view, 3)
    assert output(engine, view, 2) == output(engine, view, 3)
    assert oracle.compare(output(engine, view, 2), oracle.for_view(view, workload.truth)).equal
    assert dedup_state(engine, view, 2) == dedup_state(engine, view, 3)


def _flip_bytes(table_dir: str) -> Path:
    """XOR the data region (between the magic header and the footer) of the table's first
    Parquet file: whatever Spark then does, it cannot read back the same content."""
    target = sorted(Path(table_dir).glob("*.parquet"))[0]
    raw = bytearray(target.read_bytes())
    footer = int.from_bytes(raw[-8:-4], "little")
    for i in range(4, len(raw) - 8 - footer, 7):
        raw[i] ^= 0xFF
    target.write_bytes(bytes(raw))
    return target


def test_a_corrupted_snapshot_is_refused_and_nothing_is_written(split, spark) -> None:
    settings, engine, _ = split
    kappa.replay(settings, engine, "driver_earnings_daily", 1)
    spec, scope = kappa.spec_for("driver_earnings_daily", 1), kappa.replay_scope("driver_earnings_daily", 1)
    good = snapshots.take(settings, engine, spark, "driver_earnings_daily", spec, scope)
    wrong = snapshots.take(settings, engine, spark, "driver_earnings_daily", spec, scope)
    with engine.begin() as conn:
        conn.execute(update(view_snapshots).where(view_snapshots.c.snapshot_id == wrong.snapshot_id)
                     .values(checksum="0" * 64))
    with pytest.raises(kappa.ReplayError, match=f"snapshot {wrong.snapshot_id}: checksum mismatch"):
        kappa.replay(settings, engine, "driver_earnings_daily", 2, snapshot=wrong.snapshot_id, spark=spark)
    assert nothing_written(engine, "driver_earnings_daily", 2)

    _flip_bytes(good.piece_location("contrib"))
    with pytest.raises(kappa.ReplayError, match=f"snapshot {good.snapshot_id}: (checksum mismatch|piece contrib is unreadable)"):
        kappa.replay(settings, engine, "driver_earnings_daily", 2, snapshot=good.snapshot_id, spark=spark)
    assert nothing_written(engine, "driver_earnings_daily", 2)


def test_a_replay_across_the_retention_gap_equals_unlimited_retention(split, spark) -> None:
    settings, engine, workload = split
    produce_events(settings, workload.deliveries[len(workload.deliveries) // 2:])
    end = kafka_io.run(kafka_io.end_offsets(settings))
    lake.append_bronze(spark, settings, {}, end)
    unlimited = kappa.replay(settings, engine, "revenue_per_minute", 1)

    cut = {p: o // 3 + p for p, o in end.items()}  # retention drops the oldest third (a different offset per partition)
    assert kafka_io.run(kafka_io.delete_before(settings, cut)) == cut
    the_plan = kappa.plan(settings, engine, "revenue_per_minute", 2, spark=spark)
    assert the_plan.lost == []
    assert [(r.partition, r.start, r.end, r.tier) for r in the_plan.ranges] == [
        x for p in sorted(end) for x in ((p, 0, cut[p], tiers.BRONZE), (p, cut[p], end[p], tiers.KAFKA))]

    across = kappa.replay(settings, engine, "revenue_per_minute", 2, spark=spark)
    assert across.tiers == {tiers.BRONZE: sum(cut.values()), tiers.KAFKA: sum(end.values()) - sum(cut.values())}
    assert across.events == unlimited.events == len(workload.deliveries)
    assert output(engine, "revenue_per_minute", 2) == output(engine, "revenue_per_minute", 1)
    assert oracle.compare(output(engine, "revenue_per_minute", 2), oracle.for_view("revenue_per_minute", workload.truth)).equal

    # retention moves on while a replay runs (after its plan, before its Kafka phase): it must not
    # skip to Kafka's new first offset; it plans again and reads the newly dropped range from bronze
    later = {p: (2 * o) // 3 for p, o in end.items()}
    hits = []

    def retention_strikes(progress) -> None:
        if not hits:
            hits.append(kafka_io.run(kafka_io.delete_before(settings, later)))

    raced = kappa.replay(settings, engine, "revenue_per_minute", 3, spark=spark, on_progress=retention_strikes)
    assert hits == [later] and raced.tiers == {tiers.BRONZE: sum(later.values()), tiers.KAFKA: sum(end.values()) - sum(later.values())}
    assert output(engine, "revenue_per_minute", 3) == output(engine, "revenue_per_minute", 1)


def test_a_targeted_repair_reads_what_retention_dropped_from_bronze(split, spark) -> None:
    """A replay with a one-minute horizon refuses late records; retention then drops the first
    half of each partition from Kafka; `kappa repair` reads that half from bronze (every pass),
    the rest from Kafka, and the output equals the oracle."""
    from lklab.kappa.repair import repair

    settings, engine, workload = split
    produce_events(settings, workload.deliveries[len(workload.deliveries) // 2:])
    end = kafka_io.run(kafka_io.end_offsets(settings))
    lake.append_bronze(spark, settings, {}, end)
    short = settings.model_copy(update={"correction_horizon_s": 60})
    truth = oracle.for_view("revenue_per_minute", workload.truth)
    refused = kappa.replay(short, engine, "revenue_per_minute", 1)
    assert refused.beyond_horizon > 0 and not oracle.compare(output(engine, "revenue_per_minute", 1), truth).equal

    cut = {p: o // 2 for p, o in end.items()}
    assert kafka_io.run(kafka_io.delete_before(settings, cut)) == cut
    fixed = repair(short, engine, "revenue_per_minute", 1, spark=spark)
    passes = fixed.tiers[tiers.BRONZE] // sum(cut.values())
    assert passes >= 3 and fixed.tiers == {tiers.BRONZE: passes * sum(cut.values()),
                                           tiers.KAFKA: passes * (sum(end.values()) - sum(cut.values()))}
    assert oracle.compare(output(engine, "revenue_per_minute", 1), truth).equal


def test_the_plan_reports_a_range_lost_from_both_tiers_and_the_replay_refuses(split, spark) -> None:
    settings, engine, _ = split
    end = kafka_io.run(kafka_io.end_offsets(settings))
    ingested = {p: o // 4 for p, o in end.items()}  # bronze stopped early (say the nightly ingest failed)...
    lake.append_bronze(spark, settings, {}, ingested)
    retained = {p: o // 2 for p, o in end.items()}  # ...and retention has since passed it
    kafka_io.run(kafka_io.delete_before(settings, retained))

    the_plan = kappa.plan(settings, engine, "daily_active_users", 1, spark=spark)
    assert [(r.partition, r.start, r.end) for r in the_plan.lost] == [(p, ingested[p], retained[p]) for p in sorted(end)]
    assert the_plan.records(tiers.BRONZE) == sum(ingested.values())
    assert the_plan.records(tiers.KAFKA) == sum(end.values()) - sum(retained.values())
    with pytest.raises(kappa.ReplayError, match="lost from both tiers"):
        kappa.replay(settings, engine, "daily_active_users", 1, spark=spark)
    assert nothing_written(engine, "daily_active_users", 1)

    # the CLI pre-flight prints the plan and exits 2 on the lost range, changing nothing
    shown = CliRunner().invoke(app, ["replay", "daily_active_users", "--version", "1", "--plan"], env=settings.to_env())
    assert shown.exit_code == 2 and "LOST" in shown.stdout and "snapshot: none" in shown.stdout
    assert f"{the_plan.records(tiers.LOST)} records needed by daily_active_users__v1 are lost from both tiers" in shown.stderr
    assert nothing_written(engine, "daily_active_users", 1)

    # a start above the lost range needs neither the lost offsets nor bronze
    later = kappa.plan(settings, engine, "daily_active_users", 1, start=retained, spark=spark)
    assert later.lost == [] and later.records() == later.records(tiers.KAFKA)


def _changed(before: dict, after: dict, keep=lambda key: True) -> tuple:
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k] and keep(k))
    assert changed, "the workload must change some published value, or this test proves nothing"
    return changed[0]


def test_audit_as_of_returns_what_kappa_served_before_a_later_cutover(split, spark) -> None:
    settings, engine, workload = split
    view = "driver_earnings_daily"
    assert kappa_query(engine, view).target is None
    kappa.replay(settings, engine, view, 1)
    assert co.cutover(settings, engine, view, 1, "first publication", spark=spark, run_suite=run_suite).swapped
    published_v1, between = output(engine, view, 1), datetime.now(timezone.utc)
    time.sleep(0.05)

    produce_events(settings, workload.deliveries[len(workload.deliveries) // 2:])
    kappa.replay(settings, engine, view, 1)  # v1 keeps consuming: the serving rows move in place...
    kappa.replay(settings, engine, view, 2)
    assert co.cutover(settings, engine, view, 2, "second half", tolerance_pct=100, spark=spark, run_suite=run_suite).swapped
    key, window = _changed(published_v1, output(engine, view, 2))

    then = audit.answer(settings, engine, spark, view, key, window, between, arch="kappa")
    assert then.value == published_v1[(key, window)] != output(engine, view, 1)[(key, window)]  # ...the audit does not
    assert then.publish["target"] == f"{view}__v1" and then.publish["action"] == "cutover"
    assert sum(then.lineage["offsets"].values()) == len(workload.deliveries) // 2  # what v1 had consumed when published
    shown = CliRunner().invoke(app, ["audit", view, "--key", key, "--window", window.isoformat(), "--as-of", between.isoformat(),
                                     "--arch", "kappa", "--json"], env=settings.to_env())
    body = json.loads(shown.stdout)
    assert shown.exit_code == 0 and body["value"] == then.value and body["publish"]["target"] == f"{view}__v1"
    listed = CliRunner().invoke(app, ["snapshot", "list", view], env={**settings.to_env(), "COLUMNS": "250"})
    assert listed.exit_code == 0 and then.publish["snapshot_id"] in listed.stdout
    now = audit.answer(settings, engine, spark, view, key, window, datetime.now(timezone.utc), arch="kappa")
    assert now.value == output(engine, view, 2)[(key, window)] and now.publish["target"] == f"{view}__v2"
    with pytest.raises(audit.AuditError, match="nothing of driver_earnings_daily"):
        audit.answer(settings, engine, spark, view, key, window, datetime(2020, 1, 1, tzinfo=timezone.utc), arch="kappa")


def _batch_build(spark, settings: Settings, engine):
    end = kafka_io.run(kafka_io.end_offsets(settings))
    lake.append_bronze(spark, settings, lake.bronze_next_offsets(spark, settings), end)
    lake.build_silver(spark, settings)
    for spec in views.VIEWS.values():
        lake.build_gold(spark, settings, views.batch_spec(spec, settings))
    return batch.publish_batch(spark, settings, engine)


def test_audit_as_of_reads_the_batch_build_in_force_with_delta_time_travel(split, spark) -> None:
    settings, engine, workload = split
    view = "revenue_per_minute"
    first = _batch_build(spark, settings, engine)
    between = datetime.now(timezone.utc)
    time.sleep(0.05)
    produce_events(settings, workload.deliveries[len(workload.deliveries) // 2:])
    second = _batch_build(spark, settings, engine)
    gold = lambda build: {(r["entity"], r["window_start"]): r["value"]  # noqa: E731
                          for r in batch_rows(engine, build.build_id, view)}
    key, window = _changed(gold(first), gold(second), keep=lambda k: views.view(view).is_final(k[1], first.final_through))

    then = audit.answer(settings, engine, spark, view, key, window, between)
    assert (then.value, then.publish["target"]) == (gold(first)[(key, window)], first.build_id)
    assert then.served_from.startswith(f"gold gold/{view}@v{first.delta_versions['gold/' + view]}")
    assert audit.answer(settings, engine, spark, view, key, window, datetime.now(timezone.utc)).value == gold(second)[(key, window)]
    late = max(w for _, w in gold(second))  # not final at T: the merge served it from speed, which keeps no history
    unversioned = audit.answer(settings, engine, spark, view, key, late, datetime.now(timezone.utc))
    assert unversioned.value is None and unversioned.served_from == "speed layer (not versioned)"


def test_the_daily_dagster_job_catches_up_snapshots_and_keeps_the_publish_history(split, spark) -> None:
    from orchestration.definitions import make_definitions
    from orchestration.resources import LabSettings

    settings, engine, workload = split
    kappa.replay(settings, engine, "revenue_per_minute", 1)
    assert co.cutover(settings, engine, "revenue_per_minute", 1, "publish", spark=spark, run_suite=run_suite).swapped
    produce_events(settings, workload.deliveries[len(workload.deliveries) // 2:])

    job = make_definitions(LabSettings.from_settings(settings)).resolve_job_def("hybrid_snapshots")
    run = job.execute_in_process(instance=dagster_instance(settings), raise_on_error=False)
    assert run.success
    end = kafka_io.run(kafka_io.end_offsets(settings))
    latest = snapshots.listing(engine, "revenue_per_minute")[-1]
    assert latest.offsets == end and latest.source_output == "revenue_per_minute__v1"
    assert oracle.compare(output(engine, "revenue_per_minute", 1), oracle.for_view("revenue_per_minute", workload.truth)).equal
    actions = [(p["action"], p["snapshot_id"]) for p in audit.history(engine, "revenue_per_minute")]
    assert actions[0][0] == "cutover" and actions[-1] == ("refresh", latest.snapshot_id)
    mirrored = spark.read.format("delta").load(lake.path(settings, audit.PUBLISH_LOG_TABLE))
    assert sorted(r["id"] for r in mirrored.collect()) == [p["id"] for p in audit.history(engine)]
