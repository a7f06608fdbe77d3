"""lklab.engine.sink.apply_records against a temporary SQLite serving store (no Kafka).

Expected values are worked out by hand in each test, never by lklab.views."""
from __future__ import annotations

import zlib
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from lklab.core.config import Settings
from lklab.core.events import SCHEMA_VERSION, Event, EventType
from lklab.serving.store import make_engine, speed_contrib, speed_event_state, speed_progress, speed_view_rows
from lklab.engine.sink import OwnedState, apply_records, load_versions, read_view
from lklab.serving.progress import StaleProgressError, read_counters, read_progress

TOPIC = "rides.events.unit"
CAP, REF, OPEN = EventType.PAYMENT_CAPTURED, EventType.PAYMENT_REFUNDED, EventType.APP_OPENED


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def ev(eid: str, etype: EventType, at: str, *, city: str = "berlin", amount: int | None = None, version: int = 1) -> bytes:
    return Event(
        event_id=eid, event_version=version, schema_version=SCHEMA_VERSION, event_type=etype,
        event_time=ts(at), ride_id=eid.split("-")[0], user_id="u1",
        driver_id=None if etype == OPEN else "d1", city=city, amount_cents=amount,
    ).to_json().encode()


@pytest.fixture
def settings(tmp_path: Path, serving_url: str | None) -> Settings:
    return Settings(home=tmp_path, allowed_lateness_s=300, partitions=2, serving_url=serving_url)  # the tests' topic has partitions 0 and 1


@pytest.fixture
def engine(settings: Settings):
    engine = make_engine(settings)
    yield engine
    engine.dispose()


def view(engine) -> dict[tuple[str, str], int]:
    return {(r.entity, r.window_start.strftime("%H:%M")): r.value for r in read_view(engine)}


def snapshot(engine) -> tuple:
    with engine.connect() as conn:
        return tuple(
            sorted(map(tuple, conn.execute(select(table)).all()))
            for table in (speed_view_rows, speed_event_state, speed_contrib)
        )


def test_mixed_batch_is_counted_exactly(engine, settings) -> None:
    records = [
        (0, 0, ev("r1-open", OPEN, "2026-11-17T10:00:05")),
        (0, 1, ev("r1-cap", CAP, "2026-11-17T10:00:10", amount=1000)),
        (1, 0, ev("r2-cap", CAP, "2026-11-17T10:00:50", amount=250, city="paris")),
        (0, 2, ev("r1-ref", REF, "2026-11-17T10:01:00", amount=300)),
        (1, 1, ev("r2-cap", CAP, "2026-11-17T10:00:50", amount=250, city="paris")),  # re-produced duplicate
        (1, 2, b"{not json"),
        (0, 3, ev("r3-cap", CAP, "2026-11-17T10:00:59.999", amount=50)),
    ]
    stats = apply_records(engine, settings, TOPIC, records)

    assert view(engine) == {("berlin", "10:00"): 1050, ("berlin", "10:01"): -300, ("paris", "10:00"): 250}
    assert (stats.processed, stats.duplicates_ignored, stats.late_dropped) == (6, 1, 0)
    assert [(d.partition, d.offset, d.raw) for d in stats.dead_letters] == [(1, 2, b"{not json")]
    assert stats.dead_letters[0].reason.startswith("malformed JSON")
    counters = read_counters(engine)
    assert (counters["processed"], counters["duplicates_ignored"], counters["dead_lettered"]) == (6, 1, 1)
    progress = read_progress(engine, TOPIC)
    assert {p: pp.next_offset for p, pp in progress.items()} == {0: 4, 1: 3}
    assert progress[0].max_event_time == ts("2026-11-17T10:01:00")
    assert progress[1].max_event_time == ts("2026-11-17T10:00:50")


def test_replaying_the_same_records_changes_nothing(engine, settings) -> None:
    records = [
        (0, 0, ev("r1-cap", CAP, "2026-11-17T10:00:10", amount=1000)),
        (0, 1, ev("r1-ref", REF, "2026-11-17T10:00:20", amount=400)),
        (1, 0, ev("r2-cap", CAP, "2026-11-17T10:02:00", amount=700, city="paris")),
        (1, 1, b"[]"),
    ]
    apply_records(engine, settings, TOPIC, records)
    before, counters = snapshot(engine), read_counters(engine)
    assert view(engine) == {("berlin", "10:00"): 600, ("paris", "10:02"): 700}

    again = apply_records(engine, settings, TOPIC, records)

    assert snapshot(engine) == before
    assert again.skipped_redelivered == 4
    assert (again.processed, again.dead_letters, again.next_offsets) == (0, [], {})
    after = read_counters(engine)
    assert after == {**counters, "redelivered_skipped": 4}
    assert {p: pp.next_offset for p, pp in read_progress(engine, TOPIC).items()} == {0: 2, 1: 2}


