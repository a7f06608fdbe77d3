"""The hybrid design's daily step: snapshot each published Kappa view, so later replays start
from the snapshot instead of the beginning of the log. The published version's live job keeps
the view current; only a view whose job is not running is caught up here first."""
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
from lklab.kappa.freshness import running_pid
from lklab.kappa.query import published
from lklab.lake.spark import ensure_spark


@dataclass(frozen=True)
class Refresh:
    view: str
    output: str
    events: int  # events this refresh replayed itself: 0 when the live job keeps the output current
    snapshot: Snapshot
    live: bool  # the published version's live job was running, so nothing was replayed


def refresh(settings: Settings, engine: Engine, view: str, spark=None, who: str | None = None) -> Refresh | None:
    """The hybrid design's daily step for a published Kappa view: snapshot it and record the
    refreshed output as a publish (audits stay exact). None if nothing of the view is published.

    - The published version's live job is running: it keeps the output current, so nothing is
      replayed (a replay would be a second writer on the job's scope). The snapshot reads the
      output, its state and its offsets in one transaction, so it is consistent with one set of
      offsets while the job goes on writing.
    - It is not running: catch the output up first, as before live jobs, by resuming its bounded
      replay to the log's end.

    A publish is recorded only when the output moved: events caught up here, or a new snapshot of
    the live job's output."""
    with engine.connect() as conn:
        output = published(conn, view)
    if output is None:
        return None
    if running_pid(settings, output) is not None:
        taken_before = {snap.snapshot_id for snap in snapshots.listing(engine, view)}
        snap = publish_snapshot(settings, engine, spark, view, output)
        if snap.snapshot_id not in taken_before:
            _record_refresh(engine, view, output, who, "snapshot of the live job", snap)
        return Refresh(view, output, 0, snap, live=True)
    result = replay(settings, engine, view, build_record(engine, output)["version"], spark=spark)
    snap = publish_snapshot(settings, engine, spark, view, output)
    if result.events:
        _record_refresh(engine, view, output, who, f"caught up {result.events} events", snap)
    return Refresh(view, output, result.events, snap, live=False)


def _record_refresh(engine: Engine, view: str, output: str, who: str | None, why: str, snap: Snapshot) -> None:
    with engine.begin() as conn:
        record_kappa_publish(conn, engine, datetime.now(timezone.utc), view, output, output, "refresh", who or getpass.getuser(),
                             why, snap)


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
