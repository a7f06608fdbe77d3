"""Launching the Lambda batch layer through Dagster from the CLI and the scenarios: the local
instance (with its run queue), the `ingest` then `lambda_batch` runs, and the lease that keeps
two runs off the same event dates."""
from __future__ import annotations

import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

from sqlalchemy import Engine

from lklab.core.config import Settings
from orchestration.jobs import LAMBDA_BATCH_TAG
from lklab.core.locks import BATCH_LOCK, LockBusy, file_lock
from lklab.lambda_arch import runs
from lklab.lambda_arch.builds import current_build

DAGSTER_YAML = f"""# Written by lklab (orchestration/launch.py). Runs launched by the daemon (sensors, schedules, the UI)
# go through the run queue; at most one Lambda batch run at a time.
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    tag_concurrency_limits:
      - key: "{LAMBDA_BATCH_TAG}"
        limit: 1
"""
OLD_DAGSTER_YAML = "telemetry:\n  enabled: false\n"  # what earlier lklab versions wrote


def write_dagster_yaml(settings: Settings) -> None:
    """<home>/dagster/dagster.yaml with the run queue's limit (kept if the user wrote their own)."""
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    config = settings.dagster_home / "dagster.yaml"
    if not config.exists() or config.read_text() == OLD_DAGSTER_YAML:
        config.write_text(DAGSTER_YAML)


def dagster_instance(settings: Settings):
    """The local Dagster instance under <home>/dagster, with the queued run coordinator."""
    from dagster import DagsterInstance

    write_dagster_yaml(settings)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    return DagsterInstance.get()


@dataclass
class BatchOutcome:
    success: bool
    run_ids: list[str] = field(default_factory=list)
    touched_dates: list[str] = field(default_factory=list)
    retried_dates: list[str] = field(default_factory=list)  # dates whose last run did not promote
    failed_gates: list[str] = field(default_factory=list)
    gates: list = field(default_factory=list)  # orchestration.gates.GateOutcome of every check run
    message: str = ""
    busy: bool = False  # another batch run held the dates past settings.batch_wait_s


LEASE_GRACE_S = 120.0  # a started run takes its lease in its first step (silver_events) well within this


def in_flight_batch_runs(instance, engine: Engine, max_age_s: float) -> list[str]:
    """Ids of lambda_batch runs queued or running in the instance (launched by the daemon or
    another process), created within `max_age_s`. A run Dagster still calls started but that
    holds no lease after LEASE_GRACE_S is ignored: its process died (kill -9 leaves it 'started')."""
    from dagster import DagsterRunStatus, RunsFilter

    active = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
    now = datetime.now(timezone.utc).timestamp()
    records = [r for r in instance.get_run_records(filters=RunsFilter(job_name="lambda_batch", statuses=active))
               if r.create_timestamp.timestamp() >= now - max_age_s]
    started = [r.dagster_run.run_id for r in records if r.dagster_run.status == DagsterRunStatus.STARTED
               and r.create_timestamp.timestamp() < now - LEASE_GRACE_S]
    orphaned = set(started) - runs.holding(engine, started)
    return [r.dagster_run.run_id for r in records if r.dagster_run.run_id not in orphaned]


@contextmanager
def _one_cli_batch(settings: Settings, deadline: float, on_wait: Callable[[str], None]) -> Iterator[None]:
    """One `lklab batch` per lab home at a time (ingest included): a second one waits, then reports."""
    settings.home.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(settings.home / BATCH_LOCK, deadline,
                       lambda: on_wait("waiting for another `lklab batch` on this lab to finish")):
            yield
    except LockBusy:  # only the lock raises it, never the batch inside
        raise runs.LabBusy() from None


def _take_lease(settings: Settings, engine: Engine, instance, run_id: str, keys: tuple[str, str], deadline: float,
                on_wait: Callable[[str], None]) -> None:
    """Wait (until `deadline`) for batch runs in flight, then hold `keys` for `run_id`."""
    told: set[str] = set()
    while True:
        waiting_for = in_flight_batch_runs(instance, engine, settings.batch_lease_timeout_s)
        if not waiting_for:
            try:
                runs.take_lease(engine, run_id, *keys, settings.batch_lease_timeout_s)
                return
            except runs.DatesBusy as busy:
                waiting_for = [busy.holder]
                if time.monotonic() > deadline:
                    raise
        elif time.monotonic() > deadline:
            holder = waiting_for[0]
            raise runs.DatesBusy(holder, *keys, datetime.now(timezone.utc))
        for holder in set(waiting_for) - told:
            on_wait(f"waiting for batch run {holder} (in flight) to finish")
        told |= set(waiting_for)
        time.sleep(2.0)


def _previous_build_note(engine: Engine) -> str:
    with engine.connect() as conn:
        build = current_build(conn)
    return (f"build {build.build_id} stays published" if build else "no batch build is published yet (readers get speed rows only)")


