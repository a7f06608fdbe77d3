"""Process control for the speed layer (the Faust worker in streaming/): start, stop, status, wait.

`speed_workers` workers per lklab home, one consumer group: the first one's pid file is
<home>/speed/worker.pid and its log <home>/logs/speed.log; worker i > 0 has <home>/speed/worker-<i>/
and <home>/logs/speed-<i>.log, and listens on speed_web_port + i.
Progress and lag come from the serving store (offsets committed with the results), not from
the Kafka consumer group, because those are the offsets the results are exact for.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine

from lklab.log import kafka_io
from lklab.core import processes
from lklab import views
from lklab.core.config import Settings
from lklab.serving.progress import read_counters, read_progress
from lklab.serving.store import make_engine

_ROOT = Path(__file__).resolve().parents[2]
_MARKER = b"streaming.worker"


class SpeedError(RuntimeError):
    """A one-line, actionable reason the speed layer cannot start, stop or be inspected."""


@dataclass(frozen=True)
class PartitionLag:
    partition: int
    next_offset: int  # committed with the results in the serving store (0 = nothing consumed)
    end_offset: int | None  # Kafka high watermark; None when Kafka could not be asked
    begin_offset: int  # Kafka log start: records below it are gone (retention) and count as no lag
    max_event_time: datetime | None

    @property
    def lag(self) -> int | None:
        if self.end_offset is None:
            return None
        return max(self.end_offset - max(self.next_offset, self.begin_offset), 0)


@dataclass(frozen=True)
class SpeedStatus:
    running: bool
    pid: int | None  # the first worker's
    workers: list[int]  # the pids of every running worker
    group: str
    topic: str
    partitions: dict[int, PartitionLag] = field(default_factory=dict)
    total_lag: int | None = None  # None when Kafka end offsets are unknown
    watermark: datetime | None = None
    final_through: datetime | None = None  # windows before this are final (batch owns them)
    counters: dict[str, int] = field(default_factory=dict)
    kafka_error: str | None = None
    log: Path | None = None


def _index(settings: Settings, worker: int | None) -> int:
    return settings.speed_worker_index if worker is None else worker


def worker_dir(settings: Settings, worker: int | None = None) -> Path:
    """Worker `worker`'s directory (default: this process's, speed_worker_index)."""
    i = _index(settings, worker)
    return settings.home / "speed" if i == 0 else settings.home / "speed" / f"worker-{i}"


def pid_file(settings: Settings, worker: int | None = None) -> Path:
    return worker_dir(settings, worker) / "worker.pid"


def log_file(settings: Settings, worker: int | None = None) -> Path:
    i = _index(settings, worker)
    return settings.logs_dir / ("speed.log" if i == 0 else f"speed-{i}.log")


def assignment_file(settings: Settings, worker: int | None = None) -> Path:
    """Written by the worker (streaming.app) on every rebalance; start() waits for it."""
    return worker_dir(settings, worker) / "assignment.json"


def read_pid(settings: Settings, worker: int | None = None) -> int | None:
    """The running worker's pid (default: the first worker), or None (a stale pid file is removed)."""
    return processes.read_pid(pid_file(settings, 0 if worker is None else worker), _MARKER)


def _started(settings: Settings) -> list[int]:
    """The indexes of the workers this home has pid files for (however many were started)."""
    found = (d.name.removeprefix("worker-") for d in (settings.home / "speed").glob("worker-*"))
    return sorted({0, *range(settings.speed_workers), *(int(i) for i in found if i.isdigit())})


def read_pids(settings: Settings) -> list[int]:
    """The pids of every running worker."""
    return [pid for i in _started(settings) if (pid := read_pid(settings, i)) is not None]


def _log_tail(settings: Settings, lines: int = 5) -> str:
    return processes.log_tail(log_file(settings), lines)


def _assigned(assignment: Path, pid: int) -> bool:
    """Has worker `pid` written its partition assignment (streaming.app does, on every rebalance)?"""
    try:
        return json.loads(assignment.read_text()).get("pid") == pid
    except (FileNotFoundError, ValueError):
        return False


def start(settings: Settings, wait_s: float = 90.0) -> int:
    """Start the `speed_workers` workers in the background; return the first one's pid once each
    has partitions assigned."""
    if pids := read_pids(settings):
        raise SpeedError(f"speed layer is already running (pid {', '.join(map(str, pids))}, group {settings.speed_group}); "
                         "`lklab speed stop` first")
    for i in range(settings.speed_workers):
        if not processes.wait_port_free("127.0.0.1", settings.speed_web_port + i):
            raise SpeedError(f"speed web port 127.0.0.1:{settings.speed_web_port + i} (worker {i}) is in use; set LKLAB_SPEED_WEB_PORT")
    try:
        # Faust must never create the topic itself (with other partitions): make sure it exists.
        kafka_io.run(kafka_io.ensure_topics(settings))
    except Exception as exc:  # noqa: BLE001 - one line for the CLI
        raise SpeedError(f"cannot reach Kafka at {settings.bootstrap} to check topics: {exc!r}") from None
    make_engine(settings).dispose()  # schema exists before the worker and status need it
    settings.logs_dir.mkdir(parents=True, exist_ok=True)
    try:
        return [_spawn(settings, i, wait_s) for i in range(settings.speed_workers)][0]
    except SpeedError:
        stop(settings)
        raise


