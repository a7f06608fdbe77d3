"""Kappa on real services: bounded, reproducible replays into versioned outputs, validated
cutover with atomic alias swap, rollback, and a concurrent reader that never sees a mix."""
from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import update

from expectations.runner import run_suite
from lklab.kappa import cutover as co
from lklab.kappa.query import query as kappa_query
from lklab import kappa
from lklab.core import oracle
from lklab import views
from lklab.core.config import Settings
from lklab.core.events import SCHEMA_VERSION, Event, EventType
from lklab.log.generator import GeneratorConfig, generate, write_ledger
from lklab.log.produce import produce_events
from lklab.serving.store import make_engine
from tests.integration.test_cli_args import in_process

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def _load(settings: Settings):
    workload = generate(GeneratorConfig(seed=61, duration_s=360, rides_per_minute=60))
    engine = make_engine(settings)
    write_ledger(engine, workload.truth)
    produce_events(settings, workload.deliveries)
    return settings, engine, workload


@pytest.fixture
def loaded(isolated: Settings):
    return _load(isolated)


@pytest.fixture
def loaded_on_both_stores(isolated: Settings, serving_url: str | None):
    """`loaded`, once on the embedded SQLite store and once on a fresh PostgreSQL database."""
    settings, engine, workload = _load(isolated.model_copy(update={"serving_url": serving_url}))
    yield settings, engine, workload
    engine.dispose()


def as_map(rows) -> dict:
    return {(e, w): v for e, w, v in rows}


def test_a_replay_to_recorded_offsets_is_reproducible_and_equals_the_oracle(loaded) -> None:
    settings, engine, workload = loaded
    seen = []
    first = kappa.replay(settings, engine, "revenue_per_minute", 2, on_progress=seen.append)
    produce_events(settings, generate(GeneratorConfig(seed=62, duration_s=60, rides_per_minute=30,
                                                      start=workload.config.start + timedelta(hours=1))).deliveries)
    second = kappa.replay(settings, engine, "revenue_per_minute", 3, start=first.start_offsets, max_rate=20_000)

    assert first.events == len(workload.deliveries) and sum(first.target_offsets.values()) == len(workload.deliveries)
    assert seen and seen[-1].done == seen[-1].total == first.events
    v2 = as_map(kappa.read_output(engine, "revenue_per_minute", "revenue_per_minute__v2"))
    assert oracle.compare(v2, oracle.for_view("revenue_per_minute", workload.truth)).equal  # late events included
    # v3 started later, so it read more; on the first range both are identical
    v3 = as_map(kappa.read_output(engine, "revenue_per_minute", "revenue_per_minute__v3"))
    assert {k: v for k, v in v3.items() if k in v2} == v2 and second.events > first.events
    again = kappa.replay(settings, engine, "revenue_per_minute", 2)  # resumes: its target is reached, nothing changes
    assert as_map(kappa.read_output(engine, "revenue_per_minute", "revenue_per_minute__v2")).keys() >= v2.keys()
    record = kappa.build_record(engine, "revenue_per_minute__v2")
    assert record["status"] == "complete" and record["consumer_group"] == "lklab-replay-revenue_per_minute__v2"
    assert again.events == second.events - first.events  # only what arrived after v2's first target


