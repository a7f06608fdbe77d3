"""The batch layer's promotion step: turn the gold Delta tables into a promoted batch build with
its T record (orchestration.launch runs the whole chain through Dagster)."""
from __future__ import annotations

from datetime import datetime, timezone

from pyspark.sql import SparkSession
from sqlalchemy import Engine

from lklab.lake import tables as lake
from lklab import views
from lklab.core.provenance import git_sha
from lklab.lambda_arch.builds import BatchBuild, batch_views, new_build_id, promote
from lklab.core.config import Settings
from lklab.core.events import SCHEMA_VERSION, as_utc


def gold_rows(spark: SparkSession, settings: Settings, spec: views.ViewSpec) -> list[tuple]:
    """A gold table's rows as (entity, window_start, *values)."""
    gold = spark.read.format("delta").load(lake.path(settings, lake.gold_table(spec.name)))
    gold = gold.select(spec.entity, "window_start", *spec.value_columns)
    return [(r[0], as_utc(r[1]), *(int(v) for v in r[2:])) for r in gold.collect()]


def publish_batch(spark: SparkSession, settings: Settings, engine: Engine, validation: dict | None = None) -> BatchBuild:
    """Record the build (offsets, watermark, T, counts, validation, Delta versions), load each
    gold view of `batch_views` into the serving store and move the batch alias to it, atomically.
    Dagster runs this only after every blocking quality gate on the gold views has passed."""
    wm = lake.silver_watermark(spark, settings)
    built = batch_views(settings)
    rows = {name: gold_rows(spark, settings, views.VIEWS[name]) for name in built}
    tables = [lake.BRONZE, lake.SILVER, *(lake.gold_table(name) for name in built)]
    build = BatchBuild(
        build_id=new_build_id(),
        created_at=datetime.now(timezone.utc),
        status="promoted",
        git_sha=git_sha(),
        logic_version=views.LOGIC_VERSION,
        schema_version=SCHEMA_VERSION,
        offsets=lake.bronze_offsets_held(spark, settings),
        watermark=wm,
        final_through=views.final_through(wm, settings.allowed_lateness_s),
        row_counts={"silver": spark.read.format("delta").load(lake.path(settings, lake.SILVER)).count(),
                    **{name: len(r) for name, r in rows.items()}},
        validation=validation or {"passed": True, "gates": "Dagster blocking asset checks"},
        delta_versions={t: lake.delta_version(spark, lake.path(settings, t)) for t in tables},
    )
    promote(engine, build, [(views.VIEWS[name], view_rows) for name, view_rows in rows.items()], settings)
    return build
