"""The Lambda merge and its health rule against a real serving store, SQLite and PostgreSQL (no other services)."""
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from lklab import views
from lklab.lambda_arch import merge
from lklab.lambda_arch.builds import BatchBuild, promote
from lklab.core.config import Settings
from lklab.serving.store import make_engine, speed_heartbeat, speed_progress, speed_view_rows, upsert

REVENUE = views.view("revenue_per_minute")

T0 = datetime(2026, 11, 17, 10, 0, tzinfo=timezone.utc)


def minute(n: int) -> datetime:
    return T0 + timedelta(minutes=n)


def build(build_id: str, T: datetime) -> BatchBuild:
    return BatchBuild(build_id=build_id, created_at=T0, status="promoted", git_sha="x", logic_version=1, schema_version=1,
                      offsets={0: [0, 10]}, watermark=T + timedelta(minutes=5), final_through=T, row_counts={},
                      validation={}, delta_versions={})


def setup(tmp_path, serving_url):
    settings = Settings(home=tmp_path, speed_heartbeat_timeout_s=5, speed_max_lag=100, serving_url=serving_url)
    engine = make_engine(settings)
    promote(engine, build("b1", minute(3)), [(REVENUE, [("berlin", minute(m), 100 + m) for m in range(5)])])
    with engine.begin() as conn:
        upsert(conn, speed_view_rows, [
            {"view": "revenue_per_minute", "entity": "berlin", "window_start": minute(m), "value": 900 + m, "events": 1}
            for m in range(1, 7)
        ] + [{"view": "revenue_per_minute", "entity": "berlin", "window_start": minute(7), "value": 5, "events": 0}])
    return settings, engine


def test_batch_serves_final_windows_and_speed_the_rest(tmp_path, serving_url) -> None:
    _, engine = setup(tmp_path, serving_url)
    answer = merge.query(engine, "revenue_per_minute")
    assert answer.T == minute(3) and answer.build_id == "b1" and answer.mode == "lambda"
    got = [(r.window_start, r.value, r.source) for r in answer.rows]
    assert got == [(minute(0), 100, "batch"), (minute(1), 101, "batch"), (minute(2), 102, "batch"),
                   (minute(3), 903, "speed"), (minute(4), 904, "speed"), (minute(5), 905, "speed"), (minute(6), 906, "speed")]
    # a window with no contributing event left (events = 0) is no row at all
    assert minute(7) not in [r.window_start for r in answer.rows]


def test_a_newer_promotion_moves_T_atomically(tmp_path, serving_url) -> None:
    _, engine = setup(tmp_path, serving_url)
    promote(engine, build("b2", minute(5)), [(REVENUE, [("berlin", minute(m), 200 + m) for m in range(6)])])
    answer = merge.query(engine, "revenue_per_minute", start=minute(2), end=minute(6))
    assert [(r.window_start, r.value, r.source) for r in answer.rows] == [
        (minute(2), 202, "batch"), (minute(3), 203, "batch"), (minute(4), 204, "batch"), (minute(5), 905, "speed")]


def test_unhealthy_speed_means_batch_only_and_stale(tmp_path, serving_url) -> None:
    settings, engine = setup(tmp_path, serving_url)
    now = datetime.now(timezone.utc)
    with engine.begin() as conn:
        upsert(conn, speed_heartbeat, [{"group_id": settings.speed_group, "pid": 1, "beat_at": now}])
        upsert(conn, speed_progress, [{"scope": settings.speed_group, "topic": settings.topic, "partition": 0, "next_offset": 400, "max_event_time": now, "updated_at": now}])
    assert merge.speed_health(engine, settings, {0: 450}, now=now).healthy
    lagging = merge.speed_health(engine, settings, {0: 501, 1: 0}, now=now)
    assert not lagging.healthy and lagging.lag == 101 and "exceeds 100" in lagging.reason
    silent = merge.speed_health(engine, settings, {0: 400}, now=now + timedelta(seconds=6))
    assert not silent.healthy and "heartbeat is 6s old" in silent.reason

    answer = merge.query(engine, "revenue_per_minute", health=lagging)
    assert answer.stale and answer.mode == "batch-only" and answer.stale_reason == lagging.reason
    assert [(r.window_start, r.value, r.source) for r in answer.rows] == [(minute(m), 100 + m, "batch") for m in range(5)]


def test_user_sessions_is_served_from_the_batch_build_for_every_day(tmp_path, serving_url) -> None:
    """A view the speed layer does not maintain: the merge serves the promoted build's rows for
    every day, before and after T, whatever the speed layer's health, in the measure's shape."""
    _, engine = setup(tmp_path, serving_url)
    sessions = views.view("user_sessions")
    day, next_day = datetime(2026, 11, 16, tzinfo=timezone.utc), datetime(2026, 11, 17, tzinfo=timezone.utc)
    promote(engine, build("b2", minute(3)), [(REVENUE, [("berlin", minute(0), 1)]),
                                             (sessions, [("u1", day, 2, 60_000), ("u1", next_day, 1, 0), ("u2", next_day, 3, 9_000)])])
    down = merge.SpeedHealth(False, "speed heartbeat is 99s old (worker down?)", 99.0, None)
    for health in (None, down):
        answer = merge.query(engine, "user_sessions", health=health)
        assert [(r.entity, r.window_start, r.value, r.source) for r in answer.rows] == [
            ("u1", day, (2, 60_000), "batch"), ("u1", next_day, (1, 0), "batch"), ("u2", next_day, (3, 9_000), "batch")]
    only_u2 = merge.query(engine, "user_sessions", entity="u2", start=next_day)
    assert merge.answer_json(only_u2)["rows"] == [{"user_id": "u2", "window_start": "2026-11-17T00:00:00+00:00", "sessions": 3,
                                                    "duration_ms": 9000, "source": "batch", "diverged": False,
                                                    "left_to_batch": False}]


def test_the_reader_policy_refuses_a_degraded_answer_under_error_and_flags_it_under_serve_stale(tmp_path, serving_url) -> None:
    from lklab.core.staleness import StaleAnswer, apply_reader_policy

    settings, engine = setup(tmp_path, serving_url)
    down = merge.SpeedHealth(False, "the speed layer has never run", None, None)
    degraded = merge.query(engine, "revenue_per_minute", health=down)
    assert apply_reader_policy(settings, "revenue_per_minute", degraded.stale, degraded.stale_reason) == "serve-stale"
    strict = settings.model_copy(update={"reader_policy_views": {"revenue_per_minute": "error"}})
    with pytest.raises(StaleAnswer, match=r"^revenue_per_minute is stale: the speed layer has never run \(reader policy error\)$"):
        apply_reader_policy(strict, "revenue_per_minute", degraded.stale, degraded.stale_reason)
    assert apply_reader_policy(strict, "driver_earnings_daily", True, "x") == "serve-stale"  # the override is per view
    sessions = merge.query(engine, "user_sessions", health=down)  # batch alone: never stale from the speed layer
    assert apply_reader_policy(strict.model_copy(update={"reader_policy": "error"}), "user_sessions", sessions.stale,
                               sessions.stale_reason) == "error"
    assert merge.answer_json(replace(degraded, reader_policy="error"))["policy"] == "error"
