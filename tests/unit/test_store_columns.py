"""lklab.serving.store.bulk_upsert_columns against bulk_upsert: the same rows, column by column."""
from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
from hypothesis import given, settings as hsettings, strategies as st
from sqlalchemy import select

from lklab.core.config import Settings
from lklab.serving.store import bulk_upsert, bulk_upsert_columns, make_engine, python_values, speed_progress

T0 = datetime(2026, 11, 17, tzinfo=timezone.utc)
moments = st.one_of(st.none(), st.integers(min_value=0, max_value=10**12).map(lambda us: T0 + timedelta(microseconds=us)))


@given(st.lists(moments, max_size=40))
def test_python_values_convert_each_distinct_value_like_one_at_a_time(values: list) -> None:
    column = pa.chunked_array([pa.array(values, pa.timestamp("us", tz="UTC"))])
    calls: list = []

    def iso(at: datetime) -> str:
        calls.append(at)
        return at.isoformat()

    assert python_values(column, iso) == [None if v is None else v.isoformat() for v in values]
    assert len(calls) == len({v for v in values if v is not None})


@hsettings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(0, 10**9), moments), max_size=30, unique_by=lambda r: r[0]))
def test_columns_write_what_rows_write(rows: list) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(Settings(home=Path(tmp)))
        updated = T0 + timedelta(days=3)
        with engine.begin() as conn:
            bulk_upsert(conn, speed_progress, [("by-rows", "t", p, nxt, mt, updated) for p, nxt, mt in rows])
            bulk_upsert_columns(conn, speed_progress,
                                {"partition": pa.array([r[0] for r in rows], pa.int64()),
                                 "next_offset": pa.array([r[1] for r in rows], pa.int64()),
                                 "max_event_time": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC"))},
                                {"scope": "by-columns", "topic": "t", "updated_at": updated})
        with engine.connect() as conn:
            found = {scope: sorted(tuple(r)[2:] for r in conn.execute(select(speed_progress).where(speed_progress.c.scope == scope)))
                     for scope in ("by-rows", "by-columns")}
        engine.dispose()
        assert found["by-rows"] == found["by-columns"] and len(found["by-rows"]) == len(rows)


anywhen = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(timezone.utc))


@given(st.lists(st.one_of(st.none(), anywhen), max_size=40))
def test_sqlite_datetimes_are_the_text_sqlalchemy_stores(values: list) -> None:
    """store.sqlite_datetimes (Arrow's formatting) against SQLAlchemy's own SQLite DATETIME
    bind processor, from year 1 to 9999, microseconds included."""
    from sqlalchemy.dialects import sqlite

    from lklab.serving.store import UTCDateTime, sqlite_datetimes

    column_type = UTCDateTime()
    proc = column_type.dialect_impl(sqlite.dialect()).bind_processor(sqlite.dialect())
    column = pa.chunked_array([pa.array(values, pa.timestamp("us", tz="UTC"))])
    assert sqlite_datetimes(column) == [proc(v) for v in values]
