"""Sensors: chain ingest → partitioned batch, report the speed layer's lag, name failed gates."""
from dagster import (
    AssetKey,
    AssetObservation,
    DefaultSensorStatus,
    EventLogEntry,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    asset_sensor,
    run_failure_sensor,
    sensor,
)

from datetime import date

from lklab.lambda_arch import merge
from lklab.lambda_arch import runs
from orchestration.gates import failed_gates
from orchestration.jobs import lambda_batch_job
from orchestration.partitions import dates_to_partition_keys, range_tags
from orchestration.resources import LabSettings, ServingResource


@asset_sensor(asset_key=AssetKey("bronze_events"), job=lambda_batch_job, default_status=DefaultSensorStatus.RUNNING,
              description="After each ingest, rebuild the event dates it touched plus every date whose last batch run "
                          "did not promote (one run, through the run queue), gates included.")
def rebuild_touched_dates(context: SensorEvaluationContext, asset_event: EventLogEntry, serving: ServingResource):
    metadata = asset_event.dagster_event.event_specific_data.materialization.metadata
    touched = [date.fromisoformat(d) for d in (metadata.get("touched_dates").value if "touched_dates" in metadata else [])]
    keys = dates_to_partition_keys(touched + runs.unpromoted_dates(serving.engine()))
    if keys is None:
        return SkipReason("the ingest touched no event dates in the partition set, and no batch run is blocked")
    return RunRequest(run_key=context.cursor or asset_event.run_id, tags=range_tags(*keys))


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
        description="Observes the speed layer's lag, heartbeat and watermark every 30 s.")
def speed_lag_sensor(context: SensorEvaluationContext, lab: LabSettings, serving: ServingResource):
    settings, engine = lab.settings(), serving.engine()
    health = merge.current_speed_health(engine, settings)
    context.log.info(f"speed layer healthy={health.healthy} lag={health.lag} heartbeat_age_s={health.heartbeat_age_s} {health.reason or ''}")
    return SensorResult(asset_events=[AssetObservation(
        asset_key="speed_layer",
        metadata={"healthy": health.healthy, "lag_records": health.lag if health.lag is not None else -1,
                  "heartbeat_age_s": health.heartbeat_age_s if health.heartbeat_age_s is not None else -1.0,
                  "reason": health.reason or ""},
    )])


@run_failure_sensor(default_status=DefaultSensorStatus.RUNNING,
                    description="Logs which quality gate stopped a run, and ends its batch_runs record (blocked or failed).")
def gate_failure_sensor(context: RunFailureSensorContext, serving: ServingResource) -> None:
    runs.finish(serving.engine(), context.dagster_run.run_id, failure=(context.failure_event.message or "the run failed").splitlines()[0])
    gates = failed_gates(context.instance, context.dagster_run.run_id)
    if gates:
        for line in gates:
            context.log.error(f"run {context.dagster_run.run_id} ({context.dagster_run.job_name}) stopped by gate {line}")
    else:
        context.log.error(f"run {context.dagster_run.run_id} ({context.dagster_run.job_name}) failed: {context.failure_event.message}")
