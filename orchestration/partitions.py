"""Daily event-date partitions shared by silver, gold and the promotion step."""
import os

from dagster import BackfillPolicy, DailyPartitionsDefinition

# Event dates before this are outside the partition set; move it with LKLAB_PARTITIONS_START.
PARTITIONS_START = os.environ.get("LKLAB_PARTITIONS_START", "2026-01-01")

event_date_partitions = DailyPartitionsDefinition(start_date=PARTITIONS_START, timezone="UTC", end_offset=1)

# A date range (a backfill, or the dates one ingest touched) runs as ONE Spark run, not one per day.
single_run = BackfillPolicy.single_run()