def test_offset_below_next_offset_is_skipped(engine, settings) -> None:
    apply_records(engine, settings, TOPIC, [(2, 0, ev("r1-cap", CAP, "2026-11-17T10:00:10", amount=100))])
    # A crash-restart re-delivers offset 0 (now carrying what looks like new data) followed by offset 1.
    stats = apply_records(
        engine, settings, TOPIC,
        [
            (2, 0, ev("r9-cap", CAP, "2026-11-17T10:00:30", amount=5000)),
            (2, 1, ev("r2-cap", CAP, "2026-11-17T10:00:40", amount=20)),
        ],
    )
    assert stats.skipped_redelivered == 1 and stats.processed == 1
    assert view(engine) == {("berlin", "10:00"): 120}
    assert read_progress(engine, TOPIC)[2].next_offset == 2


def test_offsets_the_log_no_longer_held_are_counted_as_missed(engine, settings) -> None:
    """Retention outran the consumer: Kafka resets it to the new log start, so offsets jump."""
    apply_records(engine, settings, TOPIC, [(1, 0, ev("r1-cap", CAP, "2026-11-17T10:00:10", amount=100)),
                                            (1, 1, ev("r2-cap", CAP, "2026-11-17T10:00:11", amount=100))])
    stats = apply_records(engine, settings, TOPIC, [(1, 7, ev("r3-cap", CAP, "2026-11-17T10:00:12", amount=5)),
                                                    (1, 9, ev("r4-cap", CAP, "2026-11-17T10:00:13", amount=5)),
                                                    (3, 40, ev("r5-cap", CAP, "2026-11-17T10:00:14", amount=5))])
    assert stats.offsets_missed == 5 + 1  # 2..6 and 8 on partition 1; partition 3 had no progress to miss from
    assert read_counters(engine)["offsets_missed"] == 6 and read_progress(engine, TOPIC)[1].next_offset == 10


def test_correction_retracts_old_contribution_exactly(engine, settings) -> None:
    apply_records(engine, settings, TOPIC, [
        (0, 0, ev("r1-cap", CAP, "2026-11-17T10:00:10", amount=1000)),
        (0, 1, ev("r2-cap", CAP, "2026-11-17T10:00:20", amount=30)),
    ])
    # v2 of r1-cap: new amount AND a different minute; v1 must vanish from 10:00 entirely.
    apply_records(engine, settings, TOPIC, [(0, 2, ev("r1-cap", CAP, "2026-11-17T10:01:10", amount=1234, version=2))])
    assert view(engine) == {("berlin", "10:00"): 30, ("berlin", "10:01"): 1234}

    # v3 moves it back and changes the amount again; 10:01 then has no contributing event -> no row.
    apply_records(engine, settings, TOPIC, [(0, 3, ev("r1-cap", CAP, "2026-11-17T10:00:15", amount=999, version=3))])
    assert view(engine) == {("berlin", "10:00"): 1029}
    with engine.connect() as conn:
        gone = conn.execute(
            select(speed_view_rows.c.value, speed_view_rows.c.events)
            .where(speed_view_rows.c.view == "revenue_per_minute", speed_view_rows.c.window_start == ts("2026-11-17T10:01:00"))
        ).one()
    assert tuple(gone) == (0, 0)

    # An older version arriving afterwards, and a re-delivery of v3, change nothing.
    before = snapshot(engine)
    stats = apply_records(engine, settings, TOPIC, [
        (0, 4, ev("r1-cap", CAP, "2026-11-17T10:01:10", amount=1234, version=2)),
        (0, 5, ev("r1-cap", CAP, "2026-11-17T10:00:15", amount=999, version=3)),
    ])
    assert stats.duplicates_ignored == 2
    assert snapshot(engine) == before
    assert read_counters(engine)["corrections_applied"] == 2


