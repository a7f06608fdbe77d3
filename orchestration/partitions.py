"""Daily event-date partitions shared by silver, gold and the promotion step."""
from datetime import date, datetime

from dagster import BackfillPolicy, DailyPartitionsDefinition

from lklab.core.config import Settings

# Event dates before this are outside the partition set; move it with LKLAB_PARTITIONS_START.
PARTITIONS_START = Settings().partitions_start

event_date_partitions = DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC", end_offset=1)

# A date range (a backfill, or the dates one ingest touched) runs as ONE Spark run, not one per day.
single_run = BackfillPolicy.single_run()

# The tags of a run over a range of partitions (a backfill, or the dates one ingest touched).
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"
RANGE_TAGS = (RANGE_START, RANGE_END)


def range_tags(first: str, last: str) -> dict[str, str]:
    """Run tags for the partition key range first..last (both included)."""
    return {RANGE_START: first, RANGE_END: last}


def dates_to_partition_keys(dates: list[date]) -> tuple[str, str] | None:
    """The partition key range covering these event dates (clipped to the partition set)."""
    first = datetime.strptime(event_date_partitions.start.strftime("%Y-%m-%d"), "%Y-%m-%d").date()
    kept = [d for d in dates if d >= first]
    return (min(kept).isoformat(), max(kept).isoformat()) if kept else None
