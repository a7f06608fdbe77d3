"""The hybrid design's daily step: catch a published Kappa view up to the log's end and snapshot
it, so later replays start from the snapshot instead of the beginning of the log."""
from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine

from lklab.core.config import Settings
from lklab.engine import snapshots
from lklab.engine.snapshots import Snapshot, SnapshotError
from lklab.kappa import KAPPA_VIEWS, build_record, output_name, replay, spec_for
from lklab.kappa.cutover import publish_snapshot, record_kappa_publish
from lklab.kappa.query import published
from lklab.lake.spark import ensure_spark


@dataclass(frozen=True)
class Refresh:
    view: str
    output: str
    events: int
    snapshot: Snapshot


def refresh(settings: Settings, engine: Engine, view: str, spark=None, who: str | None = None) -> Refresh | None:
    """The hybrid design's daily step for a published Kappa view: resume its replay up to the log's
    end, snapshot the result, and record the refreshed output as a publish (audits stay exact).
    None if nothing of the view is published."""
    with engine.connect() as conn:
        output = published(conn, view)
    if output is None:
        return None
    record = build_record(engine, output)
    result = replay(settings, engine, view, record["version"], spark=spark)
    snap = publish_snapshot(settings, engine, spark, view, output)
    if result.events:
        with engine.begin() as conn:
            record_kappa_publish(conn, engine, datetime.now(timezone.utc), view, output, output, "refresh", who or getpass.getuser(),
                            f"caught up {result.events} events", snap)
    return Refresh(view, output, result.events, snap)


def snapshot_view(settings: Settings, engine: Engine, view: str, version: int | None = None, spark=None) -> Snapshot:
    """A new snapshot of `<view>__v<N>`, or of the published version when `version` is None."""
    if view not in KAPPA_VIEWS:
        raise SnapshotError(f"unknown view {view!r}; one of: {', '.join(KAPPA_VIEWS)}")
    if version is None:
        with engine.connect() as conn:
            output = published(conn, view)
        if output is None:
            raise SnapshotError(f"{view} has no published version: pass --version N")
    else:
        output = output_name(view, version)
    record = build_record(engine, output)
    if record is None:
        raise SnapshotError(f"{output} was never replayed: run `lklab replay {view} --version N` first")
    return snapshots.take(settings, engine, ensure_spark(settings, spark), view, spec_for(view, record["version"]),
                          record["consumer_group"])
