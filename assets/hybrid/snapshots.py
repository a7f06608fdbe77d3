"""Hybrid assets: daily snapshots of the published Kappa views (so replays start from them, not
from the beginning of the log), and the publish history that audits read, kept in Delta."""
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.kappa.replays import kappa_asset_key
from lklab.hybrid import audit
from lklab.serving import publish
from lklab import kappa
from lklab.hybrid.refresh import refresh
from orchestration.resources import LabSettings, ServingResource, SparkResource


@asset(deps=[kappa_asset_key(view) for view in kappa.KAPPA_VIEWS], kinds={"delta", "faust"},
       description="For every published Kappa view: write an immutable Delta snapshot (offsets, logic/schema version, row "
                   "counts, checksum, git SHA) and record it as a publish. The published version's live job keeps the view "
                   "current; only a view whose job is not running is caught up (its bounded replay resumed) first.")
def kappa_snapshots(context: AssetExecutionContext, lab: LabSettings, spark: SparkResource, serving: ServingResource) -> MaterializeResult:
    settings, engine, session = lab.settings(), serving.engine(), spark.session()
    taken = {}
    for view in kappa.KAPPA_VIEWS:
        refreshed = refresh(settings, engine, view, spark=session, who="dagster")
        if refreshed is None:
            continue
        snap = refreshed.snapshot
        how = "live job running, nothing replayed" if refreshed.live else f"caught up {refreshed.events} events"
        context.log.info(f"{refreshed.output}: {how}, snapshot {snap.snapshot_id}")
        taken[view] = {"output": refreshed.output, "snapshot_id": snap.snapshot_id, "live_job": refreshed.live,
                       "caught_up_events": refreshed.events,
                       "offsets": {str(p): o for p, o in snap.offsets.items()}, "rows": snap.row_counts["output"],
                       "checksum": snap.checksum}
    return MaterializeResult(metadata={"snapshots": MetadataValue.json(taken), "published_views": len(taken)})


@asset(deps=[kappa_snapshots], kinds={"delta", "sqlalchemy"},
       description="Every publish (batch promotions behind the Lambda merge, Kappa cutovers, rollbacks and refreshes) with "
                   "its build metadata, mirrored from the serving store into the Delta table audit/publish_log.")
def publish_history(lab: LabSettings, spark: SparkResource, serving: ServingResource) -> MaterializeResult:
    added = audit.mirror_to_delta(spark.session(), lab.settings(), serving.engine())
    return MaterializeResult(metadata={"rows_added": added, "publishes": len(publish.history(serving.engine()))})
