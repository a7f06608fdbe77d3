"""Jobs and schedules: ingest (bronze) and the partitioned Lambda batch (silver → gold → gates → promote)."""
from dagster import AssetSelection, ScheduleDefinition, define_asset_job

ingest_job = define_asset_job(
    "ingest",
    selection=AssetSelection.assets("bronze_events"),
    description="Append the log's new offsets to bronze (checks included).",
)

lambda_batch_job = define_asset_job(
    "lambda_batch",
    selection=AssetSelection.groups("lake", "serving") - AssetSelection.assets("bronze_events"),
    description="silver → gold → quality gates → promoted batch build, for a range of event dates in one run",
)

nightly_ingest = ScheduleDefinition(
    job=ingest_job, cron_schedule="0 2 * * *", execution_timezone="UTC",
    description="Nightly batch layer: ingest at 02:00 UTC; the rebuild_touched_dates sensor runs the batch for the dates it touched.",
)
