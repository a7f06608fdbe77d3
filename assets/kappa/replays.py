"""Kappa assets: a view version's output `<view>__v<N>`, built from the log (the Kafka topic).

Materializing `kappa_<view>` with `version: N` starts vN's live job (blue/green: it hydrates from
the log while the published version keeps serving) and waits until it is hydrated; with
`until_end: true` it runs the bounded replay instead (to the end offsets at start, then stops),
for reproducible builds."""
import time

from dagster import AssetExecutionContext, AssetKey, AssetSpec, Config, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from lklab import kappa
from lklab import views
from lklab.core import processes
from lklab.core.config import Settings
from lklab.kappa import jobs
from orchestration.resources import LabSettings, ServingResource

rides_events_log = AssetSpec(
    "rides_events_log", group_name="kappa", kinds={"kafka"},
    description="The Kafka topic rides.events: the log every Kappa job and replay reads.",
)

HYDRATION_POLL_S = 0.5


class ReplayConfig(Config):
    version: int
    from_offsets: str = Field("earliest", description="earliest, or partition:offset pairs like 0:120,1:98")
    from_snapshot: str | None = Field(None, description="latest, or a snapshot id (then from_offsets must stay earliest)")
    until_end: bool = Field(False, description="run the bounded replay to the log's end offsets at start, then stop "
                                               "(reproducible builds), instead of starting the live job")
    max_rate: float | None = Field(None, description="events/s; the bounded replay only (until_end)")
    hydration_timeout_s: float = Field(600.0, gt=0, description="the live job: how long to wait until its lag is at most "
                                                                "kappa_hydration_max_lag")


def kappa_asset_key(view: str) -> AssetKey:
    return AssetKey(f"kappa_{view}")


def kappa_asset(spec: views.ViewSpec):
    @asset(key=kappa_asset_key(spec.name), deps=[rides_events_log], kinds={"faust", "sqlalchemy"},
           description=f"{spec.name}__v<N>: starts vN's live Kappa job and waits until it is hydrated (lag at most "
                       f"kappa_hydration_max_lag); with until_end, a bounded replay to the end offsets at start.")
    def _replay(context: AssetExecutionContext, config: ReplayConfig, lab: LabSettings, serving: ServingResource) -> MaterializeResult:
        settings = lab.settings()
        try:
            if config.until_end:
                return _bounded_replay(context, config, settings, serving, spec.name)
            if config.max_rate is not None:
                raise jobs.JobError("max_rate paces the bounded replay only: set until_end: true, or leave max_rate out")
            return _live(context, config, settings, spec.name)
        except (jobs.JobError, kappa.ReplayError) as exc:
            raise Failure(description=str(exc)) from None

    return _replay


def _bounded_replay(context: AssetExecutionContext, config: ReplayConfig, settings: Settings, serving: ServingResource,
                    view: str) -> MaterializeResult:
    jobs.ensure_not_running(settings, view, config.version)  # the live job and a replay must not both write one output
    start = None if config.from_offsets == "earliest" else kappa.parse_from(config.from_offsets)
    result = kappa.replay(settings, serving.engine(), view, config.version, start, config.max_rate,
                          snapshot=config.from_snapshot)
    context.log.info(f"{result.output}: {result.events} events at {result.events_per_s:,.0f} ev/s")
    return MaterializeResult(metadata={
        "mode": "until_end",
        "output": result.output,
        "version": config.version,
        "events": result.events,
        "rows": result.rows,
        "events_per_s": round(result.events_per_s, 1),
        "start_offsets": MetadataValue.json({str(k): v for k, v in result.start_offsets.items()}),
        "target_offsets": MetadataValue.json({str(k): v for k, v in result.target_offsets.items()}),
        "records_per_tier": MetadataValue.json(result.tiers),
        "snapshot_id": result.snapshot_id or "",
    })


def _live(context: AssetExecutionContext, config: ReplayConfig, settings: Settings, view: str) -> MaterializeResult:
    """Start vN's live job unless it runs already, then wait until it is hydrated."""
    began = time.monotonic()
    running = jobs.job_status(settings, view, config.version)
    started = not running.running
    if started:
        pid = jobs.start(settings, view, config.version, config.from_offsets, config.from_snapshot)
        context.log.info(f"{running.output}: live job started (pid {pid}), hydrating from {config.from_snapshot or config.from_offsets}")
    else:
        context.log.info(f"{running.output}: live job already running (pid {running.pid}); not started again "
                         f"(from_offsets / from_snapshot do not apply)")
    hydrated = _wait_until_hydrated(settings, view, config.version, config.hydration_timeout_s)
    waited = time.monotonic() - began
    context.log.info(f"{hydrated.output}: hydrated after {waited:.1f}s, lag {hydrated.lag}, watermark {hydrated.watermark}")
    return MaterializeResult(metadata={
        "mode": "live",
        "output": hydrated.output,
        "version": config.version,
        "started": started,
        "pid": hydrated.pid,
        "lag_records": hydrated.lag,
        "watermark": str(hydrated.watermark) if hydrated.watermark else "",
        "heartbeat_age_s": round(hydrated.heartbeat_age_s, 1) if hydrated.heartbeat_age_s is not None else -1.0,
        "hydrated_after_s": round(waited, 1),
        "log": MetadataValue.path(str(hydrated.log)),
    })


def _wait_until_hydrated(settings: Settings, view: str, version: int, timeout_s: float) -> jobs.JobStatus:
    """Poll the job until its lag is at most kappa_hydration_max_lag. A job that exits, or a
    timeout, fails the asset; after a timeout the job keeps running (it is still hydrating)."""
    deadline = time.monotonic() + timeout_s
    while True:
        st = jobs.job_status(settings, view, version)
        if not st.running:
            raise jobs.JobError(f"{st.output} exited before it was hydrated: {processes.log_tail(st.log)}")
        if st.lag is not None and st.lag <= settings.kappa_hydration_max_lag:
            return st
        if time.monotonic() >= deadline:
            lag = "unknown (Kafka did not answer)" if st.lag is None else f"{st.lag} records"
            raise jobs.JobError(f"{st.output} not hydrated within {timeout_s:.0f}s (lag {lag}, at most "
                                f"{settings.kappa_hydration_max_lag} wanted); it keeps running: materialize again to "
                                f"wait more, or `lklab kappa stop {view} --version {version}`")
        time.sleep(HYDRATION_POLL_S)


kappa_assets = [kappa_asset(spec) for spec in views.VIEWS.values()]  # every view: Kappa has no batch layer behind it
