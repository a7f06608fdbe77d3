"""Gate severities, the blocked-batch signal and safe re-runs on real services (Kafka, Spark/Delta,
Faust, Dagster, GX). Expected values come from the generator's oracle."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from typer.testing import CliRunner

from lklab.lake import tables as lake
from lklab.lambda_arch import merge
from lklab.core import oracle
from lklab.lambda_arch import speed
from lklab import views
from lklab.api.app import create_app
from orchestration.launch import dagster_instance, run_batch
from lklab.cli import app
from lklab.core.config import Settings
from lklab.log.generator import GeneratorConfig, generate, write_ledger
from lklab.log.produce import produce_events
from lklab.serving.store import batch_runs, make_engine, payments_ledger, speed_late_windows
from lklab.lake.spark import get_spark
from tests.integration.test_lambda import CAP, START, batch_ok, event, lab, merged, produce, promoted_build_id, revenue_lab  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
DIVERGENCE = "gold_revenue_per_minute.divergence_revenue_per_minute"
TWO_CITIES = ["berlin", "paris"]
DAEMON_RUN = """
import sys
from orchestration.launch import dagster_instance
from lklab.core.config import Settings
from orchestration.definitions import make_definitions
from orchestration.partitions import range_tags
day = sys.argv[1]
result = make_definitions().resolve_job_def("lambda_batch").execute_in_process(
    run_config={"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}, instance=dagster_instance(Settings()),
    raise_on_error=False, tags=range_tags(day, day))
failures = [e.step_failure_data.error.message for e in result.all_events if e.is_step_failure and e.step_failure_data.error]
print("RUN", "success" if result.success else "failed: " + " | ".join(failures))
"""


def cli_batch(settings: Settings) -> subprocess.CompletedProcess:
    """`lklab batch` as a user runs it: its own process, so JVM and Dagster output reach the terminal."""
    env = {**os.environ, **settings.to_env(), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lklab.cli", "batch"], env=env, capture_output=True, text=True, timeout=900)


def assert_one_line_per_gate(output: str) -> None:
    assert "Traceback" not in output and "Stack Trace:" not in output, output
    assert not re.search(r"\bWARN\b", output), output  # no Spark/log4j WARN lines


def test_a_sparse_city_warns_and_a_divergence_block_is_signalled_to_readers(revenue_lab: Settings) -> None:
    lab = revenue_lab
    workload = generate(GeneratorConfig(seed=51, duration_s=300, rides_per_minute=60, cities=TWO_CITIES))
    lisbon = [event(f"lis-{m}", CAP, START + timedelta(minutes=m, seconds=10), "lisbon", 500 + m, user=f"u-l{m}") for m in (0, 3)]
    produce(lab, [*workload.deliveries, *lisbon])
    first = batch_ok(lab)  # lisbon has no payment at 10:01 and 10:02: normal data, a warning
    coverage = next(g for g in first.gates if g.gate == "gold_revenue_per_minute.gx_gold_revenue_per_minute")
    assert coverage.status == "warn" and "lisbon: 2 of 4 minutes missing" in coverage.line(), coverage.line()
    assert coverage.line().startswith("warn gold_revenue_per_minute.gx_gold_revenue_per_minute: ")
    assert oracle.compare(merged(lab, "revenue_per_minute"), oracle.for_view("revenue_per_minute", [*workload.truth, *lisbon])).equal
    good_build = promoted_build_id(lab)

    speed.stop(lab)
    buggy = lab.model_copy(update={"faults": {"speed": "refund_sign"}})
    speed.start(buggy)
    second = generate(GeneratorConfig(seed=52, duration_s=300, rides_per_minute=60, refund_fraction=0.3, cities=TWO_CITIES,
                                      start=START + timedelta(minutes=5)))
    produce(buggy, second.deliveries)
    done = cli_batch(lab)
    speed.stop(buggy)
    output = done.stdout + done.stderr
    assert done.returncode == 2, output
    assert f"fail {DIVERGENCE}: revenue_per_minute: batch and speed differ" in output, output
    assert f"build {good_build} stays published" in output, output
    assert_one_line_per_gate(output)
    assert promoted_build_id(lab) == good_build

    engine = make_engine(lab)
    truth = oracle.for_view("revenue_per_minute", [*workload.truth, *lisbon, *second.truth])
    answer = merge.query(engine, "revenue_per_minute")
    assert answer.batch_blocked is not None and answer.batch_blocked.gate == DIVERGENCE
    flagged = {(r.entity, r.window_start) for r in answer.rows if r.diverged}
    assert flagged and all(r.source == "speed" for r in answer.rows if r.diverged)
    assert all(r.value != truth[(r.entity, r.window_start)] for r in answer.rows if r.diverged)
    with engine.connect() as conn:
        late = set(conn.execute(select(speed_late_windows.c.entity, speed_late_windows.c.window_start)
                                .where(speed_late_windows.c.view == "revenue_per_minute")).all())
    judged_through = max(w for _, w in flagged)  # the blocked run judged every final window up to here
    wrong = {(r.entity, r.window_start) for r in answer.rows if r.source == "speed" and r.window_start <= judged_through
             and r.value != truth[(r.entity, r.window_start)] and (r.entity, r.window_start) not in late}
    assert flagged == wrong  # exactly the speed rows the divergence gate named

    refused = merge.query(engine, "revenue_per_minute", policy=merge.REFUSE)
    assert refused.withheld == len(flagged) and not any(r.diverged for r in refused.rows)
    assert {(r.entity, r.window_start) for r in refused.rows} == {(r.entity, r.window_start) for r in answer.rows} - flagged

    client = TestClient(create_app(lab))
    body = client.get("/views/revenue_per_minute").json()
    assert body["batch_blocked"]["gate"] == DIVERGENCE and body["blocked_windows_policy"] == "serve-flagged"
    assert {(r["city"], r["window_start"]) for r in body["rows"] if r["diverged"]} == {(e, w.isoformat()) for e, w in flagged}
    assert client.get("/lambda/status").json()["batch_blocked"]["gate"] == DIVERGENCE
    os.environ.update(lab.to_env())
    try:
        cli_json = CliRunner().invoke(app, ["query", "revenue_per_minute", "--json"])
        status = CliRunner().invoke(app, ["lambda", "status"])
    finally:
        for name in lab.to_env():
            os.environ.pop(name, None)
    assert set(json.loads(cli_json.stdout)) == set(body) and json.loads(cli_json.stdout)["batch_blocked"] == body["batch_blocked"]
    assert "batch layer BLOCKED" in status.stdout and "None" not in status.stdout, status.stdout


def test_the_next_batch_rebuilds_the_dates_a_blocked_run_left_and_clears_the_signal(isolated: Settings) -> None:
    # the two views the ledger gate reads; the others are not built (LKLAB_BATCH_VIEWS)
    settings = isolated.model_copy(update={"ledger_grace_s": 0, "batch_views": ["revenue_per_minute", "driver_earnings_daily"]})
    workload = generate(GeneratorConfig(seed=53, duration_s=600, rides_per_minute=30, start=datetime(2026, 11, 17, 23, 55, tzinfo=timezone.utc)))
    engine = make_engine(settings)
    write_ledger(engine, workload.truth)
    produce_events(settings, workload.deliveries)
    with engine.begin() as conn:  # the ledger says one day-one payment was a cent more
        victim = conn.execute(select(payments_ledger.c.event_id).where(payments_ledger.c.event_time < datetime(2026, 11, 18, tzinfo=timezone.utc))
                              .order_by(payments_ledger.c.event_id).limit(1)).scalar_one()
        conn.execute(update(payments_ledger).where(payments_ledger.c.event_id == victim).values(amount_cents=payments_ledger.c.amount_cents + 1))

    blocked = run_batch(settings)
    assert not blocked.success and any(line.startswith("fail gold_driver_earnings_daily.ledger_reconciliation") for line in blocked.failed_gates)
    assert "no batch build is published yet" in blocked.message and "stays published" not in blocked.message, blocked.message
    signal = merge.query(engine, "revenue_per_minute").batch_blocked
    assert signal is not None and signal.gate == "gold_driver_earnings_daily.ledger_reconciliation"

    with engine.begin() as conn:  # the fix: the ledger is right again
        conn.execute(update(payments_ledger).where(payments_ledger.c.event_id == victim).values(amount_cents=payments_ledger.c.amount_cents - 1))
    again = batch_ok(settings)  # no new events: it must still rebuild the blocked dates
    assert again.touched_dates == [] and again.retried_dates == ["2026-11-17", "2026-11-18"], again
    assert promoted_build_id(settings) is not None
    answer = merge.query(engine, "revenue_per_minute")
    assert answer.batch_blocked is None
    spec = views.VIEWS["revenue_per_minute"]
    final = {k: v for k, v in oracle.for_view("revenue_per_minute", workload.truth).items() if spec.is_final(k[1], answer.T)}
    assert final and oracle.compare({(r.entity, r.window_start): r.value for r in answer.rows if r.source == "batch"}, final).equal


def test_two_batch_runs_launched_together_on_the_same_dates_never_write_together(isolated: Settings) -> None:
    from lklab.lambda_arch import runs
    from orchestration.definitions import make_definitions
    from orchestration.resources import LabSettings
    from orchestration.partitions import range_tags

    # minutes become final within the small workload; revenue_per_minute is the view it reads
    isolated = isolated.model_copy(update={"allowed_lateness_s": 60, "batch_views": ["revenue_per_minute"]})
    workload = generate(GeneratorConfig(seed=54, duration_s=240, rides_per_minute=60))
    produce_events(isolated, workload.deliveries)
    batch_ok(isolated)  # ingest + a first build
    day = START.date().isoformat()
    definitions = make_definitions(LabSettings.from_settings(isolated))
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    # What the run queue launches for the sensor: the job itself on the same dates, in its own
    # process (two Dagster runs in one process share Python's logging locks, unlike in real life).
    daemon = subprocess.Popen([sys.executable, "-c", DAEMON_RUN, day], env={**os.environ, **isolated.to_env(), "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    cli = run_batch(isolated, (day, day))
    daemon_out = daemon.communicate(timeout=900)[0]
    daemon_success = "RUN success" in daemon_out

    engine = make_engine(isolated)
    with engine.connect() as conn:
        rows = conn.execute(select(batch_runs).order_by(batch_runs.c.started_at)).all()
    promoted = [r for r in rows if r.status == "promoted"]
    assert all(r.status != "running" for r in rows)
    for earlier, later in zip(promoted, promoted[1:]):
        assert earlier.finished_at <= later.started_at, rows  # one writer at a time
    print(f"race: daemon run {'promoted too, one after the other' if daemon_success else 'lost the lease'}; rows {rows}")
    if not daemon_success:  # it lost the lease: it wrote nothing and said why
        assert "RUN failed" in daemon_out and "event dates 2026-11-17…2026-11-17 are being rebuilt by batch run" in daemon_out, daemon_out
    assert cli.success and len(promoted) == 2 + daemon_success, (cli.message, daemon_out, rows)

    # A run launched while another holds the dates (its lease is live) writes nothing and says why.
    runs.take_lease(engine, "holder-run", day, day, isolated.batch_lease_timeout_s)
    silver = lake.path(isolated, lake.SILVER)
    version = lake.delta_version(get_spark(isolated), silver)
    refused = definitions.resolve_job_def("lambda_batch").execute_in_process(
        run_config=quiet, instance=dagster_instance(isolated), raise_on_error=False, tags=range_tags(day, day))
    failure = next(e for e in refused.all_events if e.is_step_failure)
    assert not refused.success and "being rebuilt by batch run holder-run" in failure.step_failure_data.error.message
    assert lake.delta_version(get_spark(isolated), silver) == version
    runs.promoted(engine, "holder-run", promoted[-1].build_id)  # release it for the check below

    answer = merge.query(engine, "revenue_per_minute")  # minutes are final within the workload; days are not
    spec = views.VIEWS["revenue_per_minute"]
    final = {k: v for k, v in oracle.for_view("revenue_per_minute", workload.truth).items() if spec.is_final(k[1], answer.T)}
    served = {(r.entity, r.window_start): r.value for r in answer.rows if r.source == "batch"}
    assert final and oracle.compare(served, final).equal
