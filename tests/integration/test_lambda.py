"""The Lambda architecture on real services: late data and corrections across T, degraded mode,
and the blocking gates (divergence, GX, ledger) that decide promotion. Expected values come from
the generator's oracle or are worked out by hand, never from the code under test."""
from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from lklab.lambda_arch import merge
from lklab.core import oracle
from lklab.lambda_arch import speed
from lklab import views
from lklab.api.app import create_app
from orchestration.launch import run_batch
from lklab.lambda_arch.builds import current_build
from lklab.core.config import Settings
from lklab.core.events import SCHEMA_VERSION, Event, EventType
from lklab.log.generator import GeneratorConfig, generate, write_ledger
from lklab.log.produce import produce_events
from lklab.serving.store import batch_view_rows, make_engine, payments_ledger
from lklab.engine.outputs import late_windows
from lklab.engine.sink import read_view
from lklab.serving.progress import read_counters

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

CAP, REF = EventType.PAYMENT_CAPTURED, EventType.PAYMENT_REFUNDED
START = datetime(2026, 11, 17, 10, 0, tzinfo=timezone.utc)


@pytest.fixture
def lab(isolated: Settings):
    """Isolated settings with a short lateness (so minutes become final within a small workload)
    and a real speed worker, always stopped at the end."""
    settings = isolated.model_copy(update={"allowed_lateness_s": 60, "speed_heartbeat_timeout_s": 3.0})
    speed.start(settings)
    try:
        yield settings
    finally:
        speed.stop(settings)


SPEED_VIEWS = list(views.SPEED_LAYER)  # the views with a speed layer: what the T-contract tests read


@pytest.fixture
def speed_views_lab(lab: Settings) -> Settings:
    """`lab` whose batch layer builds the speed layer's views only (not user_sessions, which
    these tests never read): each batch run skips the sessionization."""
    return lab.model_copy(update={"batch_views": SPEED_VIEWS})


@pytest.fixture
def revenue_lab(lab: Settings) -> Settings:
    """`lab` whose batch layer builds, gates and promotes revenue_per_minute only
    (LKLAB_BATCH_VIEWS), for tests of that view: a batch run takes about 40 % less."""
    return lab.model_copy(update={"batch_views": ["revenue_per_minute"]})


def produce(settings: Settings, events: Iterable[Event]) -> None:
    report = produce_events(settings, list(events))
    assert report.dead_lettered == 0
    speed.wait_caught_up(settings, timeout_s=120)


def merged(settings: Settings, view: str, **kwargs) -> dict:
    answer = merge.query(make_engine(settings), view, **kwargs)
    return {(r.entity, r.window_start): r.value for r in answer.rows}


def documented_gap(settings: Settings, view: str, T: datetime) -> set:
    """The merge's one documented gap (see tests/unit/test_corrections.py): speed rows at or after
    the build's T in windows the speed layer closed and left a late event of to batch. Its
    watermark can run ahead of the batch's (a superseded version carried a later event time), and
    whether a window falls there depends on the order the partitions' records met the fold. Such
    rows must say so (left_to_batch) and be late windows at or after T."""
    engine = make_engine(settings)
    gap = {(r.entity, r.window_start) for r in merge.query(engine, view).rows if r.left_to_batch}
    with engine.connect() as conn:
        late = set(late_windows(conn, view))
    assert all(w >= T for _, w in gap) and gap <= late, (gap, late, T)
    return gap


def promoted_build_id(settings: Settings) -> str | None:
    with make_engine(settings).connect() as conn:
        build = current_build(conn)
    return build.build_id if build else None


def batch_ok(settings: Settings, dates=None):
    outcome = run_batch(settings, dates)
    assert outcome.success, f"{outcome.message}: {outcome.failed_gates}"
    return outcome


def event(eid: str, etype: EventType, at: datetime, city: str, amount: int, version: int = 1, user: str = "u-x") -> Event:
    return Event(event_id=eid, event_version=version, schema_version=SCHEMA_VERSION, event_type=etype, event_time=at,
                 ride_id="ride-" + eid, user_id=user, driver_id="d-x", city=city, amount_cents=amount)


