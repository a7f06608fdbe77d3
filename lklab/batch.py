"""The batch layer's promotion step: turn the gold Delta table into a promoted batch build with
its T record, and run the whole bronze → silver → gold → publish chain through Dagster."""
from __future__ import annotations

import os
from datetime import datetime, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from sqlalchemy import Engine

from lklab import lake, views
from lklab.builds import BatchBuild, git_sha, new_build_id, promote
from lklab.config import Settings
from lklab.events import SCHEMA_VERSION


def _validate(gold, silver) -> dict:
    """Cheap internal gates; the GX suites and ledger reconciliation come with the Lambda issue."""
    null_keys = gold.where(F.col("city").isNull() | F.col("window_start").isNull()).count()
    gold_total = gold.agg(F.coalesce(F.sum("revenue_cents"), F.lit(0))).first()[0]
    silver_total = (
        silver.where(F.col("event_type").isin(list(views.MONEY_SIGN)))
        .select(F.sum(F.when(F.col("event_type") == "payment_refunded", -F.col("amount_cents")).otherwise(F.col("amount_cents"))))
        .first()[0] or 0
    )
    checks = {"gold_keys_not_null": null_keys == 0, "gold_total_equals_silver_total": gold_total == silver_total}
    return {"passed": all(checks.values()), "checks": checks, "gold_total_cents": int(gold_total)}


def publish_batch(spark: SparkSession, settings: Settings, engine: Engine) -> BatchBuild:
    """Record the build (offsets, watermark, T, counts, validation, Delta versions) and, when it
    validates, load gold into the serving store and move the batch alias to it atomically."""
    silver = spark.read.format("delta").load(lake.path(settings, lake.SILVER))
    gold = spark.read.format("delta").load(lake.path(settings, lake.GOLD_REVENUE_PER_MINUTE))
    maxima = {r["kafka_partition"]: r["m"] for r in silver.groupBy("kafka_partition").agg(F.max("event_time").alias("m")).collect()}
    wm = views.watermark({p: m.replace(tzinfo=timezone.utc) if m.tzinfo is None else m for p, m in maxima.items()})
    validation = _validate(gold, silver)
    rows = [
        {"city": r["city"], "window_start": _utc(r["window_start"]), "revenue_cents": int(r["revenue_cents"])}
        for r in gold.select("city", "window_start", "revenue_cents").collect()
    ]
    build = BatchBuild(
        build_id=new_build_id(),
        created_at=datetime.now(timezone.utc),
        status="promoted" if validation["passed"] else "failed",
        git_sha=git_sha(),
        logic_version=views.LOGIC_VERSION,
        schema_version=SCHEMA_VERSION,
        offsets=lake.bronze_offsets_held(spark, settings),
        watermark=wm,
        final_through=views.final_through(wm, settings.allowed_lateness_s),
        row_counts={"silver": silver.count(), "gold_revenue_per_minute": len(rows)},
        validation=validation,
        delta_versions={t: lake.delta_version(spark, lake.path(settings, t)) for t in (lake.BRONZE, lake.SILVER, lake.GOLD_REVENUE_PER_MINUTE)},
    )
    promote(engine, build, rows if validation["passed"] else [])
    return build


def _utc(ts: datetime) -> datetime:
    # Spark returns naive datetimes in the session time zone, which lklab pins to UTC.
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def dagster_instance(settings: Settings):
    from dagster import DagsterInstance

    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    return DagsterInstance.get()


def run_batch(settings: Settings):
    """Run the `lambda_batch` job (bronze → silver → gold → publish) in-process, recorded in the
    local Dagster instance so `dagster dev` shows the run."""
    from orchestration.definitions import make_definitions
    from orchestration.resources import LabSettings

    job = make_definitions(LabSettings.from_settings(settings)).resolve_job_def("lambda_batch")
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    return job.execute_in_process(run_config=quiet, instance=dagster_instance(settings), raise_on_error=False)
