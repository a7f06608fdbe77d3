"""The live Kappa job on real services: a background process that hydrates, then keeps consuming;
killed with SIGKILL mid-stream and restarted, it equals the oracle once its lag is 0, with
nothing lost or counted twice. Events include duplicates, corrections that move an event to
another window or city, and events up to 48 h late."""
from __future__ import annotations

import os
import signal
import time
from datetime import timedelta
import pytest

from lklab import kappa
from tests.integration.test_cli_args import lklab
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.core.events import EventType
from lklab.kappa import jobs
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import produce_events
from lklab.serving.progress import read_counters
from lklab.serving.store import make_engine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
VIEWS = ("revenue_per_minute", "daily_active_users")


def caught_up(settings: Settings, view: str, version: int, timeout_s: float = 120.0) -> jobs.JobStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        st = jobs.job_status(settings, view, version)
        if st.lag == 0 and st.running:
            return st
        assert time.monotonic() < deadline, f"{st.output} not caught up: {st}"
        time.sleep(0.2)


def kill_hard(settings: Settings, view: str, version: int) -> None:
    st = jobs.job_status(settings, view, version)
    assert st.pid is not None
    os.kill(st.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while jobs.job_status(settings, view, version).running:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def output(settings: Settings, view: str, version: int) -> dict:
    engine = make_engine(settings)
    try:
        return {(e, w): v for e, w, v in kappa.read_output(engine, view, kappa.output_name(view, version))}
    finally:
        engine.dispose()


def test_a_live_job_survives_kill_9_and_equals_the_oracle(isolated: Settings) -> None:
    settings = isolated.model_copy(update={"kappa_checkpoint_interval_s": 0.2})
    workload = generate(GeneratorConfig(seed=91, duration_s=600, rides_per_minute=40))  # late events up to 48 h
    assert any(d.event_version > 1 for d in workload.deliveries)  # corrections are in the stream
    chunks = [workload.deliveries[i::5] for i in range(5)]  # interleaved: late and out-of-order in every chunk

    def each(action) -> None:
        for view in VIEWS:
            action(settings, view, 1)

    produce_events(settings, chunks[0])
    each(jobs.start)  # hydrates from the log
    each(caught_up)
    produce_events(settings, chunks[1])  # consumed live
    each(caught_up)
    each(kill_hard)
    produce_events(settings, chunks[2])  # arrives while the jobs are down
    each(jobs.start)  # resume from the checkpointed offsets
    each(caught_up)
    produce_events(settings, chunks[3])
    each(kill_hard)  # mid-stream: between checkpoints, or during one
    each(jobs.start)
    each(caught_up)
    produce_events(settings, chunks[4])  # consumed live again
    for view in VIEWS:
        st = caught_up(settings, view, 1)
        assert st.heartbeat_age_s is not None and st.heartbeat_age_s < 5 and st.watermark is not None
        assert output(settings, view, 1) == oracle.for_view(view, workload.truth), view  # nothing lost, nothing twice
        counters = read_counters(make_engine(settings), kappa.replay_scope(view, 1))
        assert counters["processed"] == len(workload.deliveries) and counters["offsets_missed"] == 0, counters  # each record once
    assert jobs.stop(settings, "revenue_per_minute", 1) and not jobs.stop(settings, "revenue_per_minute", 1)
    assert not jobs.job_status(settings, "revenue_per_minute", 1).running
    jobs.stop(settings, "daily_active_users", 1)


def test_a_second_start_is_refused_and_a_bad_view_is_one_line(isolated: Settings) -> None:
    deliveries = generate(GeneratorConfig(seed=93, duration_s=60, rides_per_minute=10)).deliveries
    produce_events(isolated, deliveries)
    jobs.start(isolated, "driver_earnings_daily", 1)
    try:
        # a capture on the latest ride with a driver, dated a day past the horizon: same key, so same partition, behind its progress
        last = max((e for e in deliveries if e.driver_id), key=lambda e: e.event_time)
        stale = last.replace(event_id=f"{last.event_id}-stale", event_type=EventType.PAYMENT_CAPTURED, amount_cents=100,
                             event_time=last.event_time - timedelta(seconds=isolated.correction_horizon_s + 86_400))
        produce_events(isolated, [stale])
        assert caught_up(isolated, "driver_earnings_daily", 1).beyond_horizon == 1
        assert "1 refused" in lklab(isolated, "kappa", "status").stdout
        with pytest.raises(jobs.JobError, match="already running"):
            jobs.start(isolated, "driver_earnings_daily", 1)
        with pytest.raises(jobs.JobError, match="unknown view 'revenue_per_day'"):
            jobs.start(isolated, "revenue_per_day", 1)
        for args in (("stop", "revenue_per_day"), ("stop", "driver_earnings_daily", "--version", "0"),
                     ("start", "driver_earnings_daily", "--version", "2", "--from", "0:x")):
            bad = lklab(isolated, "kappa", *args)
            assert bad.returncode == 2 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1, (args, bad)
        assert [s.output for s in jobs.status(isolated) if s.running] == ["driver_earnings_daily__v1"]
        shown = lklab(isolated, "kappa", "status")
        assert shown.returncode == 0 and "driver_earnings_daily__v1" in shown.stdout and "running" in shown.stdout, shown
        refused = lklab(isolated, "kappa", "start", "driver_earnings_daily", "--version", "1")
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "already running" in refused.stderr, refused
    finally:
        jobs.stop(isolated, "driver_earnings_daily", 1)
    assert "stopped" in lklab(isolated, "kappa", "status").stdout
