"""The ledger gate (lklab.lake.reconcile.compare_to_ledger) against a real SQLite serving store
holding a hand-written payments ledger; per-day revenue and per-driver-day earnings written by hand."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from lklab.core.config import Settings
from lklab.core.events import SCHEMA_VERSION, Event, EventType
from lklab.lake.reconcile import MAX_REPORTED, compare_to_ledger
from lklab.log.generator import write_ledger
from lklab.serving.store import make_engine

CAP, REF, OPEN = EventType.PAYMENT_CAPTURED, EventType.PAYMENT_REFUNDED, EventType.APP_OPENED
D1, D2 = date(2026, 11, 17), date(2026, 11, 18)
GRACE_S = 3600  # one hour: day D is closed once the watermark reaches D + 1 day + 1 h


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def ev(eid: str, etype: EventType, time: str, amount: int | None, driver: str | None = "d1", version: int = 1) -> Event:
    return Event(event_id=eid, event_version=version, schema_version=SCHEMA_VERSION, event_type=etype, event_time=at(time),
                 ride_id=eid.split("-")[0], user_id="u1", driver_id=driver, city="berlin", amount_cents=amount)


LEDGER = [
    ev("r1-cap", CAP, "2026-11-17T10:00:00", 1000),
    ev("r1-ref", REF, "2026-11-17T23:59:59.999", 300),  # last millisecond of D1: still D1
    ev("r2-cap", CAP, "2026-11-17T12:00:00", 500, driver="d2"),
    ev("r3-cap", CAP, "2026-11-18T00:00:00", 250),  # first instant of D2
    ev("r4-cap", CAP, "2026-11-18T08:00:00", 400, driver=None),  # money of the day, nobody's earnings
    ev("r5-open", OPEN, "2026-11-18T09:00:00", None),  # not a payment: write_ledger leaves it out
]
# By hand: D1 = 1000 - 300 + 500 = 1200; D2 = 250 + 400 = 650.
REVENUE = {D1: 1200, D2: 650}
# d1: D1 1000 - 300 = 700, D2 250; d2: D1 500; r4 has no driver.
EARNINGS = {("d1", D1): 700, ("d2", D1): 500, ("d1", D2): 250}

D1_CLOSES = at("2026-11-18T01:00:00")  # D1 ends at 11-18T00:00, + 1 h grace
D2_CLOSES = at("2026-11-19T01:00:00")  # D2 ends at 11-19T00:00, + 1 h grace
JUST_BEFORE = timedelta(microseconds=1)


@pytest.fixture
def settings(tmp_path: Path, serving_url: str | None) -> Settings:
    return Settings(home=tmp_path, ledger_grace_s=GRACE_S, serving_url=serving_url)


@pytest.fixture
def engine(settings: Settings):
    engine = make_engine(settings)
    assert write_ledger(engine, LEDGER) == 5
    yield engine
    engine.dispose()


def test_revenue_and_earnings_equal_to_the_cent_pass_on_closed_days(engine, settings: Settings) -> None:
    report = compare_to_ledger(engine, settings, dict(REVENUE), dict(EARNINGS), D2_CLOSES)
    assert report.passed
    assert report.summary == "equals the ledger to the cent on 2 closed days"
    assert report.differences == []
    assert report.details == {"evaluated": True, "days": ["2026-11-17", "2026-11-18"],
                              "closed_days": ["2026-11-17", "2026-11-18"], "failures": 0, "in_flight": 0}


def test_one_cent_off_on_a_day_closed_exactly_at_the_grace_boundary_fails(engine, settings: Settings) -> None:
    # The watermark is exactly end of D1 + grace: D1 is closed (≤), D2 is not.
    report = compare_to_ledger(engine, settings, {D1: 1201, D2: 650}, None, D1_CLOSES)
    assert not report.passed
    assert report.summary == "1 differences from the ledger on closed days"
    assert report.differences == ["revenue 2026-11-17: got 1201 vs ledger 1200 (+1 cents)"]
    assert report.details["closed_days"] == ["2026-11-17"] and report.details["failures"] == 1


def test_one_cent_off_within_the_grace_period_is_in_flight(engine, settings: Settings) -> None:
    # One microsecond before D1 closes: its difference is reported, but does not fail the gate.
    report = compare_to_ledger(engine, settings, {D1: 1199, D2: 650}, None, D1_CLOSES - JUST_BEFORE)
    assert report.passed
    assert report.summary == "equals the ledger to the cent on 0 closed days; 1 differences on open days (events still in flight)"
    assert report.differences == ["revenue 2026-11-17: got 1199 vs ledger 1200 (-1 cents)"]
    assert report.details["closed_days"] == [] and report.details["in_flight"] == 1


def test_without_a_watermark_no_day_is_closed(engine, settings: Settings) -> None:
    report = compare_to_ledger(engine, settings, {D1: 1201, D2: 651}, None, None)
    assert report.passed
    assert report.details["closed_days"] == [] and report.details["in_flight"] == 2
    assert report.differences == ["revenue 2026-11-17: got 1201 vs ledger 1200 (+1 cents)",
                                  "revenue 2026-11-18: got 651 vs ledger 650 (+1 cents)"]


def test_closed_and_open_differences_together_fail_on_the_closed_one_only(engine, settings: Settings) -> None:
    report = compare_to_ledger(engine, settings, {D1: 1201, D2: 651}, None, D1_CLOSES)
    assert not report.passed
    assert report.differences == ["revenue 2026-11-17: got 1201 vs ledger 1200 (+1 cents)"]  # only the failures
    assert (report.details["failures"], report.details["in_flight"]) == (1, 1)


def test_the_default_grace_is_two_days(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    assert settings.ledger_grace_s == 48 * 3600
    engine = make_engine(settings)
    try:
        write_ledger(engine, LEDGER)
        closes = at("2026-11-20T00:00:00")  # end of D1 (11-18T00:00) + 48 h
        assert compare_to_ledger(engine, settings, {D1: 1201, D2: 650}, None, closes - JUST_BEFORE).passed
        late = compare_to_ledger(engine, settings, {D1: 1201, D2: 650}, None, closes)
        assert not late.passed and late.differences == ["revenue 2026-11-17: got 1201 vs ledger 1200 (+1 cents)"]
    finally:
        engine.dispose()


def test_a_driver_day_one_cent_off_fails_once_closed(engine, settings: Settings) -> None:
    earnings = {**EARNINGS, ("d2", D1): 499}
    report = compare_to_ledger(engine, settings, dict(REVENUE), earnings, D1_CLOSES)
    assert not report.passed
    assert report.differences == ["driver d2 2026-11-17: got 499 vs ledger 500 (-1 cents)"]
    assert compare_to_ledger(engine, settings, dict(REVENUE), earnings, D1_CLOSES - JUST_BEFORE).passed


def test_a_payment_without_a_driver_is_nobodys_earnings(engine, settings: Settings) -> None:
    # Crediting r4's 400 cents to any driver is a difference: the ledger has no driver for it.
    earnings = {**EARNINGS, ("d1", D2): 650}
    report = compare_to_ledger(engine, settings, None, earnings, D2_CLOSES)
    assert not report.passed
    assert report.differences == ["driver d1 2026-11-18: got 650 vs ledger 250 (+400 cents)"]


def test_missing_and_extra_days_count_as_zero(engine, settings: Settings) -> None:
    extra = date(2026, 11, 19)
    report = compare_to_ledger(engine, settings, {D1: 1200, extra: 5}, None, at("2026-11-21T00:00:00"))
    assert not report.passed
    assert report.differences == ["revenue 2026-11-18: got 0 vs ledger 650 (-650 cents)",
                                  "revenue 2026-11-19: got 5 vs ledger 0 (+5 cents)"]
    assert report.details["days"] == ["2026-11-17", "2026-11-18"]  # the ledger's days


def test_none_skips_a_breakdown_the_output_does_not_have(engine, settings: Settings) -> None:
    # Revenue only: the per-driver ledger is not compared with anything.
    assert compare_to_ledger(engine, settings, dict(REVENUE), None, D2_CLOSES).passed
    # Earnings only: the per-day totals are not compared either.
    assert compare_to_ledger(engine, settings, None, dict(EARNINGS), D2_CLOSES).passed
    assert not compare_to_ledger(engine, settings, None, {**EARNINGS, ("d1", D1): 701}, D2_CLOSES).passed


def test_a_corrected_ledger_row_counts_at_its_latest_amount(engine, settings: Settings) -> None:
    write_ledger(engine, [ev("r2-cap", CAP, "2026-11-17T12:00:00", 520, driver="d2", version=2)])
    assert not compare_to_ledger(engine, settings, dict(REVENUE), None, D2_CLOSES).passed
    assert compare_to_ledger(engine, settings, {D1: 1220, D2: 650}, {**EARNINGS, ("d2", D1): 520}, D2_CLOSES).passed


def test_reported_differences_are_capped_but_counted(engine, settings: Settings) -> None:
    stray = {(f"x{i:02d}", D1): 1 for i in range(MAX_REPORTED + 5)}  # 25 drivers the ledger never paid
    report = compare_to_ledger(engine, settings, dict(REVENUE), {**EARNINGS, **stray}, D2_CLOSES)
    assert not report.passed
    assert report.summary == f"{MAX_REPORTED + 5} differences from the ledger on closed days"
    assert len(report.differences) == MAX_REPORTED
    assert report.differences[0] == "driver x00 2026-11-17: got 1 vs ledger 0 (+1 cents)"


def test_an_empty_ledger_has_nothing_to_reconcile(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, ledger_grace_s=GRACE_S)
    engine = make_engine(settings)
    try:
        report = compare_to_ledger(engine, settings, {D1: 1}, {("d1", D1): 1}, D2_CLOSES)
    finally:
        engine.dispose()
    assert report.passed and report.details == {"evaluated": False}
    assert report.summary == "no ledger rows: nothing to reconcile against"
