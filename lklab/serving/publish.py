"""The publish log: every publish (a Lambda batch promotion, a Kappa cutover, rollback or
refresh), appended in the same transaction as the publish itself. Audits (lklab.hybrid.audit)
and the alias history (lklab.kappa.cutover) read it."""
from __future__ import annotations

import getpass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from lklab.serving.store import publish_log

LAMBDA, KAPPA = "lambda", "kappa"


def record_publish(conn: Connection, *, at: datetime, view: str, arch: str, action: str, target: str,
                   from_target: str | None, why: str, build: dict, delta_versions: dict[str, int],
                   snapshot_id: str | None = None, who: str | None = None, checks: list[dict] | None = None) -> None:
    """Append one publish; call it inside the transaction that publishes."""
    conn.execute(publish_log.insert(), [{
        "at": at, "view": view, "arch": arch, "action": action, "target": target, "from_target": from_target,
        "who": who or getpass.getuser(), "why": why, "build": build, "snapshot_id": snapshot_id,
        "delta_versions": delta_versions, "checks": checks or [],
    }])


def history(engine: Engine, view: str | None = None) -> list[dict]:
    query = select(publish_log).order_by(publish_log.c.id)
    if view is not None:
        query = query.where(publish_log.c.view == view)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
