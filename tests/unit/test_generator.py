"""The workload generator: deterministic, and delivers the way production does (late, duplicated, corrected)."""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

from lklab.core import oracle
from lklab import views
from lklab.core.config import Settings
from lklab.core.events import PAYMENT_TYPES, EventError, EventType, parse_event
from lklab.log.generator import GeneratorConfig, Workload, bad_lines, generate, write_jsonl, write_ledger
from lklab.serving.store import make_engine, payments_ledger

SMALL = GeneratorConfig(rides_per_minute=30, duration_s=300)
LARGE = GeneratorConfig(seed=11, rides_per_minute=1000, duration_s=600)  # ~52k deliveries


@pytest.fixture(scope="module")
def large() -> Workload:
    return generate(LARGE)


@pytest.fixture(scope="module")
def default() -> Workload:
    return generate(GeneratorConfig())


def _jsonl(config: GeneratorConfig, path: Path) -> bytes:
    write_jsonl(generate(config).deliveries, path)
    return path.read_bytes()


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    first = _jsonl(SMALL, tmp_path / "a.jsonl")
    assert first == _jsonl(SMALL, tmp_path / "b.jsonl")
    assert first.count(b"\n") == len(generate(SMALL).deliveries)


def test_different_seed_gives_different_bytes(tmp_path: Path) -> None:
    other = SMALL.model_copy(update={"seed": SMALL.seed + 1})
    assert _jsonl(SMALL, tmp_path / "a.jsonl") != _jsonl(other, tmp_path / "b.jsonl")


def test_config_rejects_naive_start_and_inverted_lateness() -> None:
    with pytest.raises(ValidationError):
        GeneratorConfig(start=datetime(2026, 11, 17, 10))
    with pytest.raises(ValidationError):
        GeneratorConfig(on_time_max_s=600, late_max_s=600)


def _moved(workload: Workload) -> set[str]:
    """event_ids whose versions disagree on event_time (a correction moved the event)."""
    times: dict[str, set[datetime]] = defaultdict(set)
    for event in workload.deliveries:
        times[event.event_id].add(event.event_time)
    return {eid for eid, seen in times.items() if len(seen) > 1}


