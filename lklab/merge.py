"""The Lambda serving merge: batch for windows before T, speed for windows at or after T.

T comes from the record of the promoted batch build, never from a clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, select

from lklab.builds import current_build
from lklab.serving import batch_revenue_per_minute, speed_revenue_per_minute


@dataclass(frozen=True)
class MergedRow:
    city: str
    window_start: datetime
    revenue_cents: int
    source: str  # batch | speed


@dataclass(frozen=True)
class MergedAnswer:
    rows: list[MergedRow]
    T: datetime | None
    build_id: str | None


def _range(column, city: str | None, start: datetime | None, end: datetime | None) -> list:
    table = column.table
    clauses = []
    if city is not None:
        clauses.append(table.c.city == city)
    if start is not None:
        clauses.append(column >= start)
    if end is not None:
        clauses.append(column < end)
    return clauses


def revenue_per_minute(
    engine: Engine, city: str | None = None, start: datetime | None = None, end: datetime | None = None
) -> MergedAnswer:
    """Merged revenue_per_minute over [start, end), read in one transaction (one consistent T)."""
    with engine.begin() as conn:
        build = current_build(conn)
        T = build.final_through if build else None
        rows: list[MergedRow] = []
        if build is not None and T is not None:
            b = batch_revenue_per_minute.c
            batch = conn.execute(
                select(b.city, b.window_start, b.revenue_cents)
                .where(and_(b.build_id == build.build_id, b.window_start < T, *_range(b.window_start, city, start, end)))
            )
            rows += [MergedRow(r.city, r.window_start, r.revenue_cents, "batch") for r in batch]
        s = speed_revenue_per_minute.c
        speed_filter = [s.events > 0, *_range(s.window_start, city, start, end)]
        if T is not None:
            speed_filter.append(s.window_start >= T)
        speed = conn.execute(select(s.city, s.window_start, s.revenue_cents).where(and_(*speed_filter)))
        rows += [MergedRow(r.city, r.window_start, r.revenue_cents, "speed") for r in speed]
    rows.sort(key=lambda r: (r.city, r.window_start))
    return MergedAnswer(rows=rows, T=T, build_id=build.build_id if build else None)