def test_a_targeted_repair_recomputes_the_windows_of_refused_records_from_the_log(isolated: Settings) -> None:
    """With a one-hour correction horizon, a replay refuses the records more than an hour behind
    their partition (events up to six hours late, corrections, duplicates) and differs from the
    oracle; `kappa repair` recomputes only the windows they touched (and those their events' other
    versions touched) from the log, and each view then equals the oracle over every event."""
    from lklab.kappa.repair import repair

    settings = isolated.model_copy(update={"correction_horizon_s": 3600})
    found = generate(GeneratorConfig(seed=83, duration_s=5 * 3600, rides_per_minute=2, late_fraction=0.05,
                                     late_max_s=6 * 3600, correction_fraction=0.3, duplicate_fraction=0.05, users=50_000))
    # one refused correction whose original was applied: it moves a payment to another city, so
    # the original's window must be recomputed too (the correction could not retract it)
    end = found.config.start + timedelta(seconds=found.config.duration_s)
    paid = lambda eid, version, minutes, city: Event(  # noqa: E731
        event_id=eid, event_version=version, schema_version=SCHEMA_VERSION, event_type=EventType.PAYMENT_CAPTURED,
        event_time=end + timedelta(minutes=minutes), ride_id="repair-ride", user_id="repair-user", driver_id="repair-driver",
        city=city, amount_cents=700)
    moved = [paid("repair-x", 1, 60, "berlin"), paid("repair-later", 1, 180, "berlin"), paid("repair-x", 2, 55, "paris")]
    engine = make_engine(settings)
    produce_events(settings, found.deliveries + moved)
    truth_events = oracle.final_events(found.truth + moved)
    # (a refused event rarely changes a day's distinct users, as the ride's other events count the
    # rider; the moved payment's rider has no other event)
    for view in ("revenue_per_minute", "driver_earnings_daily", "daily_active_users"):
        result = kappa.replay(settings, engine, view, 1)
        truth = oracle.for_view(view, truth_events)
        before = as_map(kappa.read_output(engine, view, result.output))
        assert result.beyond_horizon > 20 and not oracle.compare(before, truth).equal, "the test would test nothing"
        fixed = repair(settings, engine, view, 1)
        assert fixed.recorded > 0 and fixed.repaired >= fixed.recorded and fixed.changed > 0
        after = as_map(kappa.read_output(engine, view, result.output))
        assert oracle.compare(after, truth).equal, oracle.compare(after, truth)
        assert fixed.changed == sum(1 for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        again = in_process(settings, "kappa", "repair", view, "--version", "1")  # the recorded windows are cleared
        assert (again.returncode, again.stdout.split(":", 1)[1].strip()) == (0, "no record was refused beyond the horizon; nothing to repair")


def test_cutover_validates_swaps_atomically_and_rolls_back_under_a_concurrent_reader(loaded_on_both_stores, spark) -> None:
    settings, engine, workload = loaded_on_both_stores
    kappa.replay(settings, engine, "driver_earnings_daily", 1)
    kappa.replay(settings, engine, "driver_earnings_daily", 2)
    v1 = as_map(kappa.read_output(engine, "driver_earnings_daily", "driver_earnings_daily__v1"))
    first = co.cutover(settings, engine, "driver_earnings_daily", 1, "first publication", spark=spark, run_suite=run_suite)
    assert first.swapped and [(c.name, c.passed) for c in first.checks] == [("hydration", True), ("gx", True), ("ledger", True), ("diff", True), ("history", True)]

    # v2 is replayed from the same log; make it differ by tampering one row so the diff has something to show
    with engine.begin() as conn:
        from lklab.serving.store import speed_view_rows

        row = conn.execute(speed_view_rows.select().where(speed_view_rows.c.view == "driver_earnings_daily__v2").limit(1)).first()
        conn.execute(update(speed_view_rows).where(speed_view_rows.c.view == row.view, speed_view_rows.c.entity == row.entity,
                                                   speed_view_rows.c.window_start == row.window_start)
                     .values(value=speed_view_rows.c.value + 500))
    v2 = as_map(kappa.read_output(engine, "driver_earnings_daily", "driver_earnings_daily__v2"))
    assert v1 != v2

    # a failing validation (v2 moves more than the stated tolerance) leaves the alias alone
    failed = co.cutover(settings, engine, "driver_earnings_daily", 2, "should fail", tolerance_pct=0.01, spark=spark, run_suite=run_suite)
    assert not failed.swapped and kappa_query(engine, "driver_earnings_daily").target == "driver_earnings_daily__v1"
    assert [c.name for c in failed.checks if not c.passed] == ["diff"]
    # the ledger sees the tampered driver-day too; the day is still open, so it is reported as in flight
    assert any(c.name == "ledger" and "+500 cents" in " ".join(c.lines) for c in failed.checks)

    seen, errors, stop = [], [], threading.Event()

    def reader() -> None:
        while not stop.is_set():
            answer = kappa_query(engine, "driver_earnings_daily")
            got = as_map(answer.rows)
            if got not in (v1, v2):
                errors.append((answer.target, len(got)))
            seen.append(answer.target)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        swapped = co.cutover(settings, engine, "driver_earnings_daily", 2, "publish v2", tolerance_pct=5.0, spark=spark, run_suite=run_suite)
        assert swapped.swapped, [c.summary for c in swapped.checks]
        diff = next(c for c in swapped.checks if c.name == "diff")
        assert "1 changed" in diff.summary and "(+500)" in diff.lines[0]
        assert co.rollback(settings, engine, "driver_earnings_daily", "v2 looks wrong", spark=spark) == ("driver_earnings_daily__v2", "driver_earnings_daily__v1")
        co.cutover(settings, engine, "driver_earnings_daily", 2, "again", tolerance_pct=5.0, spark=spark, run_suite=run_suite)
        reads_before = len(seen)
        deadline = time.monotonic() + 10
        while len(seen) < reads_before + 3 and time.monotonic() < deadline:  # the reader must also read after the last swap
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:5]  # never a mix, never empty
    assert {"driver_earnings_daily__v1", "driver_earnings_daily__v2"} <= set(seen)
    history = co.history(engine, "driver_earnings_daily")
    assert [(h["action"], h["target"], h["why"]) for h in history] == [
        ("cutover", "driver_earnings_daily__v1", "first publication"),
        ("cutover", "driver_earnings_daily__v2", "publish v2"),
        ("rollback", "driver_earnings_daily__v1", "v2 looks wrong"),
        ("cutover", "driver_earnings_daily__v2", "again"),
    ]
    assert all(h["who"] for h in history)
    assert views.VIEWS["driver_earnings_daily"]


def test_a_replay_runs_as_a_dagster_asset(loaded) -> None:
    from dagster import DagsterInstance, materialize

    from assets.kappa.replays import kappa_assets, rides_events_log
    from lklab.kappa import jobs
    from orchestration.resources import LabSettings, build_resources

    settings, engine, workload = loaded
    settings = settings.model_copy(update={"kappa_hydration_max_lag": 0})  # hydrated = every record applied
    [dau] = [a for a in kappa_assets if a.key.to_user_string() == "kappa_daily_active_users"]
    try:
        result = materialize([dau, rides_events_log], resources=build_resources(LabSettings.from_settings(settings)),
                             run_config={"ops": {"kappa_daily_active_users": {"config": {"version": 7}}}},
                             instance=DagsterInstance.ephemeral(), selection=[dau.key])
        assert result.success
        [event] = result.asset_materializations_for_node("kappa_daily_active_users")
        assert event.metadata["output"].value == "daily_active_users__v7"
        got = as_map(kappa.read_output(engine, "daily_active_users", "daily_active_users__v7"))
        assert oracle.compare(got, oracle.for_view("daily_active_users", workload.truth)).equal
    finally:
        jobs.stop(settings, "daily_active_users", 7)  # the asset started v7's live job
