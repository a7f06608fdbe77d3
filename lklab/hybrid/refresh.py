"""The hybrid design's daily step: catch a published Kappa view up to the log's end and snapshot
it, so later replays start from the snapshot instead of the beginning of the log."""
from __future__ import annotations

import getpass
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine

from lklab.core.config import Settings
from lklab.engine.snapshots import Snapshot
from lklab.kappa import build_record, replay
from lklab.kappa.cutover import publish_snapshot, published, record_kappa_publish


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
