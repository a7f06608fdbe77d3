"""Reading a Kappa view as readers see it: the version its alias points at."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.engine import Connection

from lklab import views
from lklab.engine.outputs import read_output
from lklab.kappa.names import KAPPA_VIEWS, ReplayError
from lklab.serving.store import serving_aliases


class UnknownView(ReplayError):
    """A view name Kappa does not have."""


@dataclass(frozen=True)
class KappaAnswer:
    view: str
    target: str | None
    rows: list[tuple]  # (entity, window_start, value)


def published(conn: Connection, view: str) -> str | None:
    return conn.execute(select(serving_aliases.c.target).where(serving_aliases.c.view == view)).scalar()


def query(engine: Engine, view: str, entity: str | None = None, start: datetime | None = None,
          end: datetime | None = None) -> KappaAnswer:
    """The published version of a Kappa view: alias and rows in one read transaction, so a
    reader sees one version, whole, even while a cutover swaps the alias."""
    if view not in KAPPA_VIEWS:
        raise UnknownView(f"unknown view {view!r}; one of: {', '.join(KAPPA_VIEWS)}")
    with engine.begin() as conn:
        target = published(conn, view)
        rows = [] if target is None else read_output(engine, view, target, entity, start, end, conn=conn)
    return KappaAnswer(view, target, rows)


def answer_json(answer: KappaAnswer) -> dict[str, Any]:
    """One Kappa answer as JSON (`lklab query --arch kappa`): rows in the view's measure's shape."""
    spec = views.view(answer.view)
    return {"view": answer.view, "arch": "kappa", "version": answer.target,
            "rows": [spec.measure.row_json(spec, e, w, v) for e, w, v in answer.rows]}
