"""One drill's live lab: both architectures running on one paced stream, the HTTP API, readers
and the monitor, the supervisor that restarts crashed stream processes (as Kubernetes would,
with a growing back-off), and the batch layer on a cadence. `run_isolated` gives a run its own
broker, lake, serving store and ports under .lklab/drills/NAME, and stops all it started."""
from __future__ import annotations

import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from sqlalchemy import Engine

from expectations.runner import run_suite
from lklab.core import processes
from lklab.core.processes import free_port
from lklab.core.config import Settings
from lklab.core.provenance import git_sha
from lklab.core.http import get_json
from lklab.drills.readers import Monitor, Reader, view_path
from lklab.drills.registry import Drill, DrillContext, DrillError, Size
from lklab.drills.result import KAPPA, LAMBDA, Action, ArchRun, DrillResult, Fault
from lklab.drills.scoring import figures, score
from lklab.drills.stream import LiveStream, StreamShape, workload_for
from lklab.kappa import cutover as co
from lklab.kappa import hydration, jobs
from lklab.kappa.freshness import running_pid
from lklab.kappa.names import output_name
from lklab.lambda_arch import speed
from lklab.log import broker as kafka_runtime
from lklab.log import kafka_io
from lklab.log.generator import write_ledger
from lklab.serving.store import make_engine
from orchestration.launch import run_batch

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "drills" / "results"
API_MARKER = b"lklab.cli"
BACKOFF_S = (1.0, 2.0, 4.0, 8.0)  # CrashLoopBackOff, scaled down: Kubernetes waits 10 s doubling to 5 min


def drill_settings(settings: Settings, **changes: object) -> Settings:
    """The lab's settings for a drill: producers judged stale within seconds (the stream is sped
    up), checkpoints and speed batches small, so readers see changes as they happen."""
    return settings.model_copy(update={"speed_heartbeat_timeout_s": 4.0, "kappa_heartbeat_timeout_s": 4.0,
                                       "kappa_checkpoint_interval_s": 0.25, "speed_batch_within_s": 0.1,
                                       "kappa_rollback_window_s": 3600.0, **changes})


@dataclass
class Supervised:
    """A stream process the supervisor keeps running: restarted after each exit with a growing
    back-off, with the settings of whatever is deployed now."""

    name: str
    arch: str
    start: Callable[[Settings], object]
    running: Callable[[Settings], bool]
    stop: Callable[[Settings], object]
    settings: Settings
    wanted: bool = True
    restarts: int = 0
    deploying: bool = False  # stopped on purpose: the next start is the rollout, not a crash
    _failures: int = 0

    def deploy(self, settings: Settings) -> None:
        """Roll out new settings (code): stop; the supervisor starts it again with them. Not
        wanted while it stops: a start racing the stop would lose its pid file to the stop's
        clean-up and leave the old code running, orphaned."""
        self.wanted = False
        self.stop(self.settings)
        self.settings, self.deploying, self._failures = settings, True, 0
        self.wanted = True


