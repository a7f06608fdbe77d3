"""Deletion requests: purge every pending one (`lklab forget` records it and destroys the key; this
asset re-runs the purge until a scan finds every store clean). A thin adapter over lklab.deletion."""
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from lklab.deletion.purge import process_pending
from orchestration.resources import LabSettings, ServingResource


@asset(kinds={"delta", "sqlalchemy"},
       description="Purge every pending deletion request: the user's rows of views keyed by the user from the serving store "
                   "and the Kappa outputs, Delta DELETE + VACUUM in gold, the user's PII nulled in silver, snapshots holding "
                   "the user retired; then scan every store (Kafka, bronze, silver, gold, snapshots, speed, Kappa, serving). "
                   "A request is closed when nothing of the user is readable anywhere.")
def deletion_requests(context: AssetExecutionContext, lab: LabSettings, serving: ServingResource) -> MaterializeResult:
    done = process_pending(lab.settings(), serving.engine())
    for number, purge in enumerate(done, start=1):  # Dagster keeps its logs for good: they name no user
        dirty = [f"{f.store}: {f.error or f'{f.readable} readable'}" for f in purge.findings if not f.clean]
        context.log.info(f"request {number}: removed {purge.removed}; " + ("clean" if purge.clean else f"still pending ({'; '.join(dirty)})"))
    return MaterializeResult(metadata={"processed": len(done), "closed": sum(p.clean for p in done),
                                       "removed": MetadataValue.json([p.removed for p in done])})
