"""Build records of Kappa outputs (serving table kappa_builds): what each version consumed and produced."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Engine, select

from lklab import views
from lklab.core.events import SCHEMA_VERSION
from lklab.core.provenance import git_sha
from lklab.serving.store import kappa_builds, upsert


def record(engine, spec, view, version, scope, start, target, began, status, events=0, rows=0, watermark=None,
            seconds=None, snapshot_id=None, tier_counts=None) -> None:
    row = {
        "output": spec.name, "view": view, "version": version, "status": status, "git_sha": git_sha(),
        "logic_version": spec.logic_version, "schema_version": SCHEMA_VERSION, "consumer_group": scope,
        "start_offsets": {str(k): v for k, v in start.items()}, "target_offsets": {str(k): v for k, v in target.items()},
        "events": events, "rows": rows, "watermark": watermark, "started_at": began,
        "finished_at": datetime.now(timezone.utc) if status == "complete" else None, "seconds": seconds,
        "snapshot_id": snapshot_id, "tiers": tier_counts,
    }
    with engine.begin() as conn:
        upsert(conn, kappa_builds, [row])


def build_record(engine: Engine, output: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(select(kappa_builds).where(kappa_builds.c.output == output)).mappings().first()
    return dict(row) if row else None


def outputs(engine: Engine) -> list[views.VersionedOutput]:
    """Every versioned output that has a build record, by view and version."""
    with engine.connect() as conn:
        rows = conn.execute(select(kappa_builds.c.view, kappa_builds.c.version).order_by(kappa_builds.c.view, kappa_builds.c.version))
        return [views.VersionedOutput(view, version) for view, version in rows]
