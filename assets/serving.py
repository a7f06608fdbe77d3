"""Serving assets: the promoted batch build that the Lambda merge reads (with its T record)."""

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from assets.lake import gold_assets
from lklab.batch import publish_batch
from orchestration.resources import LabSettings, ServingResource, SparkResource


@asset(group_name="serving", compute_kind="sqlalchemy", deps=gold_assets,
       description="The batch build promoted to the serving store: every gold view plus the T record (offsets, watermark, final-through).")
def lambda_batch_build(context: AssetExecutionContext, lab: LabSettings, spark: SparkResource, serving: ServingResource) -> MaterializeResult:
    build = publish_batch(spark.session(), lab.settings(), serving.engine())
    metadata = {
        "build_id": build.build_id,
        "status": build.status,
        "T_final_through": str(build.final_through),
        "watermark": str(build.watermark),
        "offsets": MetadataValue.json({str(k): v for k, v in build.offsets.items()}),
        "row_counts": MetadataValue.json(build.row_counts),
        "validation": MetadataValue.json(build.validation),
        "git_sha": build.git_sha,
    }
    if build.status != "promoted":
        raise Failure(description=f"batch build {build.build_id} failed validation; the previous build stays published", metadata=metadata)
    context.log.info(f"promoted {build.build_id}: T={build.final_through}")
    return MaterializeResult(metadata=metadata)