@dataclass
class Supervisor:
    """Keeps each supervised process running, one watcher thread per process (a slow start of
    one never delays the restart of another)."""

    monitor: Monitor
    processes: list[Supervised] = field(default_factory=list)
    interval_s: float = 0.5
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _started: bool = False

    def add(self, proc: Supervised) -> Supervised:
        self.processes.append(proc)
        if self._started:
            proc.deploying = not proc.running(proc.settings)  # its first start is a rollout, not a crash's restart
            self._watch(proc)
        return proc

    def start(self) -> None:
        self._started = True
        for proc in self.processes:
            self._watch(proc)

    def _watch(self, proc: Supervised) -> None:
        thread = threading.Thread(target=self._run, args=(proc,), name=f"supervise-{proc.name}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self, proc: Supervised) -> None:
        while not self._stop.is_set():
            if proc.wanted and not proc.running(proc.settings):
                self._restart(proc)
            self._stop.wait(self.interval_s)

    def _restart(self, proc: Supervised) -> None:
        if proc.deploying:
            proc.deploying = False
        else:
            self.monitor.note(proc.arch, "crash", f"{proc.name} is down; restarting (restart {proc.restarts + 1})")
            self._stop.wait(BACKOFF_S[min(proc._failures, len(BACKOFF_S) - 1)])
            proc.restarts += 1
        if self._stop.is_set() or not proc.wanted:
            return
        try:
            proc.start(proc.settings)
            proc._failures = 0 if proc.running(proc.settings) else proc._failures + 1
        except (speed.SpeedError, jobs.JobError) as exc:
            proc._failures += 1
            self.monitor.note(proc.arch, "crash", f"{proc.name} failed to start: {str(exc)[:200]}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)


class Api:
    """`lklab serve` for this lab's settings on a free loopback port, as its own process."""

    def __init__(self, settings: Settings) -> None:
        self.settings, self.port = settings, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.pid_file = settings.home / "api.pid"

    def start(self) -> None:
        settings = self.settings
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        env = processes.python_env(ROOT, settings.to_env())
        try:
            processes.spawn([sys.executable, "-m", "lklab.cli", "serve", "--port", str(self.port)],
                            log=settings.logs_dir / "api.log", pid_file=self.pid_file,
                            ready=lambda _pid: get_json(f"{self.url}/views", 1.0)[0] == 200,
                            wait_s=60, poll_s=0.2, env=env, cwd=settings.home)
        except (processes.StartupExited, processes.StartupTimedOut) as exc:
            raise DrillError(f"the query API did not start ({exc}): {processes.log_tail(settings.logs_dir / 'api.log')}") from None

    def stop(self) -> None:
        processes.stop_group(self.pid_file, API_MARKER, 10.0)


@dataclass
class LiveLab:
    """Both architectures live on one stream, for one view: the speed worker and the batch
    layer (Lambda), the published version's live job (Kappa), readers of both, the monitor."""

    ctx: DrillContext
    view: str
    shape: StreamShape
    batch_every_s: float | None = None  # None: one build before the live stream only
    poll_s: float = 0.25
    grace_s: float = 2.0  # a read equal to the oracle at any log position of the last grace_s is correct
    stale_wall_s: float = 5.0  # a read more than this many wall seconds of the stream behind the log is stale
    workload_overrides: dict = field(default_factory=dict)
    settings_overrides: dict = field(default_factory=dict)  # e.g. the batch layer's logic version
    speed_layer: bool = True  # False for a view the speed layer does not maintain (user_sessions)
    logics: tuple[int, ...] = (1,)  # the view's logic versions reads are scored against (a drill that deploys a new one)
    forgotten: tuple[float, frozenset[str]] | None = None  # (t, users): reads from t on are scored without those users' rows
    workload_start: datetime = datetime(2026, 11, 30, 22, 0, tzinfo=timezone.utc)  # event time of the backlog's start
    settings: Settings = field(init=False)
    engine: Engine = field(init=False)
    clock: float = field(init=False)
    actions: dict[str, list[Action]] = field(default_factory=lambda: {LAMBDA: [], KAPPA: []})
    builds: list[tuple[float, float, bool, str]] = field(default_factory=list)  # (began, ended, promoted, note) per batch run
    _stack: ExitStack = field(default_factory=ExitStack)
    _done: threading.Event = field(default_factory=threading.Event)
    _batch_lock: threading.Lock = field(default_factory=threading.Lock)

    # ---- set-up -------------------------------------------------------------------------------
    def __enter__(self) -> LiveLab:
        # the batch layer builds the drill's view only: its runs take a fraction of the time, as
        # a deployment that serves one view would
        self.settings = drill_settings(self.ctx.settings, **{"batch_views": [self.view], **self.settings_overrides})
        self.clock = time.monotonic()
        self.engine = make_engine(self.settings)
        self._stack.callback(self.engine.dispose)
        try:
            self._set_up()
        except BaseException:
            self._stack.close()
            raise
        return self

    def _set_up(self) -> None:
        self.workload = workload_for(self.shape, self.ctx.seed, self.workload_start, **self.workload_overrides)
        kafka_io.run(kafka_io.ensure_topics(self.settings))
        write_ledger(self.engine, self.workload.truth)
        self.stream = LiveStream(self.settings, self.workload, self.shape, self.clock)
        self._stack.callback(self.stream.stop)
        self.ctx.say(f"backlog: {self.stream.produce_backlog():,} events; live: {self.shape.live_min} event-minutes "
                     f"in {self.shape.live_wall_s:.0f}s ({self.shape.speedup:g}x)")
        self.api = Api(self.settings)
        self.monitor = Monitor(self.view, self.now, speed_layer=self.speed_layer)
        self.supervisor = Supervisor(self.monitor)
        self._stack.callback(self._stop_processes)
        if self.speed_layer:
            self.speed = self.supervisor.add(Supervised("speed worker", LAMBDA, speed.start,
                                                        lambda s: speed.read_pid(s) is not None, speed.stop, self.settings))
        self.kappa = self.supervisor.add(self.kappa_job(1, self.settings))
        # the first batch build, the stream processes and the API start together; Kappa's first
        # publication (its own Spark jobs and GX check) runs beside the batch build, as the two
        # architectures would in production
        starting = ThreadPoolExecutor(len(self.supervisor.processes) + 2, thread_name_prefix="drill-start")
        self._stack.callback(starting.shutdown)
        first_build = starting.submit(self.batch)
        started = [starting.submit(p.start, p.settings) for p in self.supervisor.processes] + [starting.submit(self.api.start)]
        for future in started:
            future.result(180)  # a process that could not start fails the set-up with its reason
        self.wait_kappa_caught_up(1)
        self.ctx.say(f"{output_name(self.view, 1)} caught up; publishing it (cutover)")
        self.publish_kappa(1, "drill: first publication")
        first_build.result(600)
        began, ended, _, note = self.builds[-1]
        self.ctx.say(f"first batch build: {note} in {ended - began:.0f}s")
        self.ctx.say(f"live: readers on {self.api.url}")
        self.readers = {arch: Reader(arch, self.api.url + view_path(arch, self.view), self.poll_s, self.now, self.monitor.observe)
                        for arch in (LAMBDA, KAPPA)}
        self.supervisor.start()
        for reader in self.readers.values():
            reader.start()
        self.stream.start()
        if self.batch_every_s:
            self._cadence = threading.Thread(target=self._batch_cadence, name="drill-batch", daemon=True)
            self._cadence.start()

    def kappa_job(self, version: int, settings: Settings) -> Supervised:
        view = self.view
        return Supervised(output_name(view, version), KAPPA, lambda s: jobs.start(s, view, version),
                          lambda s: running_pid(s, output_name(view, version)) is not None,
                          lambda s: jobs.stop(s, view, version), settings)

    def deploy_in_place(self, fault: str | None) -> Settings:
        """Roll stream logic out in place, as a restart, to the speed layer and the published Kappa
        job (v1): the named fault's logic, or (None) the fixed logic. Returns the settings deployed."""
        settings = self.settings.model_copy(update={"faults": {"speed": fault, "kappa": fault}}) if fault else self.settings
        what = f"the new logic ({fault})" if fault else "the fixed logic"
        self.act(LAMBDA, f"deploy {what} to the speed layer (rolling restart)")
        self.speed.deploy(settings)
        self.act(KAPPA, f"deploy {what} to {output_name(self.view, 1)} in place (restart)")
        self.kappa.deploy(settings)
        return settings

    def start_job(self, version: int, settings: Settings) -> Supervised:
        """Start `<view>__vN`'s live job now (its own consumer group), then keep it supervised."""
        job = self.kappa_job(version, settings)
        job.start(settings)
        return self.supervisor.add(job)

    # ---- what the drill does -----------------------------------------------------------------
    def now(self) -> float:
        return round(time.monotonic() - self.clock, 3)

    def act(self, arch: str, what: str, by: str = "operator") -> None:
        self.actions[arch].append(Action(t=self.now(), what=what, by=by))
        self.ctx.say(f"{arch}: {what}")

    def batch(self, settings: Settings | None = None) -> bool:
        """One batch run (with `settings`, e.g. a gate overridden, else the lab's); runs one at a
        time, as the batch layer allows one run per date."""
        with self._batch_lock:
            return self._batch(settings or self.settings)

    def _batch(self, settings: Settings) -> bool:
        began = self.now()
        try:
            outcome = run_batch(settings)
        except Exception as exc:  # noqa: BLE001 - recorded in the result, the drill goes on as production would
            self.builds.append((began, self.now(), False, f"failed: {exc!r}"[:300]))
            return False
        note = "promoted" if outcome.success else (outcome.message or "did not promote")
        if outcome.failed_gates:
            note += f" (failed: {'; '.join(outcome.failed_gates)})"[:400]
        self.builds.append((began, self.now(), outcome.success, note))
        return outcome.success

    def _batch_cadence(self) -> None:
        while not self._done.wait(self.batch_every_s):
            self.batch()

    def wait_batch_after(self, t: float, timeout_s: float = 300.0) -> None:
        """Until a batch run that began after `t` has finished (the cadence runs it)."""
        deadline = time.monotonic() + timeout_s
        while not any(began > t for began, *_ in self.builds):
            if time.monotonic() > deadline:
                raise DrillError(f"no batch run finished within {timeout_s:.0f}s after t={t:.0f}s")
            time.sleep(0.5)

    def wait_kappa_caught_up(self, version: int, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (job := jobs.job_status(self.settings, self.view, version)).lag != 0:
            if time.monotonic() > deadline:
                raise DrillError(f"{job.output} did not catch up within {timeout_s:.0f}s (lag {job.lag})")
            time.sleep(0.2)

    def publish_kappa(self, version: int, why: str) -> co.CutoverResult:
        hydration.wait_until_hydrated(self.settings, self.engine, self.view, version, timeout_s=180)
        result = co.cutover(self.settings, self.engine, self.view, version, why, spark=self.ctx.spark, tolerance_pct=100,
                            run_suite=run_suite)
        if not result.swapped:
            raise DrillError(f"cutover to {output_name(self.view, version)} refused: "
                             + "; ".join(c.summary for c in result.checks if c.status != "pass"))
        return result

    def wait_stream(self, timeout_s: float | None = None) -> None:
        self.stream.join(timeout_s or self.shape.live_wall_s + 60)

    def settle(self, seconds: float) -> None:
        """Let readers watch the steady state for a while after the stream ends."""
        time.sleep(seconds)

    def finish(self) -> None:
        """Stop the readers, the monitor and the batch cadence (the raw reads stay)."""
        self._done.set()
        for reader in self.readers.values():
            reader.stop()

    # ---- the result --------------------------------------------------------------------------
    @property
    def stale_budget_s(self) -> float:
        """stale_wall_s in event seconds (the stream runs `speedup` event seconds per second)."""
        return self.stale_wall_s * self.shape.speedup

    def arch_run(self, arch: str, label: str, fault: Fault, evidence: dict | None = None, **measured: object) -> ArchRun:
        """One architecture's reads scored against the oracle, its actions, signals and figures."""
        source = (lambda b: b.get("mode")) if arch == LAMBDA else (lambda b: b.get("version"))
        reads = score(self.view, self.readers[arch].reads, self.stream.timeline, self.grace_s, source, self.logics, self.forgotten)
        signals = sorted(self.monitor.signals[arch], key=lambda s: s.t)
        return ArchRun(arch=arch, label=label, reads=reads, actions=self.actions[arch], signals=signals,
                       figures=figures(reads, self.actions[arch], signals, fault, self.poll_s, self.stale_budget_s, **measured),
                       evidence=evidence or {})

    def result(self, drill_name: str, question: str, fault: Fault, runs: list[ArchRun], started: datetime,
               evidence: dict | None = None, lessons: list[str] | None = None) -> DrillResult:
        timeline = self.stream.timeline
        return DrillResult(
            drill=drill_name, question=question, size=self.ctx.size, seed=self.ctx.seed, started_at=started,
            wall_s=self.now(), git_sha=git_sha(), versions=self.ctx.versions(), poll_interval_s=self.poll_s, fault=fault, runs=runs,
            workload={"view": self.view, "events_delivered": len(timeline.events), "injected": len(self.stream.injected),
                      "backlog_event_minutes": self.shape.backlog_min, "live_event_minutes": self.shape.live_min,
                      "rides_per_minute": self.shape.rides_per_minute, "speedup": self.shape.speedup,
                      "late_fraction": self.workload.config.late_fraction, "late_max_s": self.workload.config.late_max_s,
                      "duplicate_fraction": self.workload.config.duplicate_fraction,
                      "correction_fraction": self.workload.config.correction_fraction,
                      "grace_s": self.grace_s, "stale_budget_event_s": self.stale_budget_s,
                      "batch_builds": [{"began": b, "ended": e, "promoted": ok, "note": note} for b, e, ok, note in self.builds]},
            evidence=evidence or {}, lessons=lessons or [])

    def _stop_processes(self) -> None:
        """Stop every process the lab started, all at once (each waits out its own graceful stop)."""
        began = time.monotonic()
        stops: list[Callable[[], object]] = []
        if hasattr(self, "supervisor"):
            self.supervisor.stop()
            for proc in self.supervisor.processes:
                proc.wanted = False
                stops.append(lambda proc=proc: proc.stop(proc.settings))
        if hasattr(self, "api"):
            stops.append(self.api.stop)
        with ThreadPoolExecutor(max(1, len(stops)), thread_name_prefix="drill-stop") as stopping:
            for future in [stopping.submit(stop) for stop in stops]:
                future.result()
        self.ctx.say(f"stopped {len(stops)} processes in {time.monotonic() - began:.1f}s")

    def __exit__(self, *exc: object) -> None:
        if hasattr(self, "readers"):
            self.finish()
        self._stack.close()


@contextmanager
def own_lab(home: Path, speed_group: str) -> Iterator[tuple[Settings, SparkSession]]:
    """A wiped `home` with its own broker on free loopback ports (stopped at the end), and the
    process's Spark session, its scratch beside the home: later runs in the process find it warm."""
    from lklab.lake.spark import get_spark

    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    settings = Settings(home=home, kafka_port=free_port(), kafka_controller_port=free_port(), speed_web_port=free_port(),
                        speed_group=speed_group)
    with ExitStack() as cleanup:
        kafka_runtime.start(settings)
        cleanup.callback(kafka_runtime.stop, settings)
        yield settings, get_spark(settings.model_copy(update={"home": home.parent}))


def run_isolated(the_drill: Drill, size: Size = "default", seed: int = 7, console: Console | None = None,
                 results_dir: Path | None = None) -> tuple[DrillResult, Path, Path]:
    """Run one drill on its own broker, lake, serving store and ports (.lklab/drills/NAME), stop
    everything it started, and write its JSON and plot to results_dir (drills/results). The Spark
    session is the process's (its scratch under .lklab/drills/spark): later drills find it warm."""
    from lklab.drills.plot import timeline

    name = the_drill.name
    console = console or Console()
    with own_lab(ROOT / ".lklab" / "drills" / name, f"lklab-speed-drill-{name}") as (settings, spark):
        try:
            result = the_drill.run(DrillContext(name, settings, size, seed, spark, console))
        except (jobs.JobError, co.CutoverError, speed.SpeedError) as exc:
            raise DrillError(f"drill {name} stopped: {exc}") from None
    out = results_dir or RESULTS
    json_path = result.write(out / f"{name}.json")
    png_path = (the_drill.plot or timeline)(result, out / f"{name}.png")
    return result, json_path, png_path
