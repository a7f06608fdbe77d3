"""A Spark standalone cluster for the lab: one master and one worker on 127.0.0.1, started from
the Spark jars pyspark ships (no Spark download), each a background JVM with its pid file and
log under <home>/spark-standalone. `LKLAB_SPARK_MASTER=spark://127.0.0.1:<port>` points
get_spark at it; the driver then runs in the lklab process and its executors in the worker.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lklab.core import processes
from lklab.core.config import Settings
from lklab.lake.spark import EXECUTOR_MEMORY

HOST = "127.0.0.1"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
MASTER_MARKER, WORKER_MARKER = MASTER_CLASS.encode(), WORKER_CLASS.encode()
DAEMON_HEAP = "256m"  # the daemons only schedule: the work runs in the executors the worker starts
_MEMORY = re.compile(r"^([0-9]+)([mMgG])$")


class SparkClusterError(RuntimeError):
    """A one-line, actionable reason the standalone cluster cannot start, stop or be reached."""


@dataclass(frozen=True)
class ClusterStatus:
    master_pid: int | None
    worker_pid: int | None
    master_url: str | None
    webui: str | None
    alive_workers: int  # workers the master lists as ALIVE (0 when its web UI does not answer)
    active_apps: int
    completed_apps: int

    @property
    def running(self) -> bool:
        return self.master_pid is not None and self.worker_pid is not None and self.alive_workers > 0


@dataclass(frozen=True)
class _Ports:
    master: int
    webui: int
    worker_webui: int

    @property
    def url(self) -> str:
        return f"spark://{HOST}:{self.master}"


def _dir(settings: Settings) -> Path:
    return settings.home / "spark-standalone"


def _pid_file(settings: Settings, daemon: str) -> Path:
    return _dir(settings) / f"{daemon}.pid"


def _log(settings: Settings, daemon: str) -> Path:
    return _dir(settings) / "logs" / f"{daemon}.log"


def _ports_file(settings: Settings) -> Path:
    return _dir(settings) / "ports.json"


def spark_home() -> Path:
    """pyspark's package directory: it has the jars/ a Spark distribution has, which is what the
    worker's launcher needs to build its executors' classpath."""
    spec = importlib.util.find_spec("pyspark")  # not imported: its import costs time and starts nothing
    if spec is None or spec.origin is None:
        raise SparkClusterError("pyspark is not installed in this Python: run `make setup`")
    home = Path(spec.origin).parent
    if not any((home / "jars").glob("spark-core_*.jar")):
        raise SparkClusterError(f"no Spark jars in {home / 'jars'}: reinstall pyspark (`make setup`)")
    return home


def _scala_version(home: Path) -> str:
    """The launcher asks for SPARK_SCALA_VERSION outside a Spark build tree (it would otherwise
    look for build directories and fail the executor launch): read it off spark-core's jar."""
    core = next((home / "jars").glob("spark-core_*.jar"))
    return core.name.split("_", 1)[1].split("-", 1)[0]


def _java() -> str:
    if (java := processes.java()) is None:
        raise SparkClusterError(processes.JAVA_MISSING)
    return java


def _memory_mb(value: str) -> int:
    match = _MEMORY.match(value)
    if match is None:
        raise SparkClusterError(f"worker memory {value!r} is not like 1g or 768m")
    return int(match[1]) * (1024 if match[2].lower() == "g" else 1)


def _check_resources(cores: int, memory: str) -> None:
    """A worker too small for one executor would leave every application waiting for resources."""
    if cores < 1:
        raise SparkClusterError(f"worker cores must be at least 1, got {cores}")
    if _memory_mb(memory) < _memory_mb(EXECUTOR_MEMORY):
        raise SparkClusterError(f"worker memory {memory} is below the {EXECUTOR_MEMORY} one executor asks for (lklab.lake.spark)")


def _pick_ports(master_port: int) -> _Ports:
    if not processes.port_free(HOST, master_port):
        raise SparkClusterError(f"Spark master port {HOST}:{master_port} is already in use; stop what holds it or pass --port")
    webui = master_port + 1 if master_port < 65535 and processes.port_free(HOST, master_port + 1) else processes.free_port(HOST)
    return _Ports(master_port, webui, processes.free_port(HOST))


def _env(home: Path, local_dir: Path) -> dict[str, str]:
    """Inherited by the worker's executors too: every socket (RPC, block manager, web UIs, which
    read SPARK_LOCAL_IP) on loopback, scratch space under the lab home, and the venv's Python
    for any Python worker an executor starts."""
    return {
        **os.environ,
        "SPARK_HOME": str(home),
        "SPARK_SCALA_VERSION": _scala_version(home),
        "SPARK_LOCAL_IP": HOST,
        "SPARK_LOCAL_DIRS": str(local_dir),
        "PYSPARK_PYTHON": sys.executable,
    }


