"""Reading what the engine wrote: the rows of one physical output of a view."""
from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import Connection

from lklab import views
from lklab.serving.store import speed_late_windows


def read_output(engine: Engine | None, view: str, target: str, entity: str | None = None, start: datetime | None = None,
                end: datetime | None = None, conn: Connection | None = None) -> list[tuple]:
    """Rows (entity, window_start, value) of output `target` of `view`; the value's shape is its
    measure's (an int, or (sessions, duration_ms))."""
    spec = dataclasses.replace(views.view(view), name=target)
    query = spec.measure.output_query(spec, entity, start, end)
    if conn is not None:
        return [(r[0], r[1], spec.measure.value(r)) for r in conn.execute(query)]
    with engine.connect() as c:
        return [(r[0], r[1], spec.measure.value(r)) for r in c.execute(query)]


def output_rows(conn: Connection, view: str, target: str) -> int:
    """How many rows output `target` of `view` serves (read_output's length, counted by the store)."""
    spec = dataclasses.replace(views.view(view), name=target)
    return conn.execute(select(func.count()).select_from(spec.measure.output_query(spec, None, None, None).subquery())).scalar_one()


def late_windows(conn: Connection, view: str, entity: str | None = None) -> dict[tuple[str, datetime], int]:
    """Windows of an output that the speed layer closed and then left late events of to batch,
    with how many it left (few, and only meaningful above T, where speed serves them)."""
    t = speed_late_windows
    query = select(t.c.entity, t.c.window_start, t.c.dropped).where(t.c.view == view)
    if entity is not None:
        query = query.where(t.c.entity == entity)
    return {(e, w): n for e, w, n in conn.execute(query)}
