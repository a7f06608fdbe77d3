"""The gate log: every gate evaluated, by either architecture (a Lambda asset check in a Dagster
run, a Kappa cutover check), with the GX Data Docs page of a suite's validation. The dashboard
shows the latest; the gates themselves stay where they block (Dagster, the cutover)."""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import Engine, select

from lklab.serving.store import gate_results


def record(engine: Engine, *, arch: str, subject: str, gate: str, status: str, summary: str,
           run_id: str | None = None, data_docs: str | None = None) -> None:
    with engine.begin() as conn:
        conn.execute(gate_results.insert().values(at=datetime.now(timezone.utc), arch=arch, run_id=run_id, subject=subject[:160],
                                                  gate=gate[:200], status=status, summary=summary[:2000], data_docs=data_docs))


def recent(engine: Engine, limit: int = 30) -> list[dict]:
    """The latest `limit` results, newest first."""
    with engine.connect() as conn:
        rows = conn.execute(select(gate_results).order_by(gate_results.c.id.desc()).limit(limit)).mappings()
        return [dict(r) for r in rows]