def test_lateness_profile(large: Workload) -> None:
    # Events a correction moved in time are late for their new window by up to the move; the
    # seed's profile is about the rest.
    moved = _moved(large)
    lateness = [s for s, e in zip(large.lateness_s(), large.deliveries) if e.event_id not in moved]
    assert min(large.lateness_s()) >= 0  # nothing arrives before it happened, moved or not
    n = len(lateness)
    assert n > 50_000
    late = [s for s in lateness if s > LARGE.on_time_max_s]
    # ~52 expected (late primaries plus their follow-ups); Poisson bounds ~4 sigma wide.
    assert 0.3 * n * LARGE.late_fraction < len(late) < 2.0 * n * LARGE.late_fraction
    assert min(lateness) >= 0
    assert max(lateness) <= LARGE.late_max_s
    # Late means anywhere up to two days, not just past the boundary.
    assert max(late) > 6 * 3600
    on_time = sorted(s for s in lateness if s <= LARGE.on_time_max_s)
    assert on_time[len(on_time) // 2] < 30  # median delay is small (exponential, mean 15 s)


def test_arrival_order_and_event_time_order_differ(default: Workload) -> None:
    arrivals = default.arrival_times
    assert arrivals == sorted(arrivals)
    times = [e.event_time for e in default.deliveries]
    assert any(b < a for a, b in zip(times, times[1:]))


def test_duplicates_are_identical_redeliveries(large: Workload) -> None:
    copies = Counter(e.to_json() for e in large.deliveries)
    by_key = Counter((e.event_id, e.event_version) for e in large.deliveries)
    redelivered = sum(c - 1 for c in by_key.values())
    assert redelivered == sum(c - 1 for c in copies.values())  # same (id, version) => same bytes
    expected = LARGE.duplicate_fraction * len(large.deliveries) / (1 + LARGE.duplicate_fraction)
    assert 0.8 * expected < redelivered < 1.2 * expected


def test_corrections_raise_version_change_amount_and_come_later(large: Workload) -> None:
    first_arrival: dict[tuple[str, int], datetime] = {}
    versions: dict[str, dict[int, set[int | None]]] = defaultdict(lambda: defaultdict(set))
    for event, arrival in zip(large.deliveries, large.arrival_times):
        first_arrival.setdefault((event.event_id, event.event_version), arrival)
        versions[event.event_id][event.event_version].add(event.amount_cents)

    corrected = [eid for eid, by_version in versions.items() if 2 in by_version]
    truth = {e.event_id: e for e in large.truth}
    payments = sum(1 for e in large.truth if e.event_type in PAYMENT_TYPES)
    corrected_payments = sum(1 for eid in corrected if truth[eid].event_type in PAYMENT_TYPES)
    assert 0.8 * LARGE.correction_fraction * payments < corrected_payments < 1.2 * LARGE.correction_fraction * payments
    others = len(truth) - payments
    assert 0.7 * LARGE.other_correction_fraction * others < len(corrected) - corrected_payments < 1.3 * LARGE.other_correction_fraction * others
    delivered: dict[tuple[str, int], object] = {}
    for event in large.deliveries:
        delivered.setdefault((event.event_id, event.event_version), event)
    changed: Counter[str] = Counter()
    early = 0
    for eid in corrected:
        assert set(versions[eid]) == {1, 2}
        first, final = delivered[(eid, 1)], delivered[(eid, 2)]
        assert final == truth[eid] and truth[eid].event_version == 2
        diff = {f for f in ("amount_cents", "event_time", "city", "driver_id", "user_id") if getattr(first, f) != getattr(final, f)}
        assert 1 <= len(diff) <= 2 and first.replace(**{f: getattr(final, f) for f in diff}, event_version=2) == final
        changed.update(diff)
        early += first_arrival[(eid, 2)] < first_arrival[(eid, 1)]
    # Every kind of change occurs, and some corrections arrive before the version they correct.
    assert all(changed[f] > 20 for f in ("amount_cents", "event_time", "city", "driver_id", "user_id")), changed
    assert 0.1 * len(corrected) < early < 0.3 * len(corrected)
    assert all(max(v) == 1 for eid, v in versions.items() if eid not in set(corrected))


def test_time_corrections_cross_minutes_allowed_lateness_and_midnight() -> None:
    config = GeneratorConfig(start=datetime(2026, 11, 17, 23, 45, tzinfo=timezone.utc), duration_s=1800,
                             rides_per_minute=120, correction_fraction=0.3, other_correction_fraction=0.1)
    workload = generate(config)
    truth = {e.event_id: e for e in workload.truth}
    moves = [(e.event_time, truth[e.event_id].event_time) for e in workload.deliveries if e.event_version == 1
             and e.event_time != truth[e.event_id].event_time]
    assert any(a.date() != b.date() for a, b in moves)  # across midnight
    assert any(abs((a - b).total_seconds()) > 300 for a, b in moves)  # beyond the default allowed lateness
    assert sum(views.window_start(a) != views.window_start(b) for a, b in moves) > 0.9 * len(moves)  # to another minute


def test_wire_lines_carry_local_offsets_that_name_the_true_instant(default: Workload, tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    write_jsonl(default.deliveries, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    suffixes = Counter(json.loads(line)["event_time"][23:] for line in lines)
    assert {"Z", "+00:00", "+02:00", "-05:00", "+05:30"} <= set(suffixes)
    assert [parse_event(line) for line in lines] == default.deliveries
    assert "são paulo" in path.read_text(encoding="utf-8")  # UTF-8 on the wire, not \u escapes


def test_every_delivery_parses_back(default: Workload) -> None:
    for event in default.deliveries:
        assert parse_event(event.to_json()) == event


def test_truth_is_complete_rides_inside_the_window(large: Workload) -> None:
    start = LARGE.start
    end = start + timedelta(seconds=LARGE.duration_s)
    assert len({e.event_id for e in large.truth}) == len(large.truth)
    rides: dict[str, dict[EventType, object]] = defaultdict(dict)
    for e in large.truth:
        assert start <= e.event_time < end
        assert e.event_time.microsecond % 1000 == 0
        assert e.event_time.tzinfo is not None and e.event_time.utcoffset() == timedelta(0)
        assert (e.driver_id is None) == (e.event_type in {EventType.APP_OPENED, EventType.RIDE_REQUESTED})
        assert (e.amount_cents is not None) == (e.event_type in PAYMENT_TYPES)
        assert e.event_id == f"{e.ride_id}-{e.event_type.value}"
        rides[e.ride_id][e.event_type] = e
    assert len(rides) == LARGE.rides_per_minute * LARGE.duration_s // 60
    steps = [EventType.APP_OPENED, EventType.RIDE_REQUESTED, EventType.RIDE_STARTED,
             EventType.RIDE_COMPLETED, EventType.PAYMENT_CAPTURED]
    refunds = 0
    for ride in rides.values():
        times = [ride[t].event_time for t in steps]
        assert times == sorted(times)
        refund = ride.get(EventType.PAYMENT_REFUNDED)
        if refund is not None:
            refunds += 1
            assert refund.amount_cents <= ride[EventType.PAYMENT_CAPTURED].amount_cents
            assert refund.event_time >= ride[EventType.PAYMENT_CAPTURED].event_time
    assert 0.8 * LARGE.refund_fraction * len(rides) < refunds < 1.2 * LARGE.refund_fraction * len(rides)
    # Cities come from the config and each one sees traffic.
    assert {e.city for e in large.truth} == {*LARGE.cities, *LARGE.sparse_cities}
    per_city = Counter(e.city for e in large.truth)
    assert all(per_city[c] < per_city[LARGE.cities[0]] / 10 for c in LARGE.sparse_cities)  # sparse: empty minutes


def test_shared_view_logic_matches_the_oracle(large: Workload, default: Workload) -> None:
    for workload in (default, large):
        result = oracle.compare(views.VIEWS["revenue_per_minute"].evaluate(workload.deliveries), oracle.revenue_per_minute(workload.truth))
        assert result.equal, str(result)


def test_reading_v1_only_would_be_caught(default: Workload) -> None:
    """Guard against a vacuous check: ignoring corrections really changes the answer."""
    v1_only = [e for e in default.deliveries if e.event_version == 1]
    result = oracle.compare(views.VIEWS["revenue_per_minute"].evaluate(v1_only), oracle.revenue_per_minute(default.truth))
    assert not result.equal and result.max_abs_error > 0


def test_write_ledger_is_idempotent(tmp_path: Path, default: Workload, serving_url: str | None) -> None:
    engine = make_engine(Settings(home=tmp_path / "home", serving_url=serving_url))
    payments = [e for e in default.truth if e.event_type in PAYMENT_TYPES]
    count_rows = select(func.count()).select_from(payments_ledger)
    total = select(func.sum(payments_ledger.c.amount_cents)).where(
        payments_ledger.c.event_type == EventType.PAYMENT_CAPTURED.value
    )
    assert write_ledger(engine, default.truth) == len(payments)
    with engine.connect() as conn:
        first = conn.execute(count_rows).scalar_one(), conn.execute(total).scalar_one()
    write_ledger(engine, default.truth)
    with engine.connect() as conn:
        second = conn.execute(count_rows).scalar_one(), conn.execute(total).scalar_one()
    engine.dispose()
    assert first == second
    assert first[0] == len(payments)
    assert first[1] == sum(e.amount_cents for e in payments if e.event_type is EventType.PAYMENT_CAPTURED)


@pytest.mark.parametrize(("line", "why"), bad_lines(), ids=[why for _, why in bad_lines()])
def test_bad_lines_are_rejected(line: str, why: str) -> None:
    with pytest.raises(EventError):
        parse_event(line)


def test_bad_lines_cover_the_import_failure_kinds() -> None:
    kinds = " ".join(why for _, why in bad_lines())
    for kind in ("malformed JSON", "missing field", "wrong type", "unknown event_type"):
        assert kind in kinds


def test_short_window_and_tiny_cast_still_work() -> None:
    config = GeneratorConfig(duration_s=1, rides_per_minute=600, drivers=1, users=1, cities=["a", "b"],
                             refund_fraction=1.0, correction_fraction=1.0, duplicate_fraction=1.0)
    workload = generate(config)
    assert len({e.ride_id for e in workload.truth}) == 10
    end = config.start + timedelta(seconds=1)
    assert all(config.start <= e.event_time < end for e in workload.truth)
    assert len(workload.deliveries) == 2 * (len(workload.truth) + 2 * 10)  # every payment corrected, all duplicated


def test_start_with_sub_millisecond_part_stays_inside_the_window() -> None:
    start = datetime(2026, 11, 17, 10, 0, 0, 123_456, tzinfo=timezone.utc)
    workload = generate(GeneratorConfig(start=start, duration_s=2, rides_per_minute=600))
    end = start + timedelta(seconds=2)
    assert all(start <= e.event_time < end and e.event_time.microsecond % 1000 == 0 for e in workload.truth)


def test_follow_ups_stay_in_their_originals_lateness_class() -> None:
    # A 1 s on-time window pushes corrections and duplicates right up against the bound.
    config = GeneratorConfig(on_time_max_s=1, late_max_s=2, late_fraction=0.3, rides_per_minute=600,
                             duplicate_fraction=1.0, correction_fraction=1.0)
    workload = generate(config)
    moved = _moved(workload)  # a moved event is late for its new window by the move itself
    first_lateness: dict[str, float] = {}
    for event, lateness in zip(workload.deliveries, workload.lateness_s()):
        if event.event_id in moved:
            continue
        original = first_lateness.setdefault(event.event_id, lateness)
        bound = config.on_time_max_s if original <= config.on_time_max_s else config.late_max_s
        assert original <= lateness <= bound


MIXED = GeneratorConfig(seed=13, rides_per_minute=200, duration_s=600, schema_v2_fraction=0.5, correction_fraction=0.3)


def test_schema_v2_rides_carry_tips_currencies_and_mid_upgrade_corrections() -> None:
    """Half the rides come from a v2 producer: tips on captures only, CHF in the sparse city, and
    corrected events whose first version came from a v1 producer or said another tip."""
    workload = generate(MIXED)
    versions = Counter(e.schema_version for e in workload.truth)
    assert 0.4 < versions[2] / len(workload.truth) < 0.6 and versions[1] > 0
    tipped = [e for e in workload.truth if e.tip_cents]
    assert tipped and all(e.event_type is EventType.PAYMENT_CAPTURED and e.schema_version == 2 for e in tipped)
    assert {e.currency for e in workload.truth if e.schema_version == 2} == {"EUR", "CHF"}
    assert all((e.tip_cents, e.currency) == (0, "EUR") for e in workload.truth if e.schema_version == 1)
    final = {e.event_id: e for e in workload.truth}
    firsts = [e for e in workload.deliveries if e.event_version < final[e.event_id].event_version]
    assert any(e.schema_version == 1 and final[e.event_id].schema_version == 2 for e in firsts)  # upgraded in between
    assert any(e.schema_version == 2 and e.tip_cents != final[e.event_id].tip_cents for e in firsts)  # the tip corrected
    assert all(parse_event(e.to_json()) == e for e in workload.deliveries)


def test_without_v2_rides_the_workload_is_unchanged() -> None:
    """The v2 draws come from an RNG of their own: the v1 part of a workload is the same bytes."""
    plain, mixed = generate(SMALL), generate(SMALL.model_copy(update={"schema_v2_fraction": 0.5}))
    strip = lambda e: e.replace(schema_version=1, tip_cents=0, currency="EUR")  # noqa: E731
    assert all(e.schema_version == 1 for e in plain.deliveries)
    assert [strip(e) for e in mixed.deliveries] == plain.deliveries


def test_revenue_logic_v2_counts_tips_and_matches_the_oracle() -> None:
    """Logic v1 ignores tips, v2 counts them; each equals the oracle of the same logic, and
    they differ on this workload (so a test comparing the two can fail)."""
    workload = generate(MIXED)
    v1, v2 = (views.spec_at("revenue_per_minute", v).evaluate(workload.deliveries) for v in (1, 2))
    assert oracle.compare(v1, oracle.revenue_per_minute(workload.truth)).equal
    assert oracle.compare(v2, oracle.revenue_per_minute(workload.truth, with_tips=True)).equal
    assert not oracle.compare(v2, oracle.revenue_per_minute(workload.truth)).equal
    assert views.VIEWS["revenue_per_minute"].logic_version == 1  # v2 is deployed, not switched on by its existence


def test_sparse_history_over_months() -> None:
    """Below one ride a minute: a year of small history (the verify-history test writes one)."""
    year = generate(GeneratorConfig(start=datetime(2025, 12, 1, tzinfo=timezone.utc), duration_s=365 * 86_400,
                                    rides_per_minute=0.002, schema_v2_fraction=0.5))
    months = {(e.event_time.year, e.event_time.month) for e in year.truth}
    assert len(months) >= 12 and 800 < len({e.ride_id for e in year.truth}) < 1300
