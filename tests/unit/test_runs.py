"""Batch run records on a real serving store (SQLite and PostgreSQL): the one-writer lease on event dates, the dates
a later run must rebuild, and the blocked-batch signal (set by a block, cleared by a promotion)."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest

from lklab.core import gates
from lklab.lambda_arch import runs
from lklab.core.config import Settings
from lklab.serving.store import make_engine

T0 = datetime(2026, 11, 17, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def engine(tmp_path, serving_url):
    engine = make_engine(Settings(home=tmp_path, serving_url=serving_url))
    yield engine
    engine.dispose()


def test_a_lease_is_exclusive_per_overlapping_dates_and_a_stale_one_is_taken_over(engine) -> None:
    runs.take_lease(engine, "a", "2026-11-10", "2026-11-12", timeout_s=60, now=T0)
    runs.take_lease(engine, "a", "2026-11-10", "2026-11-12", timeout_s=60, now=T0)  # idempotent for its holder
    with pytest.raises(runs.DatesBusy, match="being rebuilt by batch run a"):
        runs.take_lease(engine, "b", "2026-11-12", "2026-11-13", timeout_s=60, now=T0 + timedelta(seconds=30))
    runs.take_lease(engine, "c", "2026-11-13", "2026-11-14", timeout_s=60, now=T0)  # no overlap: fine
    assert runs.holding(engine, ["a", "b", "c", "nobody"]) == {"a", "c"}
    runs.take_lease(engine, "b", "2026-11-12", "2026-11-12", timeout_s=60, now=T0 + timedelta(seconds=61))  # a died
    assert runs.finish(engine, "a", "late") == runs.FAILED  # already ended by the takeover: stays failed
    assert runs.unpromoted_dates(engine) == [date(2026, 11, 10), date(2026, 11, 11), date(2026, 11, 12)]


def test_a_block_is_signalled_with_its_windows_and_cleared_by_a_promotion(engine) -> None:
    with engine.connect() as conn:
        assert runs.blocked(conn) is None
    runs.take_lease(engine, "r1", "2026-11-17", "2026-11-17", timeout_s=60)
    window = {"view": "revenue_per_minute", "entity": "lisbon", "window_start": T0.isoformat()}
    runs.record_gate(engine, "r1", "gold_revenue_per_minute.divergence_revenue_per_minute", "differ on 1 of 9", [window])
    runs.record_gate(engine, "r1", "gold_driver_earnings_daily.ledger_reconciliation", "1 difference", [])
    assert runs.finish(engine, "r1", "run failed") == runs.BLOCKED
    with engine.connect() as conn:
        signal = runs.blocked(conn)
    assert signal.gate == "gold_revenue_per_minute.divergence_revenue_per_minute"  # the first gate
    assert signal.windows("revenue_per_minute") == {("lisbon", T0)} and signal.windows("daily_active_users") == set()
    assert runs.unpromoted_dates(engine) == [date(2026, 11, 17)]

    # A re-run stopped by an earlier gate never reaches divergence: the windows stay flagged.
    runs.take_lease(engine, "r1b", "2026-11-17", "2026-11-17", timeout_s=60)
    runs.record_gate(engine, "r1b", "silver_events.gx_silver_events", "1 failed expectation", [])
    assert runs.finish(engine, "r1b", "run failed") == runs.BLOCKED
    with engine.connect() as conn:
        signal = runs.blocked(conn)
    assert signal.gate == "silver_events.gx_silver_events" and signal.windows("revenue_per_minute") == {("lisbon", T0)}

    runs.take_lease(engine, "r2", "2026-11-16", "2026-11-17", timeout_s=60)
    runs.promoted(engine, "r2", "b-2")
    with engine.connect() as conn:
        assert runs.blocked(conn) is None
    assert runs.unpromoted_dates(engine) == []


def test_gate_severities_have_defaults_and_validated_overrides() -> None:
    assert gates.severity({}, gates.MINUTE_COVERAGE) == gates.Severity.WARN
    assert gates.severity({}, "divergence_revenue_per_minute") == gates.Severity.FAIL
    assert gates.severity({}, "ledger_reconciliation") == gates.Severity.FAIL
    assert gates.severity({gates.MINUTE_COVERAGE: "fail"}, gates.MINUTE_COVERAGE) == gates.Severity.FAIL
    assert Settings(gate_severity={"ledger_reconciliation": "warn"}).gate_severity == {"ledger_reconciliation": "warn"}
    with pytest.raises(ValueError, match="unknown gate 'nope'"):
        Settings(gate_severity={"nope": "warn"})
    with pytest.raises(ValueError, match="one of fail, warn"):
        Settings(gate_severity={"ledger_reconciliation": "drop"})
