"""A Kappa output's freshness against a real serving store (SQLite and PostgreSQL) (no other services): the
heartbeat and lag budgets, and the watermark over every partition."""
from datetime import datetime, timedelta, timezone

from lklab import views
from lklab.core.config import Settings
from lklab.kappa import replay_scope
from lklab.kappa.freshness import freshness
from lklab.serving.store import make_engine, speed_heartbeat, speed_progress, upsert

OUT = views.VersionedOutput("revenue_per_minute", 2)
NOW = datetime(2026, 11, 17, 12, 0, tzinfo=timezone.utc)


def test_a_kappa_output_is_stale_when_it_never_beat_is_silent_or_lags(tmp_path, serving_url) -> None:
    settings = Settings(home=tmp_path, partitions=2, kappa_heartbeat_timeout_s=5, kappa_max_lag=100, serving_url=serving_url)
    engine = make_engine(settings)
    with engine.connect() as conn:
        never = freshness(conn, settings, OUT, {0: 10, 1: 10}, now=NOW)
    assert (never.stale, never.stale_reason, never.lag, never.watermark, never.running) == (
        True, "Kappa job revenue_per_minute__v2 has never run", 20, None, False)

    scope = replay_scope(OUT.view, OUT.version)
    with engine.begin() as conn:
        upsert(conn, speed_heartbeat, [{"group_id": scope, "pid": 1, "beat_at": NOW - timedelta(seconds=2)}])
        upsert(conn, speed_progress, [{"scope": scope, "topic": settings.topic, "partition": p, "next_offset": 400,
                                       "max_event_time": NOW - timedelta(minutes=p), "updated_at": NOW} for p in (0, 1)])
        upsert(conn, speed_heartbeat, [{"group_id": "lklab-replay-revenue_per_minute__v1", "pid": 1, "beat_at": NOW}])
    with engine.connect() as conn:
        fresh = freshness(conn, settings, OUT, {0: 450, 1: 450}, now=NOW)
        lagging = freshness(conn, settings, OUT, {0: 450, 1: 451}, now=NOW)
        silent = freshness(conn, settings, OUT, {0: 400, 1: 400}, now=NOW + timedelta(seconds=4))
        unknown = freshness(conn, settings, OUT, None, now=NOW)  # Kafka did not answer: the heartbeat decides
    assert (fresh.stale, fresh.lag, fresh.heartbeat_age_s, fresh.watermark) == (False, 100, 2.0, NOW - timedelta(minutes=1))
    assert (lagging.stale, lagging.stale_reason) == (True, "Kappa job revenue_per_minute__v2: lag 101 records exceeds 100")
    assert silent.stale and silent.stale_reason == ("Kappa job revenue_per_minute__v2: heartbeat is 6s old, "
                                                    "over the 5s timeout (down?)")
    assert (unknown.stale, unknown.lag) == (False, None)
