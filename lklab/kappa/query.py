"""Reading a Kappa view as readers see it: the version its alias points at, and how fresh it is."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from lklab import views
from lklab.core.config import SERVE_STALE, Settings
from lklab.core.staleness import apply_reader_policy
from lklab.engine.outputs import read_output
from lklab.kappa.freshness import UNPUBLISHED, Freshness, freshness
from lklab.kappa.names import KAPPA_VIEWS, ReplayError
from lklab.log import kafka_io
from lklab.serving.store import kappa_builds, serving_aliases


class UnknownView(ReplayError):
    """A view name Kappa does not have."""


@dataclass(frozen=True)
class KappaAnswer:
    view: str
    target: str | None
    rows: list[tuple]  # (entity, window_start, value)
    freshness: Freshness | None = None  # None: not asked (`query`); `serve` always judges it
    policy: str = SERVE_STALE  # the view's reader policy (an answer refused by `error` is never built)


def published(conn: Connection, view: str) -> str | None:
    return conn.execute(select(serving_aliases.c.target).where(serving_aliases.c.view == view)).scalar()


def query(engine: Engine, view: str, entity: str | None = None, start: datetime | None = None,
          end: datetime | None = None) -> KappaAnswer:
    """The published version of a Kappa view: alias and rows in one read transaction, so a
    reader sees one version, whole, even while a cutover swaps the alias."""
    return _read(engine, view, entity, start, end)


def serve(settings: Settings, engine: Engine, view: str, entity: str | None = None, start: datetime | None = None,
          end: datetime | None = None) -> KappaAnswer:
    """`query` as readers get it (`lklab query --arch kappa`, GET /kappa/views/{view}): with the
    published version's freshness, read in the same transaction as its rows, and the view's
    reader policy applied (lklab.core.staleness.StaleAnswer if it is stale and the policy is error)."""
    ends = kafka_io.end_offsets_or_none(settings)  # before the transaction: no network call while it is open
    answer = _read(engine, view, entity, start, end,
                   judge=lambda conn, target: _judge(conn, settings, view, target, ends))
    fresh = answer.freshness or UNPUBLISHED
    return replace(answer, freshness=fresh, policy=apply_reader_policy(settings, view, fresh.stale, fresh.stale_reason))


def _read(engine: Engine, view: str, entity: str | None, start: datetime | None, end: datetime | None,
          judge: Callable[[Connection, str], Freshness] | None = None) -> KappaAnswer:
    if view not in KAPPA_VIEWS:
        raise UnknownView(f"unknown view {view!r}; one of: {', '.join(KAPPA_VIEWS)}")
    with engine.begin() as conn:
        target = published(conn, view)
        rows = [] if target is None else read_output(engine, view, target, entity, start, end, conn=conn)
        fresh = None if target is None or judge is None else judge(conn, target)
    return KappaAnswer(view, target, rows, fresh)


def _judge(conn: Connection, settings: Settings, view: str, target: str, ends: kafka_io.Offsets | None) -> Freshness:
    """The freshness of the output an alias target names (its version from its build record)."""
    version = conn.execute(select(kappa_builds.c.version).where(kappa_builds.c.output == target)).scalar()
    if version is None:  # an alias no cutover wrote: nothing says which job produces it
        return Freshness(target, None, None, None, None, True, f"{target} has no build record")
    return freshness(conn, settings, views.VersionedOutput(view, version), ends)


def answer_json(answer: KappaAnswer, limit: int | None = None) -> dict[str, Any]:
    """One Kappa answer as JSON (`lklab query --arch kappa`, GET /kappa/views/{view}): the version
    served, its freshness and the reader policy, then rows in the view's measure's shape."""
    spec = views.view(answer.view)
    fresh = answer.freshness
    rows = answer.rows if limit is None else answer.rows[:limit]
    return {
        "view": answer.view, "arch": "kappa", "version": answer.target,
        "running": fresh.running if fresh else None,
        "lag": fresh.lag if fresh else None,
        "watermark": fresh.watermark.isoformat() if fresh and fresh.watermark else None,
        "heartbeat_age_s": fresh.heartbeat_age_s if fresh else None,
        "stale": fresh.stale if fresh else None,
        "stale_reason": fresh.stale_reason if fresh else None,
        "policy": answer.policy,
        "truncated": limit is not None and len(answer.rows) > limit,
        "rows": [spec.measure.row_json(spec, e, w, v) for e, w, v in rows],
    }
