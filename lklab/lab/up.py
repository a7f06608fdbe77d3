"""`lklab up`, `lklab ps`, `lklab down`: the whole lab as one thing.

`up` starts, in order and each health-checked before the next: the broker and the topics; then
the Faust speed worker, the live Kappa job of each view's published version, the API with the
dashboard and (--with-traffic) the paced producer, while the Dagster web server and daemon
start beside them (they depend on none of those, and are the slowest to start). A Kappa view with
nothing published gets its v1 job and, once hydrated, its first publication (a validated
cutover). What `up` started is recorded in <home>/up/up.json as it goes, so `down` stops exactly
that, in reverse order, even after an `up` that failed half-way. A service that was already
running is left alone by both. A service that fails to start stops the ones `up` started and is
reported with the last lines of its log."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lklab.core.config import Settings
from lklab.core.processes import log_tail
from lklab.kappa import KAPPA_VIEWS, jobs
from lklab.kappa.names import output_name
from lklab.lab import services as svc
from lklab.log import kafka_io
from lklab.serving.store import make_engine

HEALTHY_WAIT_S = 90.0
Say = Callable[[str], None]


class LabUpError(RuntimeError):
    """`up` refused or failed: one line (what, and the failing service's last log lines)."""


def state_file(settings: Settings) -> Path:
    return svc.up_dir(settings) / "up.json"


def read_state(settings: Settings) -> dict[str, Any] | None:
    try:
        return json.loads(state_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _write_state(settings: Settings, state: dict[str, Any]) -> None:
    path = state_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(path)


def make_service(settings: Settings, spec: dict[str, Any]) -> svc.Service:
    """A recorded service spec ({"kind": ..., and view/version for a Kappa job}) as a Service."""
    kind = spec["kind"]
    if kind == "kappa":
        return svc.kappa_service(settings, spec["view"], int(spec["version"]))
    return {"broker": svc.broker_service, "speed": svc.speed_service, "dagster-webserver": svc.dagster_webserver,
            "dagster-daemon": svc.dagster_daemon, "api": svc.api_service, "traffic": svc.traffic_service}[kind](settings)


@dataclass(frozen=True)
class KappaPlan:
    view: str
    version: int
    publish: bool  # nothing is published yet: `up` publishes this version once it is hydrated


def kappa_plan(settings: Settings) -> list[KappaPlan]:
    """Each Kappa view's published version, or v1 to publish."""
    engine = make_engine(settings)
    try:
        plans = []
        for view in KAPPA_VIEWS:
            try:
                plans.append(KappaPlan(view, jobs.published_version(engine, view), publish=False))
            except jobs.JobError:
                plans.append(KappaPlan(view, 1, publish=True))
        return plans
    finally:
        engine.dispose()


def running_services(settings: Settings) -> list[tuple[str, int]]:
    """(name, pid) of the recorded services that run now."""
    state = read_state(settings) or {"services": []}
    return [(s.name, pid) for s in (make_service(settings, spec) for spec in state["services"]) if (pid := s.pid()) is not None]


class Lab:
    """One `up`: starts services in order, recording each it started."""

    def __init__(self, settings: Settings, say: Say) -> None:
        self.settings, self.say = settings, say
        self._lock = threading.Lock()
        self.state: dict[str, Any] = {"started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "services": []}

    def start(self, spec: dict[str, Any]) -> svc.Service:
        service = make_service(self.settings, spec)
        if (pid := service.pid()) is not None:
            self.say(f"{service.name}: already running (pid {pid}); not started by up, so down leaves it")
            return service
        began = time.monotonic()
        try:
            service.start()
        except Exception as exc:  # noqa: BLE001 - each service's own error is one line with its log's tail
            raise LabUpError(f"{service.name} did not start: {exc}") from None
        with self._lock:  # two start in parallel (see `up`)
            self.state["services"].append(spec)
            _write_state(self.settings, self.state)
        health = svc.wait_healthy(service, HEALTHY_WAIT_S)
        if not health.ok:
            raise LabUpError(f"{service.name} started but is not healthy after {HEALTHY_WAIT_S:.0f}s ({health.detail}); "
                             f"last lines of {service.log}: {_tail(service.log)}")
        self.say(f"{service.name}: up in {time.monotonic() - began:.1f}s, pid {service.pid()}"
                 + (f", 127.0.0.1:{service.port}" if service.port else "") + f" ({health.detail}); log {service.log}")
        return service


def _tail(log: Path) -> str:
    return log_tail(log if log.is_file() else log / "server.log")


def up(settings: Settings, with_traffic: bool, say: Say, publish: Callable[[Settings, KappaPlan], str]) -> dict[str, Any]:
    """Start the lab (see the module). `publish` performs a first publication (a validated
    cutover) and returns one line. LabUpError after stopping what this call started."""
    if running := running_services(settings):
        since = (read_state(settings) or {}).get("started_at", "?")
        raise LabUpError(f"the lab is already up (since {since}; running: {', '.join(f'{n} pid {p}' for n, p in running)}); "
                         "`lklab ps` shows it, `lklab down` stops it")
    lab = Lab(settings, say)
    _write_state(settings, lab.state)
    try:
        lab.start({"kind": "broker"})
        kafka_io.run(kafka_io.ensure_topics(settings))
        say(f"topics: {settings.topic} ({settings.partitions} partitions), {settings.dlq_topic}")
        # Dagster (its web server loads every definition: the slowest start) comes up beside the stream side
        with ThreadPoolExecutor(1, thread_name_prefix="up-dagster") as beside:
            dagster = beside.submit(lambda: [lab.start({"kind": kind}) for kind in ("dagster-webserver", "dagster-daemon")])
            try:
                _stream_side(lab, settings, with_traffic, publish)
            except BaseException:
                wait([dagster])  # then `down` below stops what it started too; the first failure is the one reported
                raise
            dagster.result()
    except BaseException:
        down(settings, lambda line: say(f"  stopping: {line}"))
        raise
    return lab.state


def _stream_side(lab: Lab, settings: Settings, with_traffic: bool, publish: Callable[[Settings, KappaPlan], str]) -> None:
    """The speed worker, each Kappa view's job, the API, the traffic, then first publications."""
    lab.start({"kind": "speed"})
    plans = kappa_plan(settings)
    for plan in plans:
        lab.start({"kind": "kappa", "view": plan.view, "version": plan.version})
    lab.start({"kind": "api"})
    if with_traffic:
        lab.start({"kind": "traffic"})
    for plan in (p for p in plans if p.publish):
        lab.say(publish(settings, plan))


def first_publication(settings: Settings, plan: KappaPlan, run_suite) -> str:
    """Publish `<view>__v<N>` through the validated cutover (GX, ledger, history) once it has
    consumed the log's events; one line. A publication that cannot happen yet (an empty log) or
    that the checks refuse leaves the job running unpublished, and says how to publish it."""
    from lklab.engine.snapshots import SnapshotError
    from lklab.kappa import cutover, hydration

    output = output_name(plan.view, plan.version)
    later = f"publish it with `lklab cutover {plan.view} --version {plan.version}`"
    if not _has_consumed(settings, plan):
        return f"kappa {plan.view}: {output} runs, not published: the log is empty; {later} once events flow"
    engine = make_engine(settings)
    try:
        hydration.wait_until_hydrated(settings, engine, plan.view, plan.version, timeout_s=HEALTHY_WAIT_S)
        result = cutover.cutover(settings, engine, plan.view, plan.version, "lklab up: first publication",
                                 tolerance_pct=100, run_suite=run_suite)
    except (cutover.CutoverError, jobs.JobError, SnapshotError) as exc:
        return f"kappa {plan.view}: {output} runs, not published ({exc}); {later}"
    finally:
        engine.dispose()
    if not result.swapped:
        refused = "; ".join(c.summary for c in result.checks if c.status == "fail")
        return f"kappa {plan.view}: {output} runs, not published: the cutover checks refused it ({refused}); {later}"
    return (f"kappa {plan.view}: published {output} (first publication; checks "
            + ", ".join(f"{c.name} {c.status}" for c in result.checks) + ")")


def _has_consumed(settings: Settings, plan: KappaPlan, wait_s: float = 30.0) -> bool:
    """Until the job has read up to the log's end, once the log holds events (traffic may have just started)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        ends = kafka_io.end_offsets_or_none(settings) or {}
        job = jobs.job_status(settings, plan.view, plan.version)
        if sum(ends.values()) > 0 and job.lag == 0:
            return True
        time.sleep(0.5)
    return False


@dataclass(frozen=True)
class Row:
    name: str
    pid: int | None
    port: int | None
    healthy: bool
    detail: str
    log: Path


def ps(settings: Settings) -> list[Row]:
    """Each service `up` started: pid, port, health and log (empty when the lab is not up)."""
    state = read_state(settings) or {"services": []}
    rows = []
    for spec in state["services"]:
        service = make_service(settings, spec)
        pid = service.pid()
        health = service.health() if pid is not None else svc.Health(False, "not running")
        rows.append(Row(service.name, pid, service.port, health.ok, health.detail, service.log))
    return rows


def down(settings: Settings, say: Say) -> list[str]:
    """Stop what `up` started, in reverse order, and nothing else; forget the record."""
    state = read_state(settings)
    if state is None:
        return []
    stopped = []
    for spec in reversed(state["services"]):
        service = make_service(settings, spec)
        if service.stop():
            stopped.append(service.name)
            say(f"{service.name}: stopped")
    state_file(settings).unlink(missing_ok=True)
    return stopped
