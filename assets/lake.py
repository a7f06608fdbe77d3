"""Lake assets: bronze (raw, offsets kept) → silver (typed, deduplicated) → gold views."""

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from lklab import lake, views
from orchestration.resources import KafkaResource, LabSettings, SparkResource


@asset(group_name="lake", compute_kind="spark", description="Raw Kafka records with topic/partition/offset, appended by explicit offset ranges; re-reading a range adds nothing.")
def bronze_events(context: AssetExecutionContext, lab: LabSettings, spark: SparkResource, kafka: KafkaResource) -> MaterializeResult:
    settings, session = lab.settings(), spark.session()
    start = lake.bronze_next_offsets(session, settings)
    end = kafka.end_offsets()
    added = lake.append_bronze(session, settings, start, end)
    context.log.info(f"bronze: read offsets {start} → {end}, inserted {added} records")
    return MaterializeResult(metadata={
        "start_offsets": MetadataValue.json({str(k): v for k, v in start.items()}),
        "end_offsets": MetadataValue.json({str(k): v for k, v in end.items()}),
        "rows_inserted": added,
        "delta_version": lake.delta_version(session, lake.path(settings, lake.BRONZE)),
    })


@asset(group_name="lake", compute_kind="spark", deps=[bronze_events], description="Schema-v1 events, one row per event_id (highest event_version wins), partitioned by event_date; rejects quarantined.")
def silver_events(lab: LabSettings, spark: SparkResource) -> MaterializeResult:
    settings, session = lab.settings(), spark.session()
    result = lake.build_silver(session, settings)
    return MaterializeResult(metadata={
        "rows": result.rows,
        "rejected": result.rejected,
        "duplicates_removed": result.duplicates_removed,
        "delta_version": lake.delta_version(session, lake.path(settings, lake.SILVER)),
    })


def gold_asset(spec: views.ViewSpec):
    """One gold asset per view in lklab.views.VIEWS, all built by the same Spark executor of the spec."""

    @asset(name=f"gold_{spec.name}", group_name="lake", compute_kind="spark", deps=[silver_events],
           description=f"{spec.name} ({spec.entity}, {spec.window_s}s window): {spec.value_column}, by event time (UTC).")
    def _gold(lab: LabSettings, spark: SparkResource) -> MaterializeResult:
        settings, session = lab.settings(), spark.session()
        rows = lake.build_gold(session, settings, spec)
        return MaterializeResult(metadata={
            "rows": rows,
            "logic_version": spec.logic_version,
            "delta_version": lake.delta_version(session, lake.path(settings, lake.gold_table(spec.name))),
        })

    return _gold


gold_assets = [gold_asset(spec) for spec in views.VIEWS.values()]
