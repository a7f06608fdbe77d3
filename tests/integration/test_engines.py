"""One definition, two engines: Spark (batch) and the speed sink (what the Faust agent runs)
execute each ViewSpec, and must equal each other and the oracle exactly: on a hand-checked
golden set, and on random streams with duplicates, corrections, and out-of-order events."""
from __future__ import annotations

import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hypothesis_settings, strategies as st

from lklab.lake import tables as lake
from lklab.core import oracle
from lklab import views
from lklab.core.config import Settings
from lklab.core.events import SCHEMA_VERSION, Event, EventType
from lklab.serving.store import make_engine
from lklab.engine.sink import apply_records, read_view

pytestmark = pytest.mark.integration

T0 = datetime(2026, 11, 17, 23, 0, tzinfo=timezone.utc)  # streams straddle midnight UTC
CAP, REF, OPEN, DONE = EventType.PAYMENT_CAPTURED, EventType.PAYMENT_REFUNDED, EventType.APP_OPENED, EventType.RIDE_COMPLETED


def spark_views(spark, deliveries: list[Event]) -> dict[str, dict]:
    """Spark's answer: the deliveries as bronze records (in delivery order) → parse → dedup → each view."""
    bronze = spark.createDataFrame(
        [("t", 0, offset, e.to_json()) for offset, e in enumerate(deliveries)],
        "topic string, partition int, offset long, value string",
    )
    silver = lake.dedup_latest(lake.valid_events(lake.parse_bronze(bronze)))
    out = {}
    for name, spec in views.SPEED_LAYER.items():
        rows = lake.view_frame(silver, spec).select(spec.entity, "window_start", spec.value_column).collect()
        out[name] = {(r[0], r[1].replace(tzinfo=timezone.utc)): int(r[2]) for r in rows}
    return out


def sink_views(deliveries: list[Event], batch_size: int) -> dict[str, dict]:
    """The speed layer's answer: the same deliveries through apply_records, in batches."""
    with tempfile.TemporaryDirectory() as home:
        settings = Settings(home=Path(home), allowed_lateness_s=30 * 86_400)  # no window closes: compare every row
        engine = make_engine(settings)
        records = [(0, offset, e.to_json().encode()) for offset, e in enumerate(deliveries)]
        for start in range(0, len(records), batch_size):
            apply_records(engine, settings, "t", records[start:start + batch_size])
        result = {name: {(r.entity, r.window_start): r.value for r in read_view(engine, name)} for name in views.SPEED_LAYER}
        engine.dispose()
    return result


def final_versions(deliveries: list[Event]) -> list[Event]:
    """What really happened: per event_id, the highest version (first delivered on a tie)."""
    best: dict[str, Event] = {}
    for e in deliveries:
        if e.event_id not in best or e.event_version > best[e.event_id].event_version:
            best[e.event_id] = e
    return list(best.values())


def ev(eid, etype, minutes, city="berlin", amount=None, version=1, user="u1", driver="d1") -> Event:
    return Event(event_id=eid, event_version=version, schema_version=SCHEMA_VERSION, event_type=etype,
                 event_time=T0 + timedelta(minutes=minutes), ride_id="r-" + eid, user_id=user, driver_id=driver,
                 city=city, amount_cents=amount)


GOLDEN = [
    ev("a", CAP, 10.5, amount=1000),                  # 23:10 berlin +1000
    ev("b", REF, 10.9, amount=300, user="u2"),        # 23:10 berlin -300
    ev("a", CAP, 10.5, amount=1000),                  # duplicate delivery
    ev("c", CAP, 59.99, city="paris", amount=500, user="u3", driver="d2"),  # 23:59 paris, day 17
    ev("d", CAP, 60.0, city="paris", amount=700, user="u3", driver="d2"),   # 00:00 paris, day 18
    ev("c", CAP, 59.99, city="paris", amount=450, version=2, user="u3", driver="d2"),  # correction 500 → 450
    ev("o", OPEN, 5, user="u4", driver=None),         # counts for users only
    ev("a", CAP, 10.5, amount=999, version=1),        # stale equal-version re-delivery: ignored
]
DAY17, DAY18 = datetime(2026, 11, 17, tzinfo=timezone.utc), datetime(2026, 11, 18, tzinfo=timezone.utc)
GOLDEN_ANSWER = {  # worked out by hand
    "revenue_per_minute": {("berlin", T0 + timedelta(minutes=10)): 700, ("paris", T0 + timedelta(minutes=59)): 450,
                           ("paris", T0 + timedelta(minutes=60)): 700},
    "daily_active_users": {("berlin", DAY17): 3, ("paris", DAY17): 1, ("paris", DAY18): 1},
    "driver_earnings_daily": {("d1", DAY17): 700, ("d2", DAY17): 450, ("d2", DAY18): 700},
}


def test_golden_set_gives_the_known_answer_in_both_engines(spark) -> None:
    assert spark_views(spark, GOLDEN) == GOLDEN_ANSWER
    assert sink_views(GOLDEN, batch_size=3) == GOLDEN_ANSWER
    assert {name: spec.evaluate(GOLDEN) for name, spec in views.SPEED_LAYER.items()} == GOLDEN_ANSWER


TYPES = [CAP, REF, OPEN, DONE]


@st.composite
def streams(draw) -> list[Event]:
    """A pool of logical events, each with up to three versions of fixed content, delivered in a
    random order with repeats (duplicates, stale versions, out-of-order event time)."""
    versions: dict[tuple[str, int], Event] = {}
    for i in range(draw(st.integers(1, 12))):
        etype = draw(st.sampled_from(TYPES))
        for version in range(1, draw(st.integers(1, 3)) + 1):
            versions[(f"e{i}", version)] = ev(
                f"e{i}", etype, draw(st.floats(0, 180, allow_nan=False)), city=draw(st.sampled_from(["berlin", "paris"])),
                amount=draw(st.integers(0, 5000)) if etype in (CAP, REF) else None, version=version,
                user=draw(st.sampled_from(["u1", "u2", "u3"])), driver=draw(st.sampled_from(["d1", "d2", None])),
            )
    keys = sorted(versions)
    order = draw(st.lists(st.sampled_from(keys), min_size=1, max_size=40))
    return [versions[k] for k in order]


def tagged(stream: list[Event], tag: int) -> list[Event]:
    """The stream with every id and key prefixed by its tag: streams that share one Spark job
    (one job per example, not per stream: a Spark job costs seconds) share no event and no row."""
    return [e.replace(event_id=f"s{tag}-{e.event_id}", ride_id=f"s{tag}-{e.ride_id}", user_id=f"s{tag}-{e.user_id}",
                      city=f"s{tag}-{e.city}", driver_id=None if e.driver_id is None else f"s{tag}-{e.driver_id}")
            for e in stream]


# 6 examples of up to 8 streams: about as many streams as 25 examples of one, in a quarter of the Spark jobs
@hypothesis_settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(st.tuples(streams(), st.integers(1, 10)), min_size=1, max_size=8))
def test_spark_equals_the_speed_sink_equals_the_oracle_on_random_streams(spark, runs) -> None:
    expected: dict[str, dict] = {name: {} for name in views.SPEED_LAYER}
    for tag, (deliveries, batch_size) in enumerate(runs):
        stream = tagged(deliveries, tag)
        truth = {name: oracle.for_view(name, final_versions(stream)) for name in views.SPEED_LAYER}
        assert sink_views(stream, batch_size) == truth
        for name, rows in truth.items():
            expected[name].update(rows)
    assert spark_views(spark, [e for tag, (deliveries, _) in enumerate(runs) for e in tagged(deliveries, tag)]) == expected
