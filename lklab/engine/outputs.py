"""Reading what the engine wrote: the rows of one physical output of a view."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

from sqlalchemy import Engine, func, select

from lklab import views
from lklab.serving.store import session_rows, speed_view_members, speed_view_rows
from lklab.views import MONEY, ViewSpec


def read_output(engine: Engine, view: str, target: str, entity=None, start=None, end=None, conn=None) -> list[tuple]:
    """Rows of one physical output of a view: (entity, window_start, value), or for user_sessions
    (user_id, day, (sessions, duration_ms))."""
    if view == "user_sessions":
        query = session_query(target, entity, start, end)
        shape = lambda r: (r[0], r[1], (r[2], r[3]))  # noqa: E731
    else:
        query = speed_view_query(dataclasses.replace(views.view(view), name=target), entity, start, end)
        shape = tuple
    if conn is not None:
        return [shape(r) for r in conn.execute(query)]
    with engine.connect() as c:
        return [shape(r) for r in c.execute(query)]


def speed_view_query(spec: ViewSpec, entity: str | None = None, start: datetime | None = None,
                     end: datetime | None = None, not_final_after: datetime | None = None):
    """SELECT entity, window_start, value for a speed view; optionally only windows that are
    not final at T (`not_final_after`), which is what the Lambda merge serves from speed."""
    if spec.measure == MONEY:
        t = speed_view_rows
        query = select(t.c.entity, t.c.window_start, t.c.value).where(t.c.view == spec.name, t.c.events > 0)
    else:
        t = speed_view_members
        query = (
            select(t.c.entity, t.c.window_start, func.count().label("value"))
            .where(t.c.view == spec.name, t.c.events > 0)
            .group_by(t.c.entity, t.c.window_start)
        )
    if entity is not None:
        query = query.where(t.c.entity == entity)
    if start is not None:
        query = query.where(t.c.window_start >= start)
    if end is not None:
        query = query.where(t.c.window_start < end)
    if not_final_after is not None:
        query = query.where(t.c.window_start > not_final_after - timedelta(seconds=spec.window_s))
    return query.order_by(t.c.entity, t.c.window_start)


def session_query(view: str, entity: str | None = None, start: datetime | None = None, end: datetime | None = None):
    """SELECT user_id, window_start, sessions, duration_ms of one sessionized output."""
    t = session_rows
    query = select(t.c.user_id, t.c.window_start, t.c.sessions, t.c.duration_ms).where(t.c.view == view)
    if entity is not None:
        query = query.where(t.c.user_id == entity)
    if start is not None:
        query = query.where(t.c.window_start >= start)
    if end is not None:
        query = query.where(t.c.window_start < end)
    return query.order_by(t.c.user_id, t.c.window_start)
