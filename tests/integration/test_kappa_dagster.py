"""Dagster and the live Kappa job on real services: the replay asset starts a version's live job
and waits until it is hydrated; kappa_jobs_sensor observes every job and reports one that is down;
the daily refresh snapshots a view whose live job is running without replaying it (no second
writer), and a bounded replay of a running output is refused."""
from __future__ import annotations

import os
import signal
import time
from datetime import datetime, timezone

import pytest
from dagster import DagsterInstance, SensorResult, build_sensor_context, materialize

from assets.kappa.replays import kappa_assets, rides_events_log
from lklab import kappa
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.hybrid.refresh import refresh
from lklab.kappa import jobs
from lklab.log import kafka_io
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import produce_events
from lklab.serving import progress, publish
from lklab.serving.store import make_engine, serving_aliases, upsert
from orchestration.resources import LabSettings, build_resources
from orchestration.sensors import kappa_jobs_sensor
from tests.integration.test_kappa_live import caught_up, output

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
VIEW = "revenue_per_minute"


def expected(view: str, deliveries) -> dict:
    """The oracle over what was delivered so far (the highest version of each event wins)."""
    return oracle.for_view(view, oracle.final_events(deliveries))


def publish_alias(settings: Settings, view: str, version: int) -> None:
    """Point the alias at vN directly: these tests are about the job, not the cutover's checks."""
    engine = make_engine(settings)
    try:
        with engine.begin() as conn:
            upsert(conn, serving_aliases, [{"view": view, "target": kappa.output_name(view, version),
                                            "updated_at": datetime.now(timezone.utc)}])
    finally:
        engine.dispose()


def materialize_replay(settings: Settings, view: str, config: dict):
    [replay_asset] = [a for a in kappa_assets if a.key.to_user_string() == f"kappa_{view}"]
    return materialize([replay_asset, rides_events_log], resources=build_resources(LabSettings.from_settings(settings)),
                       run_config={"ops": {f"kappa_{view}": {"config": config}}}, instance=DagsterInstance.ephemeral(),
                       selection=[replay_asset.key], raise_on_error=False)


def observe(settings: Settings) -> dict[str, dict]:
    """One evaluation of kappa_jobs_sensor with the real resources: its observations by output."""
    with build_sensor_context(instance=DagsterInstance.ephemeral(),
                              resources=build_resources(LabSettings.from_settings(settings))) as context:
        result = kappa_jobs_sensor(context)
    assert isinstance(result, SensorResult), result
    seen = {}
    for obs in result.asset_events:
        metadata = {k: v.value for k, v in obs.metadata.items()}
        assert obs.asset_key.to_user_string() == f"kappa_{metadata['output'].rsplit('__v', 1)[0]}"
        seen[metadata["output"]] = metadata
    return seen


def pause_between_beats(settings: Settings, view: str, version: int) -> int:
    """SIGSTOP the job half-way between two heartbeats (it is idle, caught up), so it holds no
    write transaction of the serving store while it is stopped; returns its pid."""
    engine = make_engine(settings)
    try:
        with engine.connect() as conn:
            _, beat_at = progress.heartbeat(conn, kappa.replay_scope(view, version))
    finally:
        engine.dispose()
    since = (datetime.now(timezone.utc) - beat_at).total_seconds() % 1.0  # the job beats every second
    time.sleep((0.5 - since) % 1.0)
    pid = jobs.job_status(settings, view, version).pid
    os.kill(pid, signal.SIGSTOP)
    return pid


def test_the_replay_asset_starts_a_live_job_that_hydrates_and_keeps_consuming(isolated: Settings) -> None:
    settings = isolated.model_copy(update={"kappa_hydration_max_lag": 0, "kappa_checkpoint_interval_s": 0.2})
    workload = generate(GeneratorConfig(seed=131, duration_s=300, rides_per_minute=40))  # corrections, 48 h late events
    first, second = workload.deliveries[0::2], workload.deliveries[1::2]
    produce_events(settings, first)
    try:
        run = materialize_replay(settings, VIEW, {"version": 3})
        assert run.success
        [started] = run.asset_materializations_for_node(f"kappa_{VIEW}")
        meta = {k: v.value for k, v in started.metadata.items()}
        assert meta["mode"] == "live" and meta["started"] is True and meta["output"] == "revenue_per_minute__v3"
        assert meta["lag_records"] == 0 and meta["watermark"] and meta["log"].endswith("kappa-revenue_per_minute__v3.log")
        assert output(settings, VIEW, 3) == expected(VIEW, first)  # the asset returned only once v3 was hydrated
        st = jobs.job_status(settings, VIEW, 3)
        assert st.running and st.pid == meta["pid"]

        produce_events(settings, second)  # consumed live, after the asset's run ended
        caught_up(settings, VIEW, 3)
        assert output(settings, VIEW, 3) == oracle.for_view(VIEW, workload.truth)

        again = materialize_replay(settings, VIEW, {"version": 3})  # already running: reported, not started twice
        assert again.success
        [event] = again.asset_materializations_for_node(f"kappa_{VIEW}")
        assert event.metadata["started"].value is False and event.metadata["pid"].value == st.pid

        bounded = materialize_replay(settings, VIEW, {"version": 3, "until_end": True})  # a second writer: refused
        assert not bounded.success
        [failure] = [e for e in bounded.all_events if e.is_step_failure]
        reason = failure.step_failure_data.user_failure_data.description
        assert "revenue_per_minute__v3 is already running" in reason and "\n" not in reason, reason
        counters = progress.read_counters(make_engine(settings), kappa.replay_scope(VIEW, 3))
        assert counters["processed"] == len(workload.deliveries), counters  # nothing applied twice
    finally:
        assert jobs.stop(settings, VIEW, 3)

    bounded = materialize_replay(settings, VIEW, {"version": 3, "until_end": True})  # stopped: the bounded replay runs
    assert bounded.success and bounded.asset_materializations_for_node(f"kappa_{VIEW}")[0].metadata["mode"].value == "until_end"
    assert not jobs.job_status(settings, VIEW, 3).running


