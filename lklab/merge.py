"""The Lambda serving merge: batch for windows that are final at T, speed for the rest.

T comes from the record of the promoted batch build, never from a clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, select

from lklab import views
from lklab.builds import current_build
from lklab.serving import batch_view_rows, speed_view_query


@dataclass(frozen=True)
class MergedRow:
    entity: str
    window_start: datetime
    value: int
    source: str  # batch | speed


@dataclass(frozen=True)
class MergedAnswer:
    view: str
    rows: list[MergedRow]
    T: datetime | None
    build_id: str | None


def _batch_query(spec: views.ViewSpec, build_id: str, T: datetime, entity, start, end):
    b = batch_view_rows.c
    query = select(b.entity, b.window_start, b.value).where(
        b.build_id == build_id, b.view == spec.name, b.window_start <= T - timedelta(seconds=spec.window_s)
    )
    if entity is not None:
        query = query.where(b.entity == entity)
    if start is not None:
        query = query.where(b.window_start >= start)
    if end is not None:
        query = query.where(b.window_start < end)
    return query


def query(
    engine: Engine, view: str, entity: str | None = None, start: datetime | None = None, end: datetime | None = None
) -> MergedAnswer:
    """A merged view over window starts in [start, end), read in one transaction (one consistent T)."""
    spec = views.view(view)
    with engine.begin() as conn:
        build = current_build(conn)
        T = build.final_through if build else None
        rows: list[MergedRow] = []
        if build is not None and T is not None:
            batch = conn.execute(_batch_query(spec, build.build_id, T, entity, start, end))
            rows += [MergedRow(e, w, v, "batch") for e, w, v in batch]
        speed = conn.execute(speed_view_query(spec, entity, start, end, not_final_after=T))
        rows += [MergedRow(e, w, v, "speed") for e, w, v in speed]
    rows.sort(key=lambda r: (r.entity, r.window_start))
    return MergedAnswer(view=view, rows=rows, T=T, build_id=build.build_id if build else None)