def _daemon_argv(java: str, home: Path, main_class: str, args: list[str]) -> list[str]:
    # What pyspark's bin/spark-class runs for a daemon (org.apache.spark.launcher.Main prints the
    # same java -cp <jars>/* -Xmx... line), without its bash scripts and extra JVM. A port that is
    # taken must fail the start, not slide to the next port the ports file does not name.
    return [java, f"-Xmx{DAEMON_HEAP}", "-XX:+UseSerialGC", "-Dspark.port.maxRetries=0",
            "-Dspark.master.rest.enabled=false", "-cp", str(home / "jars" / "*"), main_class, *args]


def master_json(webui_port: int, timeout: float = 1.0) -> dict[str, Any] | None:
    """The master's state (workers, active and completed applications) from its web UI, or None."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{webui_port}/json/", timeout=timeout) as response:
            return json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _alive_workers(state: dict[str, Any] | None) -> int:
    return sum(1 for w in (state or {}).get("workers", []) if w.get("state") == "ALIVE")


def _read_ports(settings: Settings) -> _Ports | None:
    try:
        return _Ports(**json.loads(_ports_file(settings).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _running_pids(settings: Settings) -> tuple[int | None, int | None]:
    return (processes.read_pid(_pid_file(settings, "master"), MASTER_MARKER),
            processes.read_pid(_pid_file(settings, "worker"), WORKER_MARKER))


def _spawn(settings: Settings, daemon: str, argv: list[str], env: dict[str, str], ready, wait_s: float) -> int:
    log = _log(settings, daemon)
    try:
        return processes.spawn(argv, log=log, pid_file=_pid_file(settings, daemon), ready=lambda _pid: ready(),
                               wait_s=wait_s, poll_s=0.3, env=env, cwd=_dir(settings))
    except processes.StartupExited as exited:
        raise SparkClusterError(f"Spark {daemon} exited with code {exited.returncode} during start-up: "
                                f"{processes.log_tail(log, 2)} (see {log})") from None
    except processes.StartupTimedOut:
        what = "listen" if daemon == "master" else "register with the master"
        raise SparkClusterError(f"Spark {daemon} did not {what} within {wait_s:.0f}s; see {log}") from None


def start(settings: Settings, master_port: int = 7077, worker_cores: int = 1, worker_memory: str = "1g",
          wait_s: float = 60.0) -> str:
    """Start the master, then one worker registered with it; returns the master URL."""
    master, worker = _running_pids(settings)
    if master or worker:
        ports = _read_ports(settings)
        raise SparkClusterError(f"Spark standalone is already running (master pid {master or '-'}, worker pid {worker or '-'}, "
                                f"{ports.url if ports else 'unknown URL'}); `lklab spark stop` first")
    _check_resources(worker_cores, worker_memory)
    java, home = _java(), spark_home()
    ports = _pick_ports(master_port)
    root = _dir(settings)
    for sub in ("logs", "work", "local"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    _ports_file(settings).write_text(json.dumps(ports.__dict__))
    env = _env(home, root / "local")
    try:
        _spawn(settings, "master", _daemon_argv(java, home, MASTER_CLASS, [
            "--host", HOST, "--port", str(ports.master), "--webui-port", str(ports.webui)]),
            env, lambda: processes.port_open(HOST, ports.master) and master_json(ports.webui) is not None, wait_s)
        _spawn(settings, "worker", _daemon_argv(java, home, WORKER_CLASS, [
            ports.url, "--host", HOST, "--cores", str(worker_cores), "--memory", worker_memory,
            "--webui-port", str(ports.worker_webui), "--work-dir", str(root / "work")]),
            env, lambda: _alive_workers(master_json(ports.webui)) > 0, wait_s)
    except SparkClusterError:
        stop(settings)  # a master without its worker (or a worker that never registered) is no cluster
        raise
    return ports.url


def stop(settings: Settings, wait_s: float = 30.0) -> bool:
    """Stop the worker (and the executors in its process group), then the master. Returns False
    when neither was running."""
    worker = processes.stop_group(_pid_file(settings, "worker"), WORKER_MARKER, wait_s)
    master = processes.stop_group(_pid_file(settings, "master"), MASTER_MARKER, wait_s)
    return worker or master


def status(settings: Settings) -> ClusterStatus:
    master, worker = _running_pids(settings)
    ports = _read_ports(settings) if master else None
    state = master_json(ports.webui) if ports else None
    return ClusterStatus(
        master_pid=master, worker_pid=worker,
        master_url=ports.url if ports else None,
        webui=f"http://{HOST}:{ports.webui}" if ports else None,
        alive_workers=_alive_workers(state),
        active_apps=len((state or {}).get("activeapps", [])),
        completed_apps=len((state or {}).get("completedapps", [])),
    )


def work_dir(settings: Settings) -> Path:
    """Where the worker keeps one directory per application, with its executors' logs."""
    return _dir(settings) / "work"


def executors_started(settings: Settings) -> int:
    """Executors the worker has started, for any application (each leaves a directory with its log)."""
    return sum(1 for d in work_dir(settings).glob("app-*/*") if (d / "stderr").exists())
