"""Sensors: chain ingest → partitioned batch, report the speed layer's and the live Kappa jobs'
lag and health, name failed gates, purge deletion requests and warn before their deadlines."""
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

import hashlib
from datetime import date, datetime, timedelta, timezone

from assets.kappa.replays import kappa_asset_key
from lklab.core.config import Settings
from lklab.kappa import KAPPA_VIEWS
from lklab.kappa import jobs as kappa_jobs
from lklab.kappa.query import published
from lklab.lambda_arch import merge
from lklab.lambda_arch import runs
from lklab.privacy import requests as deletion
from orchestration.gates import failed_gates
from orchestration.jobs import lambda_batch_job, lambda_batch_selection
from orchestration.partitions import dates_to_partition_keys, range_tags
from orchestration.resources import LabSettings, ServingResource


@asset_sensor(asset_key=AssetKey("bronze_events"), job=lambda_batch_job, default_status=DefaultSensorStatus.RUNNING,
              description="After each ingest, rebuild the event dates it touched plus every date whose last batch run "
                          "did not promote (one run, through the run queue), gates included.")
def rebuild_touched_dates(context: SensorEvaluationContext, asset_event: EventLogEntry, lab: LabSettings, serving: ServingResource):
    metadata = asset_event.dagster_event.event_specific_data.materialization.metadata
    touched = [date.fromisoformat(d) for key in ("touched_dates", "owed_dates") if key in metadata for d in metadata[key].value]
    keys = dates_to_partition_keys(touched + runs.unpromoted_dates(serving.engine()))
    if keys is None:
        return SkipReason("the ingest touched no event dates in the partition set, and no batch run is blocked")
    return RunRequest(run_key=context.cursor or asset_event.run_id, tags=range_tags(*keys),
                      asset_selection=lambda_batch_selection(lab.settings()))


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


KAPPA_DOWN, KAPPA_LAGGING = "down", "lagging"


def kappa_job_problem(job: kappa_jobs.JobStatus, is_published: bool, settings: Settings) -> tuple[str, str] | None:
    """(down | lagging, why) for a Kappa job in trouble, None when it is fine. The published
    version must run; a running job is judged by the readers' rule (JobStatus.stale, from
    lklab.core.staleness): stale by its heartbeat is down, stale by its lag is lagging. A job
    stopped on purpose (a candidate, or a version retired after its rollback window) is not a problem."""
    if not job.running:
        return (KAPPA_DOWN, f"{job.output} is published but its live job is not running") if is_published else None
    if not job.stale:
        return None
    beating = job.heartbeat_age_s is not None and job.heartbeat_age_s <= settings.kappa_heartbeat_timeout_s
    return (KAPPA_LAGGING if beating else KAPPA_DOWN), job.stale_reason or f"{job.output} is stale"


@sensor(minimum_interval_seconds=30, default_status=DefaultSensorStatus.RUNNING,
        description="Observes every live Kappa job's lag, heartbeat and watermark every 30 s (on its view's kappa_<view> "
                    "asset) and reports one that is down (the published version not running, or a stale heartbeat) or "
                    "lagging (over kappa_max_lag).")
def kappa_jobs_sensor(context: SensorEvaluationContext, lab: LabSettings, serving: ServingResource):
    settings, engine = lab.settings(), serving.engine()
    with engine.connect() as conn:
        outputs = {view: output for view in KAPPA_VIEWS if (output := published(conn, view)) is not None}
    found = {job.output: job for job in kappa_jobs.status(settings)}
    for view, output in outputs.items():  # a published version that never ran live is down too
        if output in found:
            continue
        try:
            found[output] = kappa_jobs.job_status(settings, view, kappa_jobs.published_version(engine, view))
        except kappa_jobs.JobError as exc:  # an alias no cutover wrote: no build record names its version
            context.log.error(f"Kappa view {view} cannot be judged: {exc}")
    if not found:
        return SkipReason("no Kappa job has run and no Kappa view is published")
    observations = []
    for job in sorted(found.values(), key=lambda j: j.output):
        is_published = outputs.get(job.view) == job.output
        problem = kappa_job_problem(job, is_published, settings)
        if problem is None:
            context.log.info(f"{job.output} running={job.running} published={is_published} lag={job.lag} "
                             f"heartbeat_age_s={job.heartbeat_age_s} watermark={job.watermark}")
        elif problem[0] == KAPPA_LAGGING:
            context.log.warning(f"Kappa job lagging: {problem[1]}")
        else:
            context.log.error(f"Kappa job down: {problem[1]}")
        observations.append(AssetObservation(asset_key=kappa_asset_key(job.view), metadata={
            "output": job.output,
            "version": job.version,
            "published": is_published,
            "running": job.running,
            "healthy": problem is None,
            "problem": problem[0] if problem else "",
            "reason": problem[1] if problem else "",
            "pid": job.pid if job.pid is not None else -1,
            "lag_records": job.lag if job.lag is not None else -1,
            "heartbeat_age_s": round(job.heartbeat_age_s, 1) if job.heartbeat_age_s is not None else -1.0,
            "watermark": str(job.watermark) if job.watermark else "",
        }))
    return SensorResult(asset_events=observations)


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


DEADLINE_WARNING = timedelta(days=1)


@sensor(minimum_interval_seconds=60, default_status=DefaultSensorStatus.RUNNING, asset_selection=[AssetKey("deletion_requests")],
        description="Every minute: purge pending deletion requests (a run of deletion_requests whenever the pending set "
                    "changes), and report each one within a day of its deadline, or past it.")
def deletion_deadline_sensor(context: SensorEvaluationContext, serving: ServingResource):
    now = datetime.now(timezone.utc)
    pending = deletion.listing(serving.engine(), pending_only=True)
    near = [r for r in pending if r.deadline - now <= DEADLINE_WARNING]
    for request in near:
        left = (request.deadline - now).total_seconds() / 3600
        context.log.warning(f"the deletion request made {request.requested_at:%Y-%m-%d %H:%M} UTC: " +
                            (f"{-left:.1f} h PAST its deadline" if left < 0 else f"{left:.1f} h left before its deadline") +
                            " and not yet purged clean (`lklab forget list`)")
    observation = AssetObservation(asset_key="deletion_requests", metadata={
        "pending": len(pending), "due_within_a_day": sum(r.deadline >= now for r in near),
        "overdue": sum(r.deadline < now for r in near)})
    # Dagster keeps run keys and logs for good: they name no user, only a digest of the pending set.
    key = hashlib.sha256("\n".join(sorted(r.user_id for r in pending)).encode()).hexdigest()[:16]
    runs_wanted = [RunRequest(run_key=f"{key}@{now:%Y%m%d%H}")] if pending else []  # retried hourly while not clean
    return SensorResult(run_requests=runs_wanted, asset_events=[observation])