def test_a_correction_across_T_moves_what_each_open_side_holds(engine, settings) -> None:
    """A correction whose old and new windows fall on different sides of T: the open side is
    retracted or added, the final side is left to batch and recorded (issue 11, item 1)."""
    from lklab.engine.sink import read_late_windows

    apply_records(engine, settings, TOPIC, [
        (0, 0, ev("a-cap", CAP, "2026-11-17T10:16:00", amount=500)),
        (1, 0, ev("h1-open", OPEN, "2026-11-17T10:16:30")),
    ])
    # Both partitions reach 10:20: watermark 10:20, T = 10:15 (windows before it are final).
    apply_records(engine, settings, TOPIC, [
        (0, 1, ev("h0-open", OPEN, "2026-11-17T10:20:00")),
        (1, 1, ev("h1b-open", OPEN, "2026-11-17T10:20:10")),
        (0, 2, ev("b-cap", CAP, "2026-11-17T10:12:00", amount=70)),  # final window: left to batch
    ])
    assert view(engine) == {("berlin", "10:16"): 500}
    stats = apply_records(engine, settings, TOPIC, [
        # moved from an open window (10:16) into a final one (10:10), and to another city
        (0, 3, ev("a-cap", CAP, "2026-11-17T10:10:00", amount=500, city="porto", version=2)),
        # moved from a final window (10:12) into an open one (10:17)
        (1, 2, ev("b-cap", CAP, "2026-11-17T10:17:00", amount=70, version=2)),
    ])
    assert view(engine) == {("berlin", "10:17"): 70}
    assert stats.late_dropped == 2 and stats.corrections_applied == 2
    assert read_late_windows(engine, "revenue_per_minute") == {
        ("berlin", ts("2026-11-17T10:12:00")): 2, ("porto", ts("2026-11-17T10:10:00")): 1}
    # The held contribution is the new one: moving b back to 10:16 retracts 10:17 exactly.
    apply_records(engine, settings, TOPIC, [(1, 3, ev("b-cap", CAP, "2026-11-17T10:16:00", amount=71, version=3))])
    assert view(engine) == {("berlin", "10:16"): 71}


def test_correction_within_one_batch(engine, settings) -> None:
    stats = apply_records(engine, settings, TOPIC, [
        (0, 0, ev("r1-ref", REF, "2026-11-17T10:00:10", amount=100)),
        (0, 1, ev("r1-ref", REF, "2026-11-17T10:00:10", amount=40, version=2)),
        (0, 2, ev("r1-ref", REF, "2026-11-17T10:00:10", amount=100)),
    ])
    assert view(engine) == {("berlin", "10:00"): -40}
    assert (stats.corrections_applied, stats.duplicates_ignored) == (1, 1)
    with engine.connect() as conn:
        assert conn.execute(select(speed_view_rows.c.events).where(speed_view_rows.c.view == "revenue_per_minute")).scalar_one() == 1


def test_late_events_are_dropped_and_counted(engine, settings) -> None:
    # Both partitions reach 10:20 -> watermark 10:20, final through window_start(10:15) = 10:15.
    apply_records(engine, settings, TOPIC, [
        (0, 0, ev("h0-open", OPEN, "2026-11-17T10:20:00")),
        (1, 0, ev("h1-open", OPEN, "2026-11-17T10:20:30")),
    ])
    stats = apply_records(engine, settings, TOPIC, [
        (0, 1, ev("r1-cap", CAP, "2026-11-17T10:14:59", amount=500)),  # window 10:14 < 10:15: late
        (1, 1, ev("r2-cap", CAP, "2026-11-17T10:15:00", amount=70)),  # window 10:15: still open
    ])
    assert stats.late_dropped == 1 and read_counters(engine)["late_dropped"] == 1
    assert view(engine) == {("berlin", "10:15"): 70}


def test_slowest_partition_holds_the_watermark(engine, settings) -> None:
    apply_records(engine, settings, TOPIC, [
        (0, 0, ev("h0-open", OPEN, "2026-11-17T10:30:00")),
        (1, 0, ev("h1-open", OPEN, "2026-11-17T10:00:00")),
    ])
    # Partition 0 is far ahead, but partition 1 is at 10:00, so 10:00 is not final yet.
    apply_records(engine, settings, TOPIC, [(0, 1, ev("r1-cap", CAP, "2026-11-17T10:00:00", amount=5))])
    assert view(engine) == {("berlin", "10:00"): 5}


