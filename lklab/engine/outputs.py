"""Reading what the engine wrote: the rows of one physical output of a view."""
from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.engine import Connection

from lklab import views


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
