"""The oracle on a hand-written event set whose answers are worked out by hand."""
from __future__ import annotations

from datetime import date, datetime, timezone

from lklab.core import oracle
from lklab.core.events import SCHEMA_VERSION, Event, EventType


def _ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def ev(
    eid: str,
    etype: EventType,
    at: str,
    *,
    city: str = "berlin",
    user: str = "u1",
    driver: str | None = "d1",
    amount: int | None = None,
    version: int = 1,
) -> Event:
    return Event(
        event_id=eid, event_version=version, schema_version=SCHEMA_VERSION, event_type=etype,
        event_time=_ts(at), ride_id=eid.split("-")[0], user_id=user, driver_id=driver, city=city,
        amount_cents=amount,
    )


CAP, REF = EventType.PAYMENT_CAPTURED, EventType.PAYMENT_REFUNDED

EVENTS = [
    ev("r1-open", EventType.APP_OPENED, "2026-11-17T23:58:10", driver=None),
    ev("r1-cap", CAP, "2026-11-17T23:59:59.999", amount=1000),
    ev("r1-ref", REF, "2026-11-18T00:00:00.000", amount=300),  # next minute and next day
    ev("r2-cap", CAP, "2026-11-17T23:59:00", amount=500, user="u2", driver="d2"),
    ev("r2-cap", CAP, "2026-11-17T23:59:00", amount=500, user="u2", driver="d2"),  # duplicate
    ev("r3-cap", CAP, "2026-11-17T23:59:30", amount=9999, user="u3"),  # wrong first version
    ev("r3-cap", CAP, "2026-11-17T23:59:30", amount=700, user="u3", version=2),  # correction wins
    ev("r3-cap", CAP, "2026-11-17T23:59:30", amount=9999, user="u3"),  # stale redelivery after it
    ev("r4-cap", CAP, "2026-11-17T23:59:45", amount=250, city="paris", user="u1", driver="d3"),
    ev("r4-ref", REF, "2026-11-17T23:59:50", amount=250, city="paris", user="u1", driver="d3"),
    ev("r5-open", EventType.APP_OPENED, "2026-11-18T00:00:30", driver=None, user="u2"),
]
MINUTE = _ts("2026-11-17T23:59:00")
NEXT = _ts("2026-11-18T00:00:00")
DAY, NEXT_DAY = date(2026, 11, 17), date(2026, 11, 18)


def test_revenue_per_minute() -> None:
    assert oracle.revenue_per_minute(EVENTS) == {
        ("berlin", MINUTE): 1000 + 500 + 700,
        ("berlin", NEXT): -300,
        ("paris", MINUTE): 0,  # fully refunded: the row exists with zero revenue
    }


def test_minute_keys_are_aware_utc_minute_starts() -> None:
    for _, minute in oracle.revenue_per_minute(EVENTS):
        assert minute.tzinfo is not None and minute.utcoffset().total_seconds() == 0
        assert minute.second == 0 and minute.microsecond == 0


def test_daily_active_users() -> None:
    assert oracle.daily_active_users(EVENTS) == {
        ("berlin", DAY): 3,  # u1, u2, u3
        ("berlin", NEXT_DAY): 2,  # u1 (refund), u2 (app_opened)
        ("paris", DAY): 1,
    }


def test_driver_earnings_daily() -> None:
    assert oracle.driver_earnings_daily(EVENTS) == {
        ("d1", DAY): 1000 + 700,
        ("d1", NEXT_DAY): -300,
        ("d2", DAY): 500,
        ("d3", DAY): 0,
    }


def test_non_utc_event_times_are_bucketed_in_utc() -> None:
    from datetime import timedelta

    cet = timezone(timedelta(hours=1))
    event = ev("r9-cap", CAP, "2026-11-17T00:30:00", amount=100).replace(event_time=datetime(2026, 11, 18, 0, 30, tzinfo=cet))
    assert oracle.revenue_per_minute([event]) == {("berlin", _ts("2026-11-17T23:30:00")): 100}
    assert oracle.daily_active_users([event]) == {("berlin", DAY): 1}


def test_final_events_keeps_highest_version() -> None:
    finals = {e.event_id: e for e in oracle.final_events(EVENTS)}
    assert len(finals) == 8
    assert finals["r3-cap"].event_version == 2 and finals["r3-cap"].amount_cents == 700


def test_compare_equal() -> None:
    expected = oracle.revenue_per_minute(EVENTS)
    result = oracle.compare(dict(expected), expected)
    assert result.equal
    assert (result.rows_expected, result.rows_actual, result.exact_matches) == (3, 3, 3)
    assert result.max_abs_error == 0 and not result.missing and not result.unexpected


def test_compare_reports_each_kind_of_difference() -> None:
    expected = {("a", 1): 100, ("b", 1): 50, ("c", 1): 7}
    actual = {("a", 1): 100, ("b", 1): 80, ("d", 1): -5}
    result = oracle.compare(actual, expected)
    assert not result.equal
    assert result.rows_expected == 3 and result.rows_actual == 3
    assert result.exact_matches == 1
    assert result.missing == [("c", 1)]
    assert result.unexpected == [("d", 1)]
    assert result.mismatched == [("b", 1)]
    assert result.max_abs_error == 30
    assert "1/3 rows exact" in str(result)


def test_compare_counts_a_missing_zero_row_as_a_difference() -> None:
    result = oracle.compare({}, {("paris", 1): 0})
    assert not result.equal and result.max_abs_error == 0 and result.missing == [("paris", 1)]


def test_compare_empty() -> None:
    assert oracle.compare({}, {}).equal