def test_the_sensor_observes_running_jobs_and_reports_a_stopped_or_hung_published_job_as_down(isolated: Settings) -> None:
    settings = isolated.model_copy(update={"kappa_heartbeat_timeout_s": 3.0})
    workload = generate(GeneratorConfig(seed=133, duration_s=120, rides_per_minute=20))
    first, later = workload.deliveries[: len(workload.deliveries) // 2], workload.deliveries[len(workload.deliveries) // 2:]
    produce_events(settings, first)
    jobs.start(settings, VIEW, 1)
    jobs.start(settings, VIEW, 2)  # a candidate beside the published version
    try:
        publish_alias(settings, VIEW, 1)
        caught_up(settings, VIEW, 1)
        caught_up(settings, VIEW, 2)
        seen = observe(settings)
        assert set(seen) == {"revenue_per_minute__v1", "revenue_per_minute__v2"}
        v1 = seen["revenue_per_minute__v1"]
        assert v1["healthy"] is True and v1["published"] is True and v1["running"] is True and v1["reason"] == ""
        assert v1["lag_records"] == 0 and 0 <= v1["heartbeat_age_s"] < 3.0 and v1["version"] == 1
        assert datetime.fromisoformat(v1["watermark"]) <= max(e.event_time for e in first)
        assert seen["revenue_per_minute__v2"]["published"] is False and seen["revenue_per_minute__v2"]["healthy"] is True

        pid = pause_between_beats(settings, VIEW, 1)  # alive, but its heartbeat goes stale: hung
        try:
            time.sleep(4.0)
            hung = observe(settings)["revenue_per_minute__v1"]
        finally:
            os.kill(pid, signal.SIGCONT)
        assert hung["healthy"] is False and hung["problem"] == "down" and hung["running"] is True
        assert "heartbeat" in hung["reason"] and hung["heartbeat_age_s"] > 3.0, hung

        assert jobs.stop(settings, VIEW, 1) and jobs.stop(settings, VIEW, 2)
        produce_events(settings, later)  # arrives while the published version's job is down
        seen = observe(settings)
        down, candidate = seen["revenue_per_minute__v1"], seen["revenue_per_minute__v2"]
        assert down["healthy"] is False and down["problem"] == "down" and down["running"] is False and down["pid"] == -1
        assert down["reason"] == "revenue_per_minute__v1 is published but its live job is not running", down
        assert down["lag_records"] == len(later)  # every record produced since it stopped
        assert candidate["healthy"] is True and candidate["running"] is False  # a stopped candidate is not an alarm
    finally:
        jobs.stop(settings, VIEW, 1)
        jobs.stop(settings, VIEW, 2)


def test_refresh_snapshots_a_view_whose_live_job_runs_without_replaying_it(isolated: Settings, spark) -> None:
    settings = isolated.model_copy(update={"kappa_checkpoint_interval_s": 0.2})
    workload = generate(GeneratorConfig(seed=137, duration_s=180, rides_per_minute=30))
    first, second = workload.deliveries[0::2], workload.deliveries[1::2]
    produce_events(settings, first)
    engine = make_engine(settings)
    jobs.start(settings, VIEW, 1)
    try:
        publish_alias(settings, VIEW, 1)
        caught_up(settings, VIEW, 1)
        held = kafka_io.run(kafka_io.end_offsets(settings))
        pid = pause_between_beats(settings, VIEW, 1)  # running, but it cannot consume what comes next
        try:
            produce_events(settings, second)
            with pytest.raises(jobs.JobError, match="revenue_per_minute__v1 is already running"):
                jobs.ensure_not_running(settings, VIEW, 1)
            refreshed = refresh(settings, engine, VIEW, spark=spark, who="test")
        finally:
            os.kill(pid, signal.SIGCONT)
        # a replay would have applied `second` itself; the snapshot holds exactly what the job had consumed
        assert refreshed is not None and refreshed.snapshot.offsets == held
        assert refreshed.snapshot.source_output == "revenue_per_minute__v1" and refreshed.live and refreshed.events == 0
        [publish_record] = [p for p in publish.history(engine, VIEW) if p["action"] == "refresh"]
        assert publish_record["snapshot_id"] == refreshed.snapshot.snapshot_id

        caught_up(settings, VIEW, 1)  # the job goes on and consumes `second` itself
        assert output(settings, VIEW, 1) == oracle.for_view(VIEW, workload.truth)
        counters = progress.read_counters(engine, kappa.replay_scope(VIEW, 1))
        assert counters["processed"] == len(workload.deliveries) and counters["offsets_missed"] == 0, counters
    finally:
        jobs.stop(settings, VIEW, 1)
        engine.dispose()
