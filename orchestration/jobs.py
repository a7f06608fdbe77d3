"""Jobs and schedules: ingest (bronze), the partitioned Lambda batch (silver → gold → gates → promote)
and the hybrid daily snapshots."""
from dagster import AssetKey, AssetSelection, DefaultScheduleStatus, ScheduleDefinition, define_asset_job

from lklab.core.config import Settings
from lklab.lambda_arch.builds import batch_views

LAMBDA_BATCH_TAG = "lklab/lambda_batch"  # the run queue admits one run with this tag at a time

# Off unless LKLAB_SCHEDULES_RUNNING=true (or switched on in the UI / `dagster schedule start`).
SCHEDULE_STATUS = DefaultScheduleStatus.RUNNING if Settings().schedules_running else DefaultScheduleStatus.STOPPED

ingest_job = define_asset_job(
    "ingest",
    selection=AssetSelection.assets("bronze_events"),
    description="Append the log's new offsets to bronze (checks included).",
)

lambda_batch_job = define_asset_job(
    "lambda_batch",
    selection=AssetSelection.groups("lambda") - AssetSelection.assets("bronze_events"),
    description="silver → gold → quality gates → promoted batch build, for a range of event dates in one run",
    tags={LAMBDA_BATCH_TAG: "1"},  # the run queue's tag concurrency limit: one at a time
)



def lambda_batch_selection(settings: Settings) -> list[AssetKey] | None:
    """The assets of a lambda_batch run for the settings' batch_views (None: the whole job):
    silver, the gold of each of those views (their checks come with them) and the promotion."""
    if settings.batch_views is None:
        return None
    return [AssetKey("silver_events"), *(AssetKey(f"gold_{name}") for name in batch_views(settings)), AssetKey("lambda_batch_build")]


nightly_ingest = ScheduleDefinition(
    name="nightly_ingest", job=ingest_job, default_status=SCHEDULE_STATUS, cron_schedule="0 2 * * *", execution_timezone="UTC",
    description="Nightly batch layer: ingest at 02:00 UTC; the rebuild_touched_dates sensor runs the batch for the dates it touched.",
)

hybrid_job = define_asset_job(
    "hybrid_snapshots",
    selection=AssetSelection.groups("hybrid"),
    description="Snapshot every published Kappa view to Delta (its live job keeps it current; a view whose job is "
                "not running is caught up first), and mirror the publish history.",
)

daily_snapshots = ScheduleDefinition(
    name="daily_snapshots", job=hybrid_job, default_status=SCHEDULE_STATUS, cron_schedule="0 3 * * *", execution_timezone="UTC",
    description="Daily snapshots at 03:00 UTC, after the nightly ingest: they bound how far back any replay must read.",
)