def test_stale_progress_rolls_back_the_whole_batch(engine, settings, monkeypatch) -> None:
    import lklab.engine.sink as sink

    apply_records(engine, settings, TOPIC, [(0, 0, ev("r1-cap", CAP, "2026-11-17T10:00:10", amount=10))])
    before = snapshot(engine)
    load_versions = sink.load_versions

    def another_consumer_commits_first(conn, scope, event_ids, **options):
        # A consumer that took partition 0 over in a rebalance commits offsets 1..5 after this
        # batch read the progress but before it writes.
        with engine.begin() as other:
            other.execute(speed_progress.update().values(next_offset=speed_progress.c.next_offset + 5))
        return load_versions(conn, scope, event_ids, **options)

    monkeypatch.setattr(sink, "load_versions", another_consumer_commits_first)
    with pytest.raises(StaleProgressError):
        apply_records(engine, settings, TOPIC, [(0, 1, ev("r2-cap", CAP, "2026-11-17T10:00:20", amount=99))])
    assert snapshot(engine) == before
    assert read_progress(engine, TOPIC)[0].next_offset == 6


def test_before_commit_failure_commits_nothing(engine, settings) -> None:
    def dlq_down(stats) -> None:
        assert stats.dead_lettered == 1
        raise ConnectionError("DLQ unavailable")

    with pytest.raises(ConnectionError):
        apply_records(engine, settings, TOPIC, [
            (0, 0, ev("r1-cap", CAP, "2026-11-17T10:00:10", amount=10)),
            (0, 1, b"nope"),
        ], before_commit=dlq_down)
    assert read_view(engine) == [] and read_progress(engine, TOPIC) == {}
    assert read_counters(engine)["processed"] == 0


@pytest.mark.parametrize("in_memory", [False, True], ids=["looked-up", "in-memory"])
def test_every_speed_view_equals_the_oracle_on_a_generated_stream(tmp_path, serving_url, in_memory) -> None:
    """All three views, with duplicates, corrections and out-of-order events, against the oracle
    (lateness wide enough that the speed layer keeps every window open); the held state looked up
    per batch, or held in memory (the one worker of the speed layer) and thrown away by a
    rebalance halfway."""
    from lklab.core import oracle
    from lklab import views
    from lklab.log.generator import GeneratorConfig, generate

    settings = Settings(home=tmp_path, allowed_lateness_s=4 * 86_400, serving_url=serving_url)
    engine = make_engine(settings)
    workload = generate(GeneratorConfig(seed=31, duration_s=1800, rides_per_minute=20))
    records = [(0, offset, e.to_json().encode()) for offset, e in enumerate(workload.deliveries)]
    owned = OwnedState(settings.correction_horizon_s) if in_memory else None
    for i, start in enumerate(range(0, len(records), 700)):  # several batches, like the worker
        if owned is not None and i == 3:
            owned.invalidate()  # a rebalance: the next batch reloads what the store holds
        apply_records(engine, settings, TOPIC, records[start:start + 700], owned=owned)
    if owned is not None:
        with engine.connect() as conn:
            assert owned.loaded and owned.versions == load_versions(conn, settings.speed_group)
    for name in views.SPEED_LAYER:
        got = {(r.entity, r.window_start): r.value for r in read_view(engine, name)}
        comparison = oracle.compare(got, oracle.for_view(name, workload.truth))
        assert comparison.equal, f"{name}: {comparison}"


