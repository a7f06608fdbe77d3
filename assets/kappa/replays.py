"""Kappa assets: a view version's output `<view>__v<N>`, built from the log (the Kafka topic).

Materializing `kappa_<view>` with `version: N` starts vN's live job (blue/green: it hydrates from
the log while the published version keeps serving) and waits until it is hydrated, as `lklab
replay` does; with `until_end: true` it runs the bounded replay instead (to the end offsets at
start, then stops), for reproducible builds, as `lklab replay --until-end` does."""
import time

from dagster import AssetExecutionContext, AssetKey, AssetSpec, Config, Failure, MaterializeResult, MetadataValue, asset
from pydantic import Field

from lklab import kappa
from lklab import views
from lklab.core.config import Settings
from lklab.kappa import hydration, jobs
from orchestration.resources import LabSettings, ServingResource

rides_events_log = AssetSpec(
    "rides_events_log", group_name="kappa", kinds={"kafka"},
    description="The Kafka topic rides.events: the log every Kappa job and replay reads.",
)


class ReplayConfig(Config):
    version: int
    from_offsets: str = Field("earliest", description="earliest, or partition:offset pairs like 0:120,1:98")
    from_snapshot: str | None = Field(None, description="latest, or a snapshot id (then from_offsets must stay earliest)")
    until_end: bool = Field(False, description="run the bounded replay to the log's end offsets at start, then stop "
                                               "(reproducible builds), instead of starting the live job")
    max_rate: float | None = Field(None, description="events/s: paces the bounded replay, or the live job's hydration")
    hydration_timeout_s: float = Field(600.0, gt=0, description="the live job: how long to wait until it is hydrated "
                                                                "(lklab.kappa.hydration)")


def kappa_asset_key(view: str) -> AssetKey:
    return AssetKey(f"kappa_{view}")


def kappa_asset(spec: views.ViewSpec):
    @asset(key=kappa_asset_key(spec.name), deps=[rides_events_log], kinds={"faust", "sqlalchemy"},
           description=f"{spec.name}__v<N>: starts vN's live Kappa job and waits until it is hydrated (its lag and "
                       f"watermark against the published version's); with until_end, a bounded replay to the end offsets at start.")
    def _replay(context: AssetExecutionContext, config: ReplayConfig, lab: LabSettings, serving: ServingResource) -> MaterializeResult:
        settings = lab.settings()
        try:
            if config.until_end:
                return _bounded_replay(context, config, settings, serving, spec.name)
            return _live(context, config, settings, serving, spec.name)
        except (jobs.JobError, kappa.ReplayError, LookupError) as exc:
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


def _live(context: AssetExecutionContext, config: ReplayConfig, settings: Settings, serving: ServingResource,
          view: str) -> MaterializeResult:
    """Start vN's live job unless it runs already, then wait until it is hydrated."""
    began = time.monotonic()
    running = jobs.job_status(settings, view, config.version)
    started = not running.running
    if started:
        pid = jobs.start(settings, view, config.version, config.from_offsets, config.from_snapshot, max_rate=config.max_rate)
        context.log.info(f"{running.output}: live job started (pid {pid}), hydrating from {config.from_snapshot or config.from_offsets}")
    else:
        context.log.info(f"{running.output}: live job already running (pid {running.pid}); not started again "
                         f"(from_offsets, from_snapshot and max_rate do not apply)")
    ready = hydration.wait_until_hydrated(settings, serving.engine(), view, config.version, config.hydration_timeout_s)
    waited = time.monotonic() - began
    st = jobs.job_status(settings, view, config.version)
    context.log.info(f"{ready.summary} (after {waited:.1f}s)")
    return MaterializeResult(metadata={
        "mode": "live",
        "output": st.output,
        "version": config.version,
        "started": started,
        "pid": st.pid if st.pid is not None else -1,
        "lag_records": st.lag if st.lag is not None else -1,
        "watermark": str(st.watermark) if st.watermark else "",
        "heartbeat_age_s": round(st.heartbeat_age_s, 1) if st.heartbeat_age_s is not None else -1.0,
        "hydration": ready.summary,
        "hydrated_after_s": round(waited, 1),
        "log": MetadataValue.path(str(st.log)),
    })


kappa_assets = [kappa_asset(spec) for spec in views.VIEWS.values()]  # every view: Kappa has no batch layer behind it
