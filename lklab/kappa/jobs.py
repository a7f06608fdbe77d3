"""Process control for live Kappa jobs (lklab.kappa.worker): start, stop, status.

One job per output `<view>__v<N>` per lklab home: its pid file is <home>/kappa/<output>.pid and
its log <home>/logs/kappa-<output>.log. Lag, watermark and heartbeat come from the serving store
(the offsets committed with the output), not from the Kafka consumer group."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from lklab import views
from lklab.core import processes
from lklab.core.config import Settings
from lklab.kappa.freshness import WORKER_MARKER as _MARKER, freshness, pid_file, running_pid
from lklab.kappa.names import ReplayError, output_name, replay_scope
from lklab.kappa.planner import check_args, check_request, parse_from
from lklab.kappa.query import published
from lklab.kappa.records import build_record, outputs
from lklab.log import kafka_io
from lklab.serving import progress
from lklab.serving.store import make_engine

_ROOT = Path(__file__).resolve().parents[2]


class JobError(RuntimeError):
    """A one-line, actionable reason a Kappa job cannot start, stop or be inspected."""


@dataclass(frozen=True)
class JobStatus:
    view: str
    version: int
    output: str
    pid: int | None
    lag: int | None  # records behind the log's end; None when Kafka could not be asked
    watermark: datetime | None
    heartbeat_age_s: float | None
    log: Path
    stale: bool = False  # beyond the readers' budget (lklab.kappa.freshness): never beat, silent or lagging
    stale_reason: str | None = None
    beyond_horizon: int = 0  # records refused as older than the correction horizon (lklab.engine.horizon)

    @property
    def running(self) -> bool:
        return self.pid is not None


def log_file(settings: Settings, output: str) -> Path:
    return settings.logs_dir / f"kappa-{output}.log"


def published_version(engine: Engine, view: str) -> int:
    """The version the alias `<view>` points at (what `lklab kappa start VIEW` runs)."""
    _check(view)
    with engine.connect() as conn:
        target = published(conn, view)
    record = build_record(engine, target) if target else None
    if record is None:
        raise JobError(f"{view} has no published version: pass --version N")
    return int(record["version"])


def start(settings: Settings, view: str, version: int, start_from: str = "earliest", snapshot: str | None = None,
          wait_s: float = 120.0, max_rate: float | None = None) -> int:
    """Start `<view>__v<N>`'s job in the background (hydrating at most `max_rate` events/s);
    return its pid once it beats."""
    output = output_name(view, version)
    try:
        check_request(settings, view, version, parse_from(start_from), snapshot, max_rate)
    except ReplayError as exc:
        raise JobError(str(exc)) from None
    ensure_not_running(settings, view, version)
    engine = make_engine(settings)  # the schema exists before the job and status need it
    pid_file(settings, output).parent.mkdir(parents=True, exist_ok=True)
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    env = processes.python_env(_ROOT, settings.to_env())
    argv = [sys.executable, "-m", "lklab.kappa.worker", view, str(version), "--from", start_from]
    if snapshot:
        argv += ["--from-snapshot", snapshot]
    if max_rate:
        argv += ["--max-rate", str(max_rate)]
    try:
        return processes.spawn(argv, log=log_file(settings, output), pid_file=pid_file(settings, output),
                               ready=lambda pid: _beats(engine, replay_scope(view, version), pid),
                               wait_s=wait_s, poll_s=0.2, env=env, cwd=settings.home)
    except processes.StartupExited as exited:
        raise JobError(f"{output} exited with code {exited.returncode} during start-up: "
                       f"{processes.log_tail(log_file(settings, output))}") from None
    except processes.StartupTimedOut:
        stop(settings, view, version)
        raise JobError(f"{output} did not beat within {wait_s:.0f}s; see {log_file(settings, output)}") from None
    finally:
        engine.dispose()


def ensure_not_running(settings: Settings, view: str, version: int) -> None:
    """JobError if `<view>__v<N>`'s live job runs: a second writer on its output must not start."""
    output = output_name(view, version)
    if (pid := running_pid(settings, output)) is not None:
        raise JobError(f"{output} is already running (pid {pid}); `lklab kappa stop {view} --version {version}` first")


def _check(view: str, version: int = 1) -> None:
    try:
        check_args(view, version)
    except ReplayError as exc:
        raise JobError(str(exc)) from None


def _beats(engine: Engine, scope: str, pid: int) -> bool:
    with engine.connect() as conn:
        found = progress.heartbeat(conn, scope)
    return found is not None and found[0] == pid


def stop(settings: Settings, view: str, version: int, wait_s: float = 30.0) -> bool:
    """SIGTERM the job (it checkpoints and exits), SIGKILL if needed. False if it was not running."""
    _check(view, version)
    return processes.stop_group(pid_file(settings, output_name(view, version)), _MARKER, wait_s)


def status(settings: Settings) -> list[JobStatus]:
    """Every job that has run in this lab (running or not): pid, lag, watermark, heartbeat age."""
    ends, engine = kafka_io.end_offsets_or_none(settings), make_engine(settings)
    try:
        found = [_status(settings, engine, out, ends) for out in outputs(engine)]
    finally:
        engine.dispose()
    return [job for job in found if job.running or job.heartbeat_age_s is not None]


def job_status(settings: Settings, view: str, version: int) -> JobStatus:
    ends, engine = kafka_io.end_offsets_or_none(settings), make_engine(settings)
    try:
        return _status(settings, engine, views.VersionedOutput(view, version), ends)
    finally:
        engine.dispose()


def _status(settings: Settings, engine: Engine, out: views.VersionedOutput, ends: dict[int, int] | None) -> JobStatus:
    with engine.connect() as conn:
        f = freshness(conn, settings, out, ends)
    refused = progress.read_counters(engine, replay_scope(out.view, out.version))[progress.BEYOND_HORIZON]
    return JobStatus(out.view, out.version, out.name, f.pid, f.lag, f.watermark, f.heartbeat_age_s, log_file(settings, out.name),
                     f.stale, f.stale_reason, refused)
