"""The embedded event log: one Apache Kafka broker+controller in KRaft mode, from Maven jars.

Listens on 127.0.0.1 only; data, config and logs live under <home>/kafka.
"""
from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lklab.core import processes
from lklab.core.config import Settings

_MARKER = b"kafka.Kafka"


class KafkaRuntimeError(RuntimeError):
    """A one-line, actionable reason the broker cannot start, stop or be reached."""


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    reachable: bool
    bootstrap: str
    data_dir: Path


def _dir(settings: Settings) -> Path:
    return settings.home / "kafka"


def _pid_file(settings: Settings) -> Path:
    return _dir(settings) / "broker.pid"


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    java = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not java or not Path(java).exists():
        raise KafkaRuntimeError("java not found: install a JDK 17+ (apt-get install openjdk-17-jdk-headless) or set JAVA_HOME")
    return java


def _classpath(settings: Settings) -> str:
    jars = settings.jars_dir / "kafka"
    if not any(jars.glob("kafka_2.13-*.jar")):
        raise KafkaRuntimeError(f"Kafka jars missing in {jars}: run `make setup` (resolves them from Maven Central)")
    return str(jars / "*")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((host, port)) == 0


def _require_free(host: str, port: int, what: str) -> None:
    if not processes.port_free(host, port):
        raise KafkaRuntimeError(
            f"{what} port {host}:{port} is already in use; stop what holds it or set LKLAB_KAFKA_PORT / LKLAB_KAFKA_CONTROLLER_PORT"
        )


def read_pid(settings: Settings) -> int | None:
    return processes.read_pid(_pid_file(settings), _MARKER)


def _server_properties(settings: Settings) -> str:
    host, data = settings.kafka_host, _dir(settings) / "data"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{host}:{settings.kafka_controller_port}",
        "listeners": f"PLAINTEXT://{host}:{settings.kafka_port},CONTROLLER://{host}:{settings.kafka_controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{settings.kafka_port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(data),
        "num.partitions": str(settings.partitions),
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.hours": "-1",
        "log.retention.check.interval.ms": "5000",  # topics that set retention see it applied within seconds
        "log.segment.bytes": str(64 * 1024 * 1024),
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _format_storage(settings: Settings, java: str, cp: str, config: Path) -> None:
    if (_dir(settings) / "data" / "meta.properties").exists():
        return
    cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    result = subprocess.run(
        [java, "-cp", cp, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(config)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise KafkaRuntimeError(f"kafka storage format failed: {(result.stderr or result.stdout).strip().splitlines()[-1:]}")


def start(settings: Settings, wait_s: float = 60.0) -> int:
    """Start the broker in the background and wait until it accepts connections; returns its pid."""
    if settings.bootstrap_servers:
        raise KafkaRuntimeError(f"LKLAB_BOOTSTRAP_SERVERS={settings.bootstrap_servers} points at an external cluster; nothing to start")
    if (pid := read_pid(settings)) is not None:
        raise KafkaRuntimeError(f"Kafka is already running (pid {pid}, {settings.bootstrap}); `lklab kafka stop` first")
    java, cp = _java(), _classpath(settings)
    _require_free(settings.kafka_host, settings.kafka_port, "Kafka broker")
    _require_free(settings.kafka_host, settings.kafka_controller_port, "Kafka controller")
    root = _dir(settings)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    config = root / "server.properties"
    config.write_text(_server_properties(settings))
    log4j = root / "log4j.properties"
    log4j.write_text(resources.files("lklab.runtime").joinpath("log4j.properties").read_text())
    _format_storage(settings, java, cp, config)
    try:
        return processes.spawn(
            [java, f"-Xmx{settings.kafka_heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
             f"-Dkafka.logs.dir={root / 'logs'}", f"-Dlog4j.configuration=file:{log4j}",
             "-cp", cp, "kafka.Kafka", str(config)],
            log=root / "logs" / "stdout.log", pid_file=_pid_file(settings),
            ready=lambda _pid: port_open(settings.kafka_host, settings.kafka_port), wait_s=wait_s, poll_s=0.3,
        )
    except processes.StartupExited as exited:
        raise KafkaRuntimeError(f"Kafka exited with code {exited.returncode} during start-up; see {root / 'logs'}") from None
    except processes.StartupTimedOut:
        stop(settings)
        raise KafkaRuntimeError(f"Kafka did not listen on {settings.bootstrap} within {wait_s:.0f}s; see {root / 'logs'}") from None


def stop(settings: Settings, wait_s: float = 30.0) -> bool:
    """Stop the broker (SIGTERM, then SIGKILL). Returns False when it was not running."""
    return processes.stop_group(_pid_file(settings), _MARKER, wait_s)


def status(settings: Settings) -> BrokerStatus:
    pid = None if settings.bootstrap_servers else read_pid(settings)
    host, _, port = settings.bootstrap.split(",")[0].rpartition(":")
    return BrokerStatus(
        running=pid is not None or bool(settings.bootstrap_servers),
        pid=pid,
        reachable=port_open(host, int(port)),
        bootstrap=settings.bootstrap,
        data_dir=_dir(settings) / "data",
    )
