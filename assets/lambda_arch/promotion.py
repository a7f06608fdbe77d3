"""Serving assets: the promoted batch build that the Lambda merge reads (with its T record)."""
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from assets.lambda_arch.lake import gold_assets
from lklab.lambda_arch import runs
from lklab.lambda_arch.promote import publish_batch
from orchestration.partitions import event_date_partitions, single_run
from orchestration.resources import LabSettings, ServingResource, SparkResource


@asset(compute_kind="sqlalchemy", deps=gold_assets, partitions_def=event_date_partitions,
       backfill_policy=single_run,
       description="Promotes every gold view to the serving store with the T record (offsets, watermark, final-through). "
                   "Runs only when every blocking quality gate upstream passed; otherwise the previous build stays published.")
def lambda_batch_build(context: AssetExecutionContext, lab: LabSettings, spark: SparkResource, serving: ServingResource) -> MaterializeResult:
    build = publish_batch(spark.session(), lab.settings(), serving.engine())
    runs.promoted(serving.engine(), context.run.run_id, build.build_id)
    context.log.info(f"promoted {build.build_id}: T={build.final_through}")
    return MaterializeResult(metadata={
        "build_id": build.build_id,
        "T_final_through": str(build.final_through),
        "watermark": str(build.watermark),
        "offsets": MetadataValue.json({str(k): v for k, v in build.offsets.items()}),
        "row_counts": MetadataValue.json(build.row_counts),
        "delta_versions": MetadataValue.json(build.delta_versions),
        "git_sha": build.git_sha,
    })
