"""Audit as-of: every publish (a batch build promoted behind the Lambda merge, a Kappa alias swap
or refresh) is recorded in publish_log with its build metadata, in the same transaction as the
publish itself. `answer` says what a view served for one key and window at a past instant, from
which build, code version and input offsets, reading the rows with Delta time travel: the gold
table version a batch build recorded, or the Delta snapshot taken when a Kappa output was published.

Scope: the Lambda merge served windows not yet final at T from the speed layer, whose rows are
updated in place and not versioned; for those the answer names the build and T but no value.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from lklab.engine import snapshots
from lklab import views
from lklab.lambda_arch.builds import BATCH_ALIAS
from lklab.core.config import Settings
from lklab.serving.publish import KAPPA, LAMBDA, history
from lklab.serving.store import publish_log, view_snapshots
from lklab.lake.spark import ensure_spark



class AuditError(RuntimeError):
    """An audit question that cannot be answered as asked."""


@dataclass(frozen=True)
class AuditAnswer:
    view: str
    arch: str
    key: str
    window: datetime
    as_of: datetime
    value: Any  # int, (sessions, duration_ms), None if no row was served or the value is not versioned
    served_from: str  # "gold <table>@v<N>", "snapshot <id>", "speed layer (not versioned)"
    publish: dict  # the publish_log row in force at as_of
    note: str = ""
    found: bool = True
    lineage: dict = field(default_factory=dict)


def _in_force(engine: Engine, alias: str, arch: str, as_of: datetime) -> dict:
    with engine.connect() as conn:
        row = conn.execute(select(publish_log).where(publish_log.c.view == alias, publish_log.c.arch == arch,
                                                     publish_log.c.at <= as_of)
                           .order_by(publish_log.c.at.desc(), publish_log.c.id.desc()).limit(1)).mappings().first()
    if row is None:
        raise AuditError(f"nothing of {alias} ({arch}) was published at or before {as_of.isoformat()}")
    return dict(row)


def answer(settings: Settings, engine: Engine, spark, view: str, key: str, window: datetime, as_of: datetime,
           arch: str = LAMBDA) -> AuditAnswer:
    """What `view` served for (key, window) at `as_of`, and from which publish. `spark` may be
    None: a session is started only when there is Delta to read."""
    if view not in views.VIEWS:
        raise AuditError(f"unknown view {view!r}; one of: {', '.join(views.VIEWS)}")
    if arch not in (LAMBDA, KAPPA):
        raise AuditError(f"--arch {arch!r}: one of lambda, kappa")
    width = views.view(view).window_s
    if views.window_start(window, width) != window:
        raise AuditError(f"--window {window.isoformat()}: not the start of a {view} window ({width} s wide, UTC)")
    return (_kappa if arch == KAPPA else _lambda)(settings, engine, spark, view, key, window, as_of)


def _kappa(settings: Settings, engine: Engine, spark, view: str, key: str, window: datetime, as_of: datetime) -> AuditAnswer:
    publish = _in_force(engine, view, KAPPA, as_of)
    with engine.connect() as conn:
        row = conn.execute(select(view_snapshots).where(view_snapshots.c.snapshot_id == publish["snapshot_id"])).mappings().first()
    if row is None:
        raise AuditError(f"publish {publish['id']} of {view} names snapshot {publish['snapshot_id']}, which is not in the catalog")
    snap = snapshots.from_row(row)
    try:
        rows = snapshots.read_output(snap, key, window)
    except snapshots.SnapshotError as exc:  # retired by a deletion request
        raise AuditError(f"{view} as of {as_of.isoformat()}: {exc}") from None
    value = views.view(view).measure.from_output_piece(rows[0]) if rows else None
    return AuditAnswer(view, KAPPA, key, window, as_of, value, f"snapshot {snap.snapshot_id} (Delta {snap.piece_location('output')}"
                       f"@v{snap.delta_versions['output']})", publish, found=bool(rows),
                       note="" if rows else "no row for this key and window: the view served nothing for it",
                       lineage={"output": publish["target"], "offsets": snap.offsets, "git_sha": snap.git_sha,
                                "logic_version": snap.logic_version, "schema_version": snap.schema_version})


def _lambda(settings: Settings, engine: Engine, spark, view: str, key: str, window: datetime, as_of: datetime) -> AuditAnswer:
    from lklab.lake import tables as lake  # Spark is only needed for the batch path

    publish = _in_force(engine, BATCH_ALIAS, LAMBDA, as_of)
    build = publish["build"]
    T = datetime.fromisoformat(build["final_through"]) if build.get("final_through") else None
    table = lake.gold_table(view)
    spec = views.view(view)
    if spec.measure.speed_layer and not spec.is_final(window, T):
        return AuditAnswer(view, LAMBDA, key, window, as_of, None, "speed layer (not versioned)", publish, found=False,
                           note=f"window not final at T={T.isoformat() if T else None}: the merge served it from the speed "
                                "layer, whose rows are updated in place, so the value served then is not recoverable",
                           lineage=build)
    if table not in publish["delta_versions"]:
        raise AuditError(f"build {publish['target']} recorded no Delta version of {table}")
    version = publish["delta_versions"][table]
    try:
        rows = _gold_rows(ensure_spark(settings, spark), settings, view, table, version, key, window)
    except Exception as exc:  # noqa: BLE001 - files of that version gone
        if not spec.keyed_by_user:
            raise
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise AuditError(f"{view} as of {as_of.isoformat()}: redacted. Gold {table}@v{version} is no longer readable "
                         f"({first}): a deletion request (`lklab forget`) vacuumed {table}, so its versions from "
                         "before the purge are gone for every user") from None
    return AuditAnswer(view, LAMBDA, key, window, as_of, rows[0] if rows else None, f"gold {table}@v{version} "
                       f"(build {publish['target']})", publish, found=bool(rows),
                       note="" if rows else "no row for this key and window in that build", lineage=build)


def _gold_rows(spark, settings: Settings, view: str, table: str, version: int, key: str, window: datetime) -> list:
    from pyspark.sql import functions as F

    from lklab.lake import tables as lake

    spec = views.view(view)
    entity, columns = spec.entity, list(spec.value_columns)
    frame = (spark.read.format("delta").option("versionAsOf", version).load(lake.path(settings, table))
             .where((F.col(entity) == key) & (F.col("window_start") == F.lit(window))).select(*columns))
    return [spec.measure.value((key, window, *r)) for r in frame.collect()]


PUBLISH_LOG_TABLE = "audit/publish_log"


def mirror_to_delta(spark, settings: Settings, engine: Engine) -> int:
    """Copy publish records not yet in the Delta history table (MERGE on id, so re-runs add
    nothing): the lake keeps the publish history next to the data it points at. Returns rows added."""
    import json

    from delta.tables import DeltaTable

    from lklab.lake import tables as lake

    rows = [{**r, "build": json.dumps(r["build"], sort_keys=True, default=str),
             "delta_versions": json.dumps(r["delta_versions"], sort_keys=True), "checks": json.dumps(r["checks"])}
            for r in history(engine)]
    if not rows:
        return 0
    schema = ("id long, at timestamp, view string, arch string, action string, target string, from_target string, "
              "who string, why string, build string, snapshot_id string, delta_versions string, checks string")
    frame = spark.createDataFrame([tuple(r[c.split()[0]] for c in schema.split(", ")) for r in rows], schema)
    location = lake.path(settings, PUBLISH_LOG_TABLE)
    if not lake.exists(spark, location):
        frame.write.format("delta").save(location)
        return len(rows)
    (DeltaTable.forPath(spark, location).alias("h").merge(frame.alias("n"), "h.id = n.id").whenNotMatchedInsertAll().execute())
    return lake.merged_rows_inserted(spark, location)