def run_batch(settings: Settings, dates: tuple[str, str] | None = None,
              on_wait: Callable[[str], None] | None = None) -> BatchOutcome:
    """The batch layer through Dagster, recorded in the local instance (visible in `dagster dev`):
    the `ingest` job appends the log's new offsets to bronze, then the `lambda_batch` job rebuilds
    in one run the event dates that ingest touched plus every date whose last run did not promote
    (blocked, failed, or killed before its promotion committed, which leaves bronze records no
    promoted build consumed), or `dates` (a backfill range of partition keys): silver → gold →
    blocking gates → promotion.
    It waits up to settings.batch_wait_s for a batch run in flight (calling `on_wait` with what it
    waits for), then reports it instead (outcome.busy)."""
    from lklab.serving.store import make_engine

    on_wait = on_wait or (lambda _message: None)
    deadline = time.monotonic() + settings.batch_wait_s
    engine = make_engine(settings)
    outcome = BatchOutcome(success=False)
    try:
        with _one_cli_batch(settings, deadline, on_wait):
            return _run_batch(settings, dates, engine, deadline, on_wait, outcome)
    except runs.DatesBusy as busy:
        outcome.busy = True
        outcome.message = f"{busy}; waited {settings.batch_wait_s:.0f}s (LKLAB_BATCH_WAIT_S): run `lklab batch` again when it finishes"
        return outcome


def _run_batch(settings: Settings, dates: tuple[str, str] | None, engine: Engine, deadline: float, on_wait, outcome: BatchOutcome) -> BatchOutcome:
    from dagster import BetaWarning

    from orchestration.definitions import make_definitions
    from orchestration.gates import failed_gates, gate_outcomes
    from orchestration.jobs import lambda_batch_selection
    from orchestration.resources import LabSettings
    from orchestration.partitions import dates_to_partition_keys, range_tags

    warnings.filterwarnings("ignore", category=BetaWarning)  # backfill_policy is beta: not the user's concern
    definitions = make_definitions(LabSettings.from_settings(settings))
    instance = dagster_instance(settings)
    # CRITICAL: a failed gate is reported as one line by the caller, not as Dagster's stack traces.
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    ingest = definitions.resolve_job_def("ingest").execute_in_process(run_config=quiet, instance=instance, raise_on_error=False)
    outcome.run_ids.append(ingest.run_id)
    outcome.gates = gate_outcomes(instance, ingest.run_id)
    if not ingest.success:
        outcome.failed_gates = failed_gates(instance, ingest.run_id)
        outcome.message = f"ingest run {ingest.run_id} failed; {_previous_build_note(engine)}"
        return outcome
    [materialization] = ingest.asset_materializations_for_node("bronze_events")
    outcome.touched_dates = list(materialization.metadata["touched_dates"].value)
    retried = [d for d in sorted(set(runs.unpromoted_dates(engine)) | set(_owed_dates(materialization)))
               if d.isoformat() not in outcome.touched_dates]
    outcome.retried_dates = [d.isoformat() for d in retried] if dates is None else []
    keys = dates or dates_to_partition_keys([date.fromisoformat(d) for d in outcome.touched_dates] + retried)
    if keys is None:
        outcome.success, outcome.message = True, "no new events and no blocked dates: nothing to rebuild"
        return outcome
    run_id = str(uuid.uuid4())  # a Dagster run id, chosen before the run so the lease can name it
    _take_lease(settings, engine, instance, run_id, keys, deadline, on_wait)
    try:
        batch = definitions.resolve_job_def("lambda_batch").execute_in_process(
            run_config=quiet, instance=instance, raise_on_error=False, tags=range_tags(*keys), run_id=run_id,
            asset_selection=lambda_batch_selection(settings),
        )
    except BaseException:  # Ctrl-C or a crash: give the dates back now, not after the lease timeout
        runs.finish(engine, run_id, failure="interrupted before it finished")
        raise
    outcome.run_ids.append(batch.run_id)
    outcome.failed_gates = failed_gates(instance, batch.run_id)
    outcome.gates += gate_outcomes(instance, batch.run_id)
    outcome.success = batch.success and not outcome.failed_gates
    if outcome.success:
        outcome.message = f"rebuilt event dates {keys[0]}…{keys[1]} and promoted a new build"
        return outcome
    status = runs.finish(engine, batch.run_id, failure=_first_failure(batch))
    outcome.message = f"batch run {batch.run_id} {status or 'stopped'} on event dates {keys[0]}…{keys[1]}; {_previous_build_note(engine)}"
    return outcome


def _owed_dates(materialization) -> list[date]:
    """The dates bronze holds records of that no promoted build consumed (a run killed between
    its ingest and its promotion left them), from the ingest's materialization."""
    owed = materialization.metadata.get("owed_dates")
    return [date.fromisoformat(d) for d in owed.value] if owed is not None else []


def _first_failure(result) -> str:
    """One line: the first step failure's message."""
    for event in result.all_events:
        if event.is_step_failure:
            return event.step_failure_data.error.message.strip().splitlines()[0][:500] if event.step_failure_data.error else event.message
    return "the run failed"