def test_a_late_event_after_T_is_corrected_by_the_next_batch(speed_views_lab: Settings) -> None:
    lab = speed_views_lab
    workload = generate(GeneratorConfig(seed=41, duration_s=480, rides_per_minute=60))
    write_ledger(make_engine(lab), workload.truth)
    truth = oracle.for_view("revenue_per_minute", workload.truth)
    # Hold back one capture from an early minute: it arrives after the first batch promoted T.
    held = next(e for e in workload.truth if e.event_type == CAP and e.event_time < START + timedelta(minutes=3))
    key = (held.city, views.window_start(held.event_time))
    produce(lab, [e for e in workload.deliveries if e.event_id != held.event_id])

    batch_ok(lab)
    first_build = promoted_build_id(lab)
    T1 = merge.query(make_engine(lab), "revenue_per_minute").T
    assert key[1] < T1, "the held-back event's window must be final at the first T"
    before, gap = merged(lab, "revenue_per_minute"), documented_gap(lab, "revenue_per_minute", T1)
    assert key not in gap and before[key] == truth[key] - held.amount_cents  # batch has not seen it yet
    assert {k: v for k, v in before.items() if k != key and k not in gap} == {k: v for k, v in truth.items() if k != key and k not in gap}

    dropped_before = read_counters(make_engine(lab), lab.speed_group)["late_dropped"]  # 60 s lateness: some generated events too
    produce(lab, [held])  # later than T: the speed layer must not touch the final window
    assert read_counters(make_engine(lab), lab.speed_group)["late_dropped"] == dropped_before + 1
    assert merged(lab, "revenue_per_minute")[key] == truth[key] - held.amount_cents

    second = batch_ok(lab)
    T2 = merge.query(make_engine(lab), "revenue_per_minute").T
    after, gap = merged(lab, "revenue_per_minute"), documented_gap(lab, "revenue_per_minute", T2)
    assert oracle.compare({k: v for k, v in after.items() if k not in gap}, {k: v for k, v in truth.items() if k not in gap}).equal
    assert promoted_build_id(lab) != first_build
    gates = {g.gate: g for g in second.gates}
    assert gates["gold_revenue_per_minute.divergence_revenue_per_minute"].passed  # late window excluded, not a false alarm
    for name in ("daily_active_users", "driver_earnings_daily"):
        assert oracle.compare(merged(lab, name), oracle.for_view(name, workload.truth)).equal, name


def test_a_correction_changes_the_speed_view_by_exactly_the_difference(lab: Settings) -> None:
    at = START + timedelta(minutes=1, seconds=5)
    minute, day = views.window_start(at), views.window_start(at, views.DAY_S)
    produce(lab, [event("c1", CAP, at, "berlin", 1000, user="u-1"), event("c2", CAP, at, "berlin", 77, user="u-2")])
    engine = make_engine(lab)
    revenue = {(r.entity, r.window_start): r.value for r in read_view(engine, "revenue_per_minute")}
    earnings = {(r.entity, r.window_start): r.value for r in read_view(engine, "driver_earnings_daily")}
    users = {(r.entity, r.window_start): r.value for r in read_view(engine, "daily_active_users")}
    assert revenue[("berlin", minute)] == 1077 and earnings[("d-x", day)] == 1077 and users[("berlin", day)] == 2

    produce(lab, [event("c1", CAP, at, "berlin", 1250, version=2, user="u-1")])
    revenue2 = {(r.entity, r.window_start): r.value for r in read_view(engine, "revenue_per_minute")}
    earnings2 = {(r.entity, r.window_start): r.value for r in read_view(engine, "driver_earnings_daily")}
    users2 = {(r.entity, r.window_start): r.value for r in read_view(engine, "daily_active_users")}
    assert revenue2[("berlin", minute)] - revenue[("berlin", minute)] == 250
    assert earnings2[("d-x", day)] - earnings[("d-x", day)] == 250
    assert users2 == users  # same rider: no change to distinct users
    produce(lab, [event("c1", CAP, at, "berlin", 1000, version=1, user="u-1")])  # a stale v1 re-delivery
    assert {(r.entity, r.window_start): r.value for r in read_view(engine, "revenue_per_minute")} == revenue2


