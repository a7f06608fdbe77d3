"""The batch layer's promotion step: turn the gold Delta tables into a promoted batch build with
its T record, and run the whole bronze → silver → gold → publish chain through Dagster."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from sqlalchemy import Engine

from lklab import lake, views
from lklab.builds import BatchBuild, git_sha, new_build_id, promote
from lklab.config import Settings
from lklab.events import SCHEMA_VERSION


def _utc(ts: datetime) -> datetime:
    # Spark returns naive datetimes in the session time zone, which lklab pins to UTC.
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def silver_watermark(spark: SparkSession, settings: Settings) -> datetime | None:
    """The batch watermark: the slowest Kafka partition's latest event time in silver."""
    silver = spark.read.format("delta").load(lake.path(settings, lake.SILVER))
    maxima = silver.groupBy("kafka_partition").agg(F.max("event_time").alias("m")).collect()
    return views.watermark({r["kafka_partition"]: _utc(r["m"]) for r in maxima})


def gold_rows(spark: SparkSession, settings: Settings, spec: views.ViewSpec) -> list[dict]:
    gold = spark.read.format("delta").load(lake.path(settings, lake.gold_table(spec.name)))
    return [
        {"view": spec.name, "entity": r[0], "window_start": _utc(r[1]), "value": int(r[2])}
        for r in gold.select(spec.entity, "window_start", spec.value_column).collect()
    ]


def publish_batch(spark: SparkSession, settings: Settings, engine: Engine, validation: dict | None = None) -> BatchBuild:
    """Record the build (offsets, watermark, T, counts, validation, Delta versions), load every
    gold view into the serving store and move the batch alias to it, atomically. Dagster runs
    this only after every blocking quality gate on the gold views has passed."""
    wm = silver_watermark(spark, settings)
    rows = {name: gold_rows(spark, settings, spec) for name, spec in views.VIEWS.items()}
    tables = [lake.BRONZE, lake.SILVER, *(lake.gold_table(name) for name in (*views.VIEWS, "user_sessions"))]
    build = BatchBuild(
        build_id=new_build_id(),
        created_at=datetime.now(timezone.utc),
        status="promoted",
        git_sha=git_sha(),
        logic_version=views.LOGIC_VERSION,
        schema_version=SCHEMA_VERSION,
        offsets=lake.bronze_offsets_held(spark, settings),
        watermark=wm,
        final_through=views.final_through(wm, settings.allowed_lateness_s),
        row_counts={"silver": spark.read.format("delta").load(lake.path(settings, lake.SILVER)).count(),
                    **{name: len(r) for name, r in rows.items()}},
        validation=validation or {"passed": True, "gates": "Dagster blocking asset checks"},
        delta_versions={t: lake.delta_version(spark, lake.path(settings, t)) for t in tables},
    )
    promote(engine, build, [row for view_rows in rows.values() for row in view_rows], gold_sessions(spark, settings))
    return build


def gold_sessions(spark: SparkSession, settings: Settings) -> list[dict]:
    location = lake.path(settings, lake.gold_table("user_sessions"))
    if not lake.exists(spark, location):
        return []
    gold = spark.read.format("delta").load(location).select("user_id", "window_start", "sessions", "duration_ms")
    return [{"user_id": r[0], "window_start": _utc(r[1]), "sessions": int(r[2]), "duration_ms": int(r[3])} for r in gold.collect()]


def dagster_instance(settings: Settings):
    from dagster import DagsterInstance

    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    return DagsterInstance.get()


@dataclass
class BatchOutcome:
    success: bool
    run_ids: list[str] = field(default_factory=list)
    touched_dates: list[str] = field(default_factory=list)
    failed_gates: list[str] = field(default_factory=list)
    gates: list = field(default_factory=list)  # orchestration.gates.GateOutcome of every check run
    message: str = ""


def run_batch(settings: Settings, dates: tuple[str, str] | None = None) -> BatchOutcome:
    """The batch layer through Dagster, recorded in the local instance (visible in `dagster dev`):
    the `ingest` job appends the log's new offsets to bronze, then the `lambda_batch` job rebuilds
    the event dates that ingest touched (or `dates`, a backfill range of partition keys) in one
    run: silver → gold → blocking gates → promotion."""
    from assets.lake import dates_to_partition_keys
    from orchestration.definitions import make_definitions
    from orchestration.gates import failed_gates, gate_outcomes
    from orchestration.resources import LabSettings
    from orchestration.sensors import range_tags

    definitions = make_definitions(LabSettings.from_settings(settings))
    instance = dagster_instance(settings)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    outcome = BatchOutcome(success=False)
    ingest = definitions.resolve_job_def("ingest").execute_in_process(run_config=quiet, instance=instance, raise_on_error=False)
    outcome.run_ids.append(ingest.run_id)
    outcome.gates = gate_outcomes(instance, ingest.run_id)
    if not ingest.success:
        outcome.failed_gates = failed_gates(instance, ingest.run_id)
        outcome.message = f"ingest run {ingest.run_id} failed"
        return outcome
    [materialization] = ingest.asset_materializations_for_node("bronze_events")
    outcome.touched_dates = list(materialization.metadata["touched_dates"].value)
    keys = dates or dates_to_partition_keys([date.fromisoformat(d) for d in outcome.touched_dates])
    if keys is None:
        outcome.success, outcome.message = True, "no new events: nothing to rebuild"
        return outcome
    batch = definitions.resolve_job_def("lambda_batch").execute_in_process(
        run_config=quiet, instance=instance, raise_on_error=False, tags=range_tags(*keys)
    )
    outcome.run_ids.append(batch.run_id)
    outcome.failed_gates = failed_gates(instance, batch.run_id)
    outcome.gates += gate_outcomes(instance, batch.run_id)
    outcome.success = batch.success and not outcome.failed_gates
    outcome.message = (f"rebuilt event dates {keys[0]}…{keys[1]} and promoted a new build" if outcome.success
                       else f"batch run {batch.run_id} stopped; the previous build stays published")
    return outcome