def _spawn(settings: Settings, worker: int, wait_s: float) -> int:
    one = settings.model_copy(update={"speed_worker_index": worker})
    name = "speed worker" if settings.speed_workers == 1 else f"speed worker {worker}"
    worker_dir(one).mkdir(parents=True, exist_ok=True)
    assignment = assignment_file(one)
    assignment.unlink(missing_ok=True)
    env = processes.python_env(_ROOT, one.to_env())
    try:
        return processes.spawn(
            [sys.executable, "-m", "streaming.worker"],
            log=log_file(one), pid_file=pid_file(one), ready=lambda pid: _assigned(assignment, pid),
            wait_s=wait_s, poll_s=0.2, env=env, cwd=worker_dir(one),
        )
    except processes.StartupExited as exited:
        raise SpeedError(f"{name} exited with code {exited.returncode} during start-up: "
                         f"{processes.log_tail(log_file(one), 5)}") from None
    except processes.StartupTimedOut:
        raise SpeedError(f"{name} got no partitions of {settings.topic} within {wait_s:.0f}s; "
                         f"see {log_file(one)}") from None


def stop(settings: Settings, wait_s: float = 30.0) -> bool:
    """SIGTERM every worker's process group, wait, SIGKILL if needed. False if none was running."""
    stopped = False
    for i in _started(settings):
        stopped = processes.stop_group(pid_file(settings, i), _MARKER, wait_s) or stopped
        assignment_file(settings, i).unlink(missing_ok=True)
    return stopped


def _kafka_offsets(settings: Settings) -> tuple[dict[int, int], dict[int, int]]:
    async def both():
        return await kafka_io.beginning_offsets(settings), await kafka_io.end_offsets(settings)

    return kafka_io.run(both())


def status(settings: Settings) -> SpeedStatus:
    """Process state, per-partition lag (store offsets vs Kafka end offsets), watermark, counters."""
    try:
        offsets, kafka_error = _kafka_offsets(settings), None
    except Exception as exc:  # noqa: BLE001 - reported, not fatal: the store still answers
        offsets, kafka_error = None, f"{type(exc).__name__}: {exc}"
    engine = make_engine(settings)
    try:
        return _status(settings, engine, offsets, kafka_error)
    finally:
        engine.dispose()


def _status(
    settings: Settings,
    engine: Engine,
    offsets: tuple[dict[int, int], dict[int, int]] | None,
    kafka_error: str | None = None,
) -> SpeedStatus:

    pid, pids = read_pid(settings), read_pids(settings)
    progress = read_progress(engine, settings.topic, settings.speed_group)
    counters = read_counters(engine, settings.speed_group)
    begin, end = offsets if offsets is not None else ({}, None)
    partitions: dict[int, PartitionLag] = {}
    for p in sorted(set(progress) | set(end or {})):
        pp = progress.get(p)
        partitions[p] = PartitionLag(
            partition=p,
            next_offset=pp.next_offset if pp else 0,
            end_offset=None if end is None else end.get(p, 0),
            begin_offset=begin.get(p, 0),
            max_event_time=pp.max_event_time if pp else None,
        )
    wm = views.watermark({p: pp.max_event_time for p, pp in progress.items() if pp.max_event_time is not None}, settings.partitions)
    return SpeedStatus(
        running=bool(pids),
        pid=pid,
        workers=pids,
        group=settings.speed_group,
        topic=settings.topic,
        partitions=partitions,
        total_lag=None if end is None else sum(pl.lag or 0 for pl in partitions.values()),
        watermark=wm,
        final_through=views.final_through(wm, settings.allowed_lateness_s),
        counters=counters,
        kafka_error=kafka_error,
        log=log_file(settings),
    )


def wait_caught_up(settings: Settings, timeout_s: float = 60.0, poll_s: float = 0.2) -> SpeedStatus:
    """Wait until the store has consumed everything that was in the topic when this was called;
    raises TimeoutError (with the lag) when it has not after timeout_s."""
    offsets = _kafka_offsets(settings)  # sampled once: later records do not move the target
    engine = make_engine(settings)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            current = _status(settings, engine, offsets)
            if current.total_lag == 0:
                return current
            lag = {p: pl.lag for p, pl in current.partitions.items() if pl.lag}
            if not current.running:
                raise SpeedError(
                    f"speed worker is not running (lag {current.total_lag} {lag}); see {log_file(settings)}: {_log_tail(settings)}"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(f"speed layer not caught up after {timeout_s:.0f}s: lag {current.total_lag} {lag}")
            time.sleep(poll_s)
    finally:
        engine.dispose()
