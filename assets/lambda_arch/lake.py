"""Lake assets: bronze (raw, offsets kept) → silver (typed, deduplicated) → gold views,
silver and gold partitioned by UTC event date."""
from datetime import date

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from lklab.lake import tables as lake
from lklab.lambda_arch import runs
from lklab.lambda_arch.builds import promoted_next_offsets
from lklab import views
from orchestration.partitions import event_date_partitions, single_run
from orchestration.resources import KafkaResource, LabSettings, ServingResource, SparkResource


def partition_dates(context: AssetExecutionContext) -> lake.DateRange:
    """The run's event-date range [first, end) (one day, or a backfill range in one run)."""
    window = context.partition_time_window
    return window.start.date(), window.end.date()


@asset(compute_kind="spark",
       description="Raw Kafka records with topic/partition/offset, appended by explicit offset ranges; re-reading a range adds nothing. "
                   "Names the event dates it touched, and every date bronze holds records of that no promoted build consumed.")
def bronze_events(context: AssetExecutionContext, lab: LabSettings, spark: SparkResource, kafka: KafkaResource,
                  serving: ServingResource) -> MaterializeResult:
    settings, session = lab.settings(), spark.session()
    start = lake.bronze_next_offsets(session, settings)
    end = kafka.end_offsets()
    added = lake.append_bronze(session, settings, start, end)
    touched = lake.event_dates(session, settings, start) if added else []
    with serving.engine().connect() as conn:
        promoted = promoted_next_offsets(conn)
    # A run killed after its ingest (kill -9 before its promotion commits) leaves records in bronze
    # that no build consumed and no batch_runs row owes: their dates are owed until a build holds them.
    owed = touched if promoted == start else lake.event_dates(session, settings, promoted)
    context.log.info(f"bronze: read offsets {start} → {end}, inserted {added} records touching {len(touched)} event dates; "
                     f"{len(owed)} event dates hold records no promoted build consumed")
    return MaterializeResult(metadata={
        "start_offsets": MetadataValue.json({str(k): v for k, v in start.items()}),
        "end_offsets": MetadataValue.json({str(k): v for k, v in end.items()}),
        "rows_inserted": added,
        "touched_dates": MetadataValue.json([d.isoformat() for d in touched]),
        "owed_dates": MetadataValue.json([d.isoformat() for d in owed]),
        "delta_version": lake.delta_version(session, lake.path(settings, lake.BRONZE)),
    })


@asset(compute_kind="spark", deps=[bronze_events], partitions_def=event_date_partitions,
       backfill_policy=single_run,
       description="Schema-v1 events, one row per event_id (highest event_version wins), by event_date; rejects quarantined "
                   "to silver_rejects with a reason (the `drop` severity). The first write of a batch run: it takes the "
                   "run's lease on its event dates, so one run per date writes and promotes at a time.")
def silver_events(context: AssetExecutionContext, lab: LabSettings, spark: SparkResource, serving: ServingResource) -> MaterializeResult:
    settings, session = lab.settings(), spark.session()
    dates = partition_dates(context)
    last = date.fromordinal(dates[1].toordinal() - 1)
    try:
        runs.take_lease(serving.engine(), context.run.run_id, dates[0].isoformat(), last.isoformat(), settings.batch_lease_timeout_s)
    except runs.DatesBusy as busy:
        raise Failure(description=str(busy)) from None
    result = lake.build_silver(session, settings, dates)
    return MaterializeResult(metadata={
        "rows": result.rows,
        "rejected": result.rejected,
        "duplicates_removed": result.duplicates_removed,
        "delta_version": lake.delta_version(session, lake.path(settings, lake.SILVER)),
    })


def gold_asset(spec: views.ViewSpec):
    """One gold asset per view in lklab.views.VIEWS, each built by its measure's Spark frame, with
    the logic version the settings pick for the batch layer (views.batch_spec)."""

    @asset(name=f"gold_{spec.name}", compute_kind="spark", deps=[silver_events],
           partitions_def=event_date_partitions, backfill_policy=single_run,
           description=f"{spec.name} ({spec.entity}, {spec.window_s}s window, by event time, UTC): {spec.description}")
    def _gold(context: AssetExecutionContext, lab: LabSettings, spark: SparkResource) -> MaterializeResult:
        settings, session = lab.settings(), spark.session()
        logic = views.batch_spec(spec, settings)
        rows = lake.build_gold(session, settings, logic, partition_dates(context))
        return MaterializeResult(metadata={
            "rows": rows,
            "logic_version": logic.logic_version,
            "delta_version": lake.delta_version(session, lake.path(settings, lake.gold_table(spec.name))),
        })

    return _gold


gold_assets = [gold_asset(spec) for spec in views.VIEWS.values()]
