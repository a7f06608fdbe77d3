"""The speed layer as an observable asset: its lag, heartbeat and event-time watermark."""
from dagster import DataVersion, ObserveResult, observable_source_asset

from lklab.lambda_arch import merge
from orchestration.resources import LabSettings, ServingResource


@observable_source_asset(description="The Faust speed layer: health, lag (records) and freshness.")
def speed_layer(lab: LabSettings, serving: ServingResource) -> ObserveResult:
    settings, engine = lab.settings(), serving.engine()
    health = merge.current_speed_health(engine, settings)
    status = merge.lambda_status(engine, settings)
    return ObserveResult(
        data_version=DataVersion(str(status.speed_watermark)),
        metadata={
            "healthy": health.healthy,
            "reason": health.reason or "",
            "lag_records": health.lag if health.lag is not None else -1,
            "heartbeat_age_s": round(health.heartbeat_age_s, 1) if health.heartbeat_age_s is not None else -1.0,
            "watermark": str(status.speed_watermark),
        },
    )