def test_checkpointed_sink_equals_the_oracle_across_a_crash(tmp_path, serving_url) -> None:
    """A replay's in-memory sink over two partitions, checkpointing every 150 records in the
    background; it "crashes" (stops without a final checkpoint) halfway, a new one resumes from the
    checkpointed offsets with everything re-delivered, and every view equals the oracle, with the
    same dedup state as the per-batch sink."""
    from lklab.core import oracle
    from lklab import views
    from lklab.log.generator import GeneratorConfig, generate
    from lklab.engine.checkpoint import CheckpointedSink

    settings = Settings(home=tmp_path, allowed_lateness_s=300, serving_url=serving_url)
    engine = make_engine(settings)
    workload = generate(GeneratorConfig(seed=37, duration_s=1800, rides_per_minute=20))
    offsets = {0: 0, 1: 0}
    records = []
    for e in workload.deliveries:  # per-ride partitioning, as Kafka's key does
        p = zlib.crc32(e.ride_id.encode()) % 2
        records.append((p, offsets[p], e.to_json().encode()))
        offsets[p] += 1
    specs, scope = list(views.SPEED_LAYER.values()), "lklab-replay-unit"

    first = CheckpointedSink(engine, settings, TOPIC, specs, scope, every=150)
    half = len(records) // 2
    for i in range(0, half, 40):
        first.apply(records[i:min(i + 40, half)])
    first.close()  # the crash: whatever was not checkpointed is lost
    committed = sum(p.next_offset for p in read_progress(engine, TOPIC, scope).values())
    assert 0 < committed < half, "the crash must lose uncheckpointed records, or it tests nothing"

    second = CheckpointedSink(engine, settings, TOPIC, specs, scope, every=150)
    for i in range(0, len(records), 40):
        second.apply(records[i:i + 40])
    assert second.checkpoint() == offsets
    second.close()
    for name in views.SPEED_LAYER:
        got = {(r.entity, r.window_start): r.value for r in read_view(engine, name)}
        comparison = oracle.compare(got, oracle.for_view(name, workload.truth))
        assert comparison.equal, f"{name}: {comparison}"

    per_batch = make_engine(Settings(home=tmp_path / "per-batch"))
    for i in range(0, len(records), 40):
        apply_records(per_batch, settings, TOPIC, records[i:i + 40], specs=specs, scope=scope, close_windows=False)
    state = lambda e: sorted(load_versions(e.connect(), scope).items())  # noqa: E731
    assert state(engine) == state(per_batch)
    assert read_counters(engine, scope) == read_counters(per_batch, scope) | {"redelivered_skipped": read_counters(engine, scope)["redelivered_skipped"]}


def test_held_state_in_memory_is_thrown_away_when_a_batch_fails(engine, settings) -> None:
    """A batch that fails after its fold changed the memory (here: the DLQ is down) leaves the
    memory invalid, so the retry folds against what the store holds, not against its own half."""
    owned = OwnedState(settings.correction_horizon_s)
    apply_records(engine, settings, TOPIC, [(0, 0, ev("r1-cap", CAP, "2026-11-17T10:00:10", amount=10))], owned=owned)
    batch = [(0, 1, ev("r1-cap", CAP, "2026-11-17T10:00:10", amount=25, version=2)), (0, 2, b"nope")]

    def dlq_down(stats) -> None:
        raise ConnectionError("DLQ unavailable")

    with pytest.raises(ConnectionError):
        apply_records(engine, settings, TOPIC, batch, before_commit=dlq_down, owned=owned)
    assert not owned.loaded
    apply_records(engine, settings, TOPIC, batch, owned=owned)
    assert view(engine) == {("berlin", "10:00"): 25}
    assert read_counters(engine)["corrections_applied"] == 1


def test_a_forgotten_users_contributions_leave_the_memory_too(tmp_path, serving_url) -> None:
    """`lklab forget` purges a user's contributions to the views keyed by the user from the store
    while a per-batch consumer runs (a sessionized view here: the speed layer keeps none by
    default): its next batch drops them from memory as well."""
    from lklab import views
    from lklab.deletion.purge import purge_serving
    from lklab.log.generator import GeneratorConfig, generate
    from lklab.privacy import requests

    settings = Settings(home=tmp_path, allowed_lateness_s=4 * 86_400, serving_url=serving_url)
    engine = make_engine(settings)
    workload = generate(GeneratorConfig(seed=41, duration_s=900, rides_per_minute=20))
    records = [(0, offset, e.to_json().encode()) for offset, e in enumerate(workload.deliveries)]
    specs = [views.view("user_sessions")]
    keyed = {spec.name for spec in specs if spec.keyed_by_user}
    assert keyed, "the view must be keyed by the user, or this tests nothing"
    owned = OwnedState(settings.correction_horizon_s)
    half = len(records) // 2
    apply_records(engine, settings, TOPIC, records[:half], owned=owned, specs=specs, scope="s", close_windows=False)
    held = lambda user: [k for k, c in owned.contribs.items() if k[0] in keyed and c is not None and c.entity == user]  # noqa: E731
    gone = next(c.entity for k, c in owned.contribs.items() if k[0] in keyed and c is not None)
    assert held(gone)
    requests.record(engine, gone, "unit test")
    purge_serving(engine, gone)
    apply_records(engine, settings, TOPIC, records[half:], owned=owned, specs=specs, scope="s", close_windows=False)
    assert held(gone) == []
