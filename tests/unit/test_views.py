"""Shared view semantics: dedup/corrections, windows, watermark and T."""
from datetime import datetime, timedelta, timezone

from lklab import views
from lklab.core.events import Event, EventType

T0 = datetime(2026, 11, 17, 10, 0, tzinfo=timezone.utc)


def ev(event_id: str, amount: int | None, at: timedelta, version: int = 1, kind=EventType.PAYMENT_CAPTURED, city="berlin") -> Event:
    return Event(event_id=event_id, event_version=version, schema_version=1, event_type=kind, event_time=T0 + at,
                 ride_id="r-" + event_id, user_id="u", driver_id="d", city=city, amount_cents=amount)


def test_highest_version_wins_regardless_of_delivery_order() -> None:
    stream = [ev("a", 100, timedelta(0), version=2), ev("a", 999, timedelta(0), version=1), ev("a", 555, timedelta(0), version=2)]
    kept = views.latest_versions(stream)
    assert kept["a"].amount_cents == 100  # v2 first delivered wins; stale v1 and the equal-version re-delivery lose


def test_revenue_subtracts_refunds_and_counts_duplicates_once() -> None:
    stream = [
        ev("cap", 1000, timedelta(seconds=5)),
        ev("cap", 1000, timedelta(seconds=5)),  # duplicate delivery
        ev("ref", 300, timedelta(seconds=50), kind=EventType.PAYMENT_REFUNDED),
        ev("next", 700, timedelta(seconds=60)),  # next minute
        ev("open", None, timedelta(seconds=1), kind=EventType.APP_OPENED),
    ]
    assert views.VIEWS["revenue_per_minute"].evaluate(stream) == {("berlin", T0): 700, ("berlin", T0 + timedelta(minutes=1)): 700}


def test_a_correction_replaces_the_old_amount() -> None:
    stream = [ev("cap", 1000, timedelta(seconds=5)), ev("cap", 1250, timedelta(seconds=5), version=2)]
    assert views.VIEWS["revenue_per_minute"].evaluate(stream) == {("berlin", T0): 1250}


def test_window_start_is_utc_minute_aligned() -> None:
    other_zone = datetime(2026, 11, 17, 11, 0, 59, 999000, tzinfo=timezone(timedelta(hours=1)))
    assert views.window_start(other_zone) == T0


def test_watermark_is_the_slowest_partition_and_T_subtracts_lateness() -> None:
    wm = views.watermark({0: T0 + timedelta(minutes=20), 1: T0 + timedelta(minutes=12, seconds=30)})
    assert wm == T0 + timedelta(minutes=12, seconds=30)
    assert views.final_through(wm, 300) == T0 + timedelta(minutes=7)
    assert views.final_through(None, 300) is None


def test_too_late_means_the_window_is_already_final() -> None:
    wm = T0 + timedelta(minutes=12, seconds=30)
    assert views.is_too_late(T0 + timedelta(minutes=6, seconds=59), wm, 300)
    assert not views.is_too_late(T0 + timedelta(minutes=7), wm, 300)
    assert not views.is_too_late(T0, None, 300)


def test_dagster_lab_settings_cover_every_setting_but_secrets() -> None:
    from lklab.core.config import Settings
    from orchestration.resources import SECRETS, LabSettings

    assert set(LabSettings.model_fields) == set(Settings.model_fields) - set(SECRETS)
    assert all(field.default is None for field in LabSettings.model_fields.values())  # unset = the environment's value
    assert set(LabSettings.to_config_schema().as_field().config_type.fields) == set(LabSettings.model_fields)  # Dagster config
    custom = Settings(home="/tmp/x", gate_severity={"gx_gold_revenue_per_minute.minute_coverage": "fail"}, allowed_lateness_s=7, faults={"speed": "refund_sign"})
    assert LabSettings.from_settings(custom).settings() == custom
    custom = Settings(home="/tmp/y", blocked_windows_policy="refuse", partitions_start="2025-06-01", topic_segment_bytes=4096)
    assert LabSettings.from_settings(custom).settings() == custom


def test_one_registry_holds_every_view_and_its_logic_versions() -> None:
    from lklab import kappa

    assert list(views.VIEWS) == ["revenue_per_minute", "daily_active_users", "driver_earnings_daily", "user_sessions"]
    assert list(views.SPEED_LAYER) == ["revenue_per_minute", "daily_active_users", "driver_earnings_daily"]
    assert views.spec_at("user_sessions", 1).measure.split_at_midnight and not views.spec_at("user_sessions", 2).measure.split_at_midnight
    assert views.view("user_sessions").logic_version == 2  # the newest logic is the view's current one
    assert views.spec_at("daily_active_users", 7) == views.view("daily_active_users")  # versions past the newest run the newest
    # revenue v2 counts tips: the newest logic, but v1 stays current until a replay or backfill deploys it
    assert views.view("revenue_per_minute").logic_version == 1 and views.spec_at("revenue_per_minute", 7).logic_version == 2
    assert views.spec_at("revenue_per_minute", 2).measure.with_tips and not views.view("revenue_per_minute").measure.with_tips
    from lklab.core.config import Settings

    assert [s.logic_version for s in views.speed_layer_specs(Settings(revenue_logic=2))][:1] == [2]
    assert views.batch_spec(views.view("revenue_per_minute"), Settings()).logic_version == 1
    v3 = kappa.spec_for("user_sessions", 3)
    assert (v3.name, v3.view, v3.logic_version) == ("user_sessions__v3", "user_sessions", 2)
    assert views.VersionedOutput("daily_active_users", 4).name == kappa.output_name("daily_active_users", 4) == "daily_active_users__v4"


def test_each_measure_evaluates_its_own_kind() -> None:
    stream = [ev("a", 500, timedelta(seconds=1)), ev("b", 200, timedelta(minutes=40), kind=EventType.PAYMENT_REFUNDED),
              ev("c", None, timedelta(minutes=41), kind=EventType.APP_OPENED)]
    day = T0.replace(hour=0)
    assert views.view("revenue_per_minute").evaluate(stream) == {("berlin", T0): 500, ("berlin", T0 + timedelta(minutes=40)): -200}
    assert views.view("daily_active_users").evaluate(stream) == {("berlin", day): 1}
    # one rider: 10:00:01, then 40 min of silence (> 30 min), then 10:40 and 10:41: two sessions
    assert views.view("user_sessions").evaluate(stream) == {("u", day): (2, 60_000)}