def test_a_dead_speed_worker_degrades_serving_to_batch_only_with_a_staleness_flag(revenue_lab: Settings) -> None:
    lab = revenue_lab
    workload = generate(GeneratorConfig(seed=43, duration_s=300, rides_per_minute=60))
    produce(lab, workload.deliveries)
    batch_ok(lab)
    engine = make_engine(lab)
    healthy = merge.query(engine, "revenue_per_minute", health=merge.current_speed_health(engine, lab))
    assert healthy.mode == "lambda" and not healthy.stale and {r.source for r in healthy.rows} == {"batch", "speed"}

    assert speed.stop(lab)
    time.sleep(lab.speed_heartbeat_timeout_s + 1.5)
    health = merge.current_speed_health(engine, lab)
    assert not health.healthy and "heartbeat" in health.reason
    degraded = merge.query(engine, "revenue_per_minute", health=health)
    assert degraded.stale and degraded.mode == "batch-only" and {r.source for r in degraded.rows} == {"batch"}
    with engine.connect() as conn:
        build_rows = {(e, w): v for e, w, v in conn.execute(
            select(batch_view_rows.c.entity, batch_view_rows.c.window_start, batch_view_rows.c.value)
            .where(batch_view_rows.c.build_id == degraded.build_id, batch_view_rows.c.view == "revenue_per_minute"))}
    assert {(r.entity, r.window_start): r.value for r in degraded.rows} == build_rows  # every window, no speed row

    # The batch layer keeps working while speed is down: new events still get promoted.
    more = generate(GeneratorConfig(seed=44, duration_s=120, rides_per_minute=60, start=START + timedelta(minutes=5)))
    produce_events(lab, more.deliveries)
    outcome = batch_ok(lab)
    assert any("not evaluated" in g.description for g in outcome.gates if "divergence" in g.gate)

    client = TestClient(create_app(lab))
    body = client.get("/views/revenue_per_minute", params={"key": "berlin"}).json()
    assert body["stale"] is True and body["mode"] == "batch-only" and body["rows"]
    assert all(row["source"] == "batch" and "city" in row for row in body["rows"])
    assert client.get("/lambda/status").json()["speed"]["healthy"] is False
    assert client.get("/views/revenue_per_minute", params={"from": "yesterday"}).status_code == 422
    assert client.get("/views/revenue_per_hour").status_code == 404


def test_an_injected_speed_bug_fails_the_divergence_gate_and_blocks_promotion(revenue_lab: Settings) -> None:
    lab = revenue_lab
    first = generate(GeneratorConfig(seed=45, duration_s=240, rides_per_minute=60, refund_fraction=0.3))
    produce(lab, first.deliveries)
    batch_ok(lab)
    good_build = promoted_build_id(lab)

    speed.stop(lab)
    buggy = lab.model_copy(update={"faults": {"speed": "refund_sign"}})
    speed.start(buggy)
    second = generate(GeneratorConfig(seed=46, duration_s=300, rides_per_minute=60, refund_fraction=0.3,
                                      start=START + timedelta(minutes=4)))
    produce(buggy, second.deliveries)
    outcome = run_batch(buggy)
    speed.stop(buggy)

    assert not outcome.success
    failed = [line for line in outcome.failed_gates if "divergence_revenue_per_minute" in line]
    assert failed and "batch and speed differ" in failed[0] and "batch " in failed[0] and "vs speed" in failed[0]
    assert promoted_build_id(lab) == good_build  # the previous build stays published


