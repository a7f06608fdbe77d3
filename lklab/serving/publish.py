"""The publish log: every publish (a Lambda batch promotion, a Kappa cutover, rollback or
refresh), appended in the same transaction as the publish itself. Audits (lklab.hybrid.audit)
and the alias history (lklab.kappa.cutover) read it."""
from __future__ import annotations

import getpass
from datetime import datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.engine import Connection

from lklab.serving.store import publish_log

LAMBDA, KAPPA = "lambda", "kappa"


def record_publish(conn: Connection, *, at: datetime, view: str, arch: str, action: str, target: str,
                   from_target: str | None, why: str, build: dict, delta_versions: dict[str, int],
                   snapshot_id: str | None = None, who: str | None = None, checks: list[dict] | None = None) -> int:
    """Append one publish; call it inside the transaction that publishes. Returns its id."""
    return conn.execute(publish_log.insert().values(**{
        "at": at, "view": view, "arch": arch, "action": action, "target": target, "from_target": from_target,
        "who": who or getpass.getuser(), "why": why, "build": build, "snapshot_id": snapshot_id,
        "delta_versions": delta_versions, "checks": checks or [],
    })).inserted_primary_key[0]


def attach_snapshot(conn: Connection, publish_id: int, snapshot_id: str, delta_versions: dict[str, int]) -> None:
    """Name the snapshot of what a publish served, taken after an instant swap (a rollback)."""
    conn.execute(update(publish_log).where(publish_log.c.id == publish_id)
                 .values(snapshot_id=snapshot_id, delta_versions=delta_versions))


def history(engine: Engine, view: str | None = None) -> list[dict]:
    query = select(publish_log).order_by(publish_log.c.id)
    if view is not None:
        query = query.where(publish_log.c.view == view)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
