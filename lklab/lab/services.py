"""The lab's long-running services as `lklab up` starts them: for each, how it starts and stops,
its pid, port, log and health, behind one shape. The broker, the speed worker and the Kappa jobs
keep the start/stop they have everywhere else; the Dagster web server and daemon, the API and
the traffic producer are spawned here, each with a pid file under <home>/up and a log under
<home>/logs. Every listener is on 127.0.0.1."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lklab.core import processes
from lklab.core.config import Settings
from lklab.core.http import get_json, post_json
from lklab.kappa import jobs
from lklab.kappa.freshness import running_pid
from lklab.kappa.names import output_name
from lklab.lambda_arch import merge, speed
from lklab.log import broker
from lklab.serving.store import make_engine

ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
DAEMON_HEALTH = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required lastHeartbeatTime } } } }"


class ServiceError(RuntimeError):
    """A service that could not start: one line, with the last lines of its log."""


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Service:
    """One thing the lab runs. `start` returns once the process is up (not yet healthy);
    `health` says whether it does its job now."""

    name: str
    port: int | None
    log: Path
    start: Callable[[], object]
    stop: Callable[[], object]
    pid: Callable[[], int | None]
    health: Callable[[], Health]


def up_dir(settings: Settings) -> Path:
    return settings.home / "up"


@dataclass(frozen=True)
class Spawned:
    """A service this module spawns itself: argv, its pid file and log, the command-line marker
    that tells it from a recycled pid, and the probe that says it is ready."""

    settings: Settings
    slug: str
    argv: list[str]
    marker: bytes
    ready: Callable[[], bool]
    env: dict[str, str]
    wait_s: float = 90.0

    @property
    def pid_file(self) -> Path:
        return up_dir(self.settings) / f"{self.slug}.pid"

    @property
    def log(self) -> Path:
        return self.settings.logs_dir / f"{self.slug}.log"

    def start(self) -> int:
        up_dir(self.settings).mkdir(parents=True, exist_ok=True)
        self.settings.logs_dir.mkdir(parents=True, exist_ok=True)
        try:
            return processes.spawn(self.argv, log=self.log, pid_file=self.pid_file, ready=lambda _pid: self.ready(),
                                   wait_s=self.wait_s, poll_s=0.3, env=self.env, cwd=ROOT)
        except processes.StartupExited as exc:
            raise ServiceError(f"{self.slug} {exc}: {processes.log_tail(self.log)}") from None
        except processes.StartupTimedOut as exc:
            self.stop()
            raise ServiceError(f"{self.slug} {exc}: {processes.log_tail(self.log)}") from None

    def stop(self) -> bool:
        return processes.stop_group(self.pid_file, self.marker, 20.0)

    def pid(self) -> int | None:
        return processes.read_pid(self.pid_file, self.marker)

    def service(self, name: str, port: int | None, health: Callable[[], Health]) -> Service:
        return Service(name, port, self.log, self.start, self.stop, self.pid, health)


def broker_service(settings: Settings) -> Service:
    def health() -> Health:
        status = broker.status(settings)
        return Health(status.healthy, f"{status.bootstrap} reachable" if status.healthy else f"{status.bootstrap} not reachable")

    return Service("broker", settings.kafka_port, broker.log_dir(settings), lambda: broker.start(settings),
                   lambda: broker.stop(settings), lambda: broker.read_pid(settings), health)


def speed_service(settings: Settings) -> Service:
    def health() -> Health:
        engine = make_engine(settings)
        try:
            h = merge.current_speed_health(engine, settings)
        finally:
            engine.dispose()
        return Health(h.healthy, f"heartbeat {h.heartbeat_age_s:.1f}s ago, lag {h.lag}" if h.healthy else str(h.reason))

    return Service("speed worker", settings.speed_web_port, speed.log_file(settings), lambda: speed.start(settings),
                   lambda: speed.stop(settings), lambda: speed.read_pid(settings), health)


def kappa_service(settings: Settings, view: str, version: int) -> Service:
    output = output_name(view, version)

    def health() -> Health:
        job = jobs.job_status(settings, view, version)
        if not job.running:
            return Health(False, "not running")
        if job.stale:
            return Health(False, str(job.stale_reason))
        return Health(True, f"heartbeat {job.heartbeat_age_s:.1f}s ago, lag {job.lag}")

    return Service(f"kappa {output}", None, jobs.log_file(settings, output), lambda: jobs.start(settings, view, version),
                   lambda: jobs.stop(settings, view, version), lambda: running_pid(settings, output), health)


def _service_env(settings: Settings, **extra: str) -> dict[str, str]:
    return processes.python_env(ROOT, {**settings.to_env(), **extra})


def dagster_env(settings: Settings) -> dict[str, str]:
    """Dagster's processes: the lab's settings, its instance under <home>/dagster, and the
    schedules switched on (`lklab up` runs the lab as production would: nightly_ingest and the
    daily snapshots really run)."""
    return _service_env(settings, DAGSTER_HOME=str(settings.dagster_home), LKLAB_SCHEDULES_RUNNING="true")


def dagster_url(settings: Settings) -> str:
    return f"http://{HOST}:{settings.dagster_port}"


def dagster_webserver(settings: Settings) -> Service:
    url = dagster_url(settings)
    spawned = Spawned(settings, "dagster-webserver",
                      [str(BIN / "dagster-webserver"), "-w", str(ROOT / "workspace.yaml"), "-h", HOST, "-p", str(settings.dagster_port)],
                      b"dagster-webserver", lambda: get_json(f"{url}/server_info", 2.0)[0] == 200, dagster_env(settings), wait_s=120.0)

    def health() -> Health:
        status, _ = get_json(f"{url}/server_info", 2.0)
        return Health(status == 200, url if status == 200 else f"{url}/server_info answered {status or 'nothing'}")

    return spawned.service("dagster webserver", settings.dagster_port, health)


def daemon_health(settings: Settings, since: float | None = None) -> Health:
    """From the web server's GraphQL: every required daemon (scheduler, sensors, backfills, run
    queue) beats, and beat after `since` (a heartbeat of a daemon killed minutes ago still reads healthy)."""
    status, body = post_json(f"{dagster_url(settings)}/graphql", {"query": DAEMON_HEALTH}, 5.0)
    if status != 200:
        return Health(False, f"the web server's GraphQL answered {status or 'nothing'}")
    daemons = body.get("data", {}).get("instance", {}).get("daemonHealth", {}).get("allDaemonStatuses", [])
    if not daemons:
        return Health(False, "no daemon status yet")
    down = sorted(d["daemonType"] for d in daemons if d.get("required") and not (
        d.get("healthy") and (since is None or (d.get("lastHeartbeatTime") or 0) >= since)))
    return Health(not down, f"not beating: {', '.join(down)}" if down else f"{len(daemons)} daemons beating")


def dagster_daemon(settings: Settings) -> Service:
    spawned = Spawned(settings, "dagster-daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(ROOT / "workspace.yaml")],
                      b"dagster-daemon", lambda: True, dagster_env(settings), wait_s=2.0)

    def health() -> Health:
        try:
            started = spawned.pid_file.stat().st_mtime
        except FileNotFoundError:
            return Health(False, "not running")
        return daemon_health(settings, since=started)

    return spawned.service("dagster daemon", None, health)


def api_url(settings: Settings) -> str:
    return f"http://{HOST}:{settings.api_port}"


def api_service(settings: Settings) -> Service:
    url = api_url(settings)
    spawned = Spawned(settings, "api", [sys.executable, "-m", "lklab.cli", "serve", "--port", str(settings.api_port)],
                      b"lklab.cli", lambda: get_json(f"{url}/views", 2.0)[0] == 200, _service_env(settings), wait_s=90.0)

    def health() -> Health:
        status, _ = get_json(f"{url}/views", 2.0)
        return Health(status == 200, f"{url}/ (dashboard)" if status == 200 else f"{url}/views answered {status or 'nothing'}")

    return spawned.service("api + dashboard", settings.api_port, health)


def traffic_service(settings: Settings) -> Service:
    from lklab.lab import traffic

    spawned = Spawned(settings, "traffic", [sys.executable, "-m", "lklab.cli", "traffic"], b"lklab.cli",
                      lambda: traffic.beating(settings), _service_env(settings), wait_s=60.0)

    def health() -> Health:
        progress = traffic.progress(settings)
        if progress is None or not traffic.beating(settings):
            return Health(False, "no progress in the last 10 s")
        return Health(True, f"{progress['produced']:,} events produced, {progress['rides_per_minute']:g} rides/min")

    return spawned.service("traffic", None, health)


def wait_healthy(service: Service, wait_s: float, poll_s: float = 0.5) -> Health:
    """Poll `service.health` until it is ok; the last health (not ok) after `wait_s`."""
    deadline = time.monotonic() + wait_s
    while True:
        health = service.health()
        if health.ok or time.monotonic() >= deadline:
            return health
        time.sleep(poll_s)
