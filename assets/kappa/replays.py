"""Kappa assets: a replay of the log (the Kafka topic) into a versioned output per view."""
from dagster import AssetExecutionContext, AssetKey, AssetSpec, Config, MaterializeResult, MetadataValue, asset

from lklab import kappa
from lklab import views
from orchestration.resources import LabSettings, ServingResource

rides_events_log = AssetSpec(
    "rides_events_log", group_name="kappa", kinds={"kafka"},
    description="The Kafka topic rides.events: the log every Kappa replay reads.",
)


class ReplayConfig(Config):
    version: int
    from_offsets: str = "earliest"  # or partition:offset pairs like 0:120,1:98
    max_rate: float | None = None  # events/s
    from_snapshot: str | None = None  # latest, or a snapshot id (then from_offsets must stay earliest)


def kappa_asset_key(view: str) -> AssetKey:
    return AssetKey(f"kappa_{view}")


def kappa_asset(spec: views.ViewSpec):
    @asset(key=kappa_asset_key(spec.name), deps=[rides_events_log], kinds={"faust", "sqlalchemy"},
           description=f"Kappa replay of {spec.name} into {spec.name}__v<N> (bounded by the end offsets at start).")
    def _replay(context: AssetExecutionContext, config: ReplayConfig, lab: LabSettings, serving: ServingResource) -> MaterializeResult:
        settings = lab.settings()
        start = None if config.from_offsets == "earliest" else kappa.parse_from(config.from_offsets)
        result = kappa.replay(settings, serving.engine(), spec.name, config.version, start, config.max_rate,
                              snapshot=config.from_snapshot)
        context.log.info(f"{result.output}: {result.events} events at {result.events_per_s:,.0f} ev/s")
        return MaterializeResult(metadata={
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

    return _replay


kappa_assets = [kappa_asset(spec) for spec in views.VIEWS.values()]  # every view: Kappa has no batch layer behind it