def test_data_that_breaks_a_gx_suite_blocks_promotion_and_the_old_build_stays(revenue_lab: Settings) -> None:
    lab = revenue_lab
    workload = generate(GeneratorConfig(seed=47, duration_s=240, rides_per_minute=60))
    produce(lab, workload.deliveries)
    batch_ok(lab)
    good_build, good_answer = promoted_build_id(lab), merged(lab, "revenue_per_minute")

    # Valid events, but berlin then has empty minutes between 10:04 and 10:30: a coverage gap,
    # which blocks once its severity is raised from warn (the default) to fail.
    strict = lab.model_copy(update={"gate_severity": {"gx_gold_revenue_per_minute.minute_coverage": "fail"}})
    produce(lab, [event("gap-1", CAP, START + timedelta(minutes=30), "berlin", 100),
                  event("gap-2", CAP, START + timedelta(minutes=35), "paris", 100)])
    outcome = run_batch(strict)
    assert not outcome.success
    assert any(line.startswith("fail gold_revenue_per_minute.gx_gold_revenue_per_minute") and "berlin" in line and "missing" in line
               for line in outcome.failed_gates), outcome.failed_gates
    assert promoted_build_id(lab) == good_build
    answer = merge.query(make_engine(lab), "revenue_per_minute")
    assert {(r.entity, r.window_start): r.value for r in answer.rows if r.source == "batch"} == \
        {k: v for k, v in good_answer.items() if answer.T and k[1] < answer.T}  # readers still get the old build


def test_a_three_day_backfill_reproduces_the_first_build_and_the_ledger_gate_blocks_a_mismatch(isolated: Settings) -> None:
    # Sparse data: empty minutes are legitimate (coverage warns). A one-day ledger grace closes day one only.
    settings = isolated.model_copy(update={"ledger_grace_s": 86_400, "batch_views": SPEED_VIEWS})
    workload = generate(GeneratorConfig(seed=48, duration_s=3 * 86_400, rides_per_minute=1, start=datetime(2026, 11, 10, tzinfo=timezone.utc)))
    engine = make_engine(settings)
    write_ledger(engine, workload.truth)
    produce_events(settings, workload.deliveries)

    first = batch_ok(settings)
    # every date a delivery carries, superseded versions included (a correction moved some across midnight)
    assert first.touched_dates == sorted({e.event_time.date().isoformat() for e in workload.deliveries})
    assert {"2026-11-10", "2026-11-11", "2026-11-12"} <= set(first.touched_dates)
    first_id = promoted_build_id(settings)
    ledger_gate = next(g for g in first.gates if g.gate.endswith("ledger_reconciliation"))
    assert ledger_gate.passed and "to the cent on 1 closed days" in ledger_gate.description  # only 11-10 ends a day before the watermark

    def rows(build_id: str) -> set:
        with engine.connect() as conn:
            return set(conn.execute(select(batch_view_rows.c.view, batch_view_rows.c.entity, batch_view_rows.c.window_start,
                                           batch_view_rows.c.value).where(batch_view_rows.c.build_id == build_id)).all())

    batch_ok(settings, ("2026-11-10", "2026-11-12"))  # the backfill: three daily partitions, one run
    second_id = promoted_build_id(settings)
    assert second_id != first_id and rows(second_id) == rows(first_id)
    for name, spec in views.SPEED_LAYER.items():
        T = merge.query(engine, name).T
        final = {k: v for k, v in oracle.for_view(name, workload.truth).items() if spec.is_final(k[1], T)}
        served = {(e, w): v for view_name, e, w, v in rows(second_id) if view_name == name and spec.is_final(w, T)}
        assert final and oracle.compare(served, final).equal, name

    with engine.begin() as conn:  # the ledger says one day-one payment was a cent more
        victim = conn.execute(select(payments_ledger.c.event_id).where(payments_ledger.c.event_time < datetime(2026, 11, 11, tzinfo=timezone.utc))
                              .order_by(payments_ledger.c.event_id).limit(1)).scalar_one()
        conn.execute(update(payments_ledger).where(payments_ledger.c.event_id == victim).values(amount_cents=payments_ledger.c.amount_cents + 1))
    blocked = run_batch(settings, ("2026-11-10", "2026-11-12"))
    assert not blocked.success
    assert any("ledger_reconciliation" in line and "2026-11-10" in line and "-1 cents" in line for line in blocked.failed_gates), blocked.failed_gates
    assert promoted_build_id(settings) == second_id
