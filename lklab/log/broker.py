"""The embedded event log: Apache Kafka in KRaft mode, from Maven jars, as one node or a cluster
of `kafka_brokers` nodes (each a combined broker+controller).

Listens on 127.0.0.1 only. A single node keeps data, config and logs under <home>/kafka (the
layout homes have always had); node i of a larger cluster uses <home>/kafka/node-<i>. Node i
serves clients on kafka_port + i - 1; its controller port is the i-th port from
kafka_controller_port upward that is not a broker port, which is kafka_controller_port + i - 1
whenever the two ranges do not overlap (the defaults 9092/9093 do: 3 brokers on 9092-9094,
controllers on 9095-9097). <home>/kafka/cluster.json records the size and cluster id of what was
started, so later commands find the cluster without repeating `--brokers`.
"""
from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

from lklab.core import processes
from lklab.core.processes import port_open
from lklab.core.config import CLUSTER_FILE, Settings, started_brokers

_MARKER = b"kafka.Kafka"
CLUSTER_HEAP_MB = 384  # per node of a multi-node cluster: three JVMs share a 2-core, 24 GB box with Spark
_A, _T = TypeVar("_A"), TypeVar("_T")


class KafkaRuntimeError(RuntimeError):
    """A one-line, actionable reason the broker cannot start, stop or be reached."""


@dataclass(frozen=True)
class NodeStatus:
    node_id: int
    pid: int | None
    port: int
    alive: bool  # its JVM is running
    reachable: bool  # its broker port accepts connections
    data_dir: Path


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None  # node 1's (the only node's, for a single broker)
    reachable: bool
    bootstrap: str
    data_dir: Path
    nodes: tuple[NodeStatus, ...] = ()  # empty for an external cluster

    @property
    def healthy(self) -> bool:
        return self.running and self.reachable and all(n.alive and n.reachable for n in self.nodes)


@dataclass(frozen=True)
class _Node:
    node_id: int
    port: int
    controller_port: int
    dir: Path

    @property
    def pid_file(self) -> Path:
        return self.dir / "broker.pid"

    @property
    def config(self) -> Path:
        return self.dir / "server.properties"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"


def _dir(settings: Settings) -> Path:
    return settings.home / "kafka"


def _nodes(settings: Settings) -> list[_Node]:
    n, root = settings.kafka_brokers, _dir(settings)
    brokers = [settings.kafka_port + i for i in range(n)]
    controllers = _controller_ports(settings.kafka_controller_port, set(brokers), n)
    return [
        _Node(i, brokers[i - 1], controllers[i - 1], root if n == 1 else root / f"node-{i}")
        for i in range(1, n + 1)
    ]


def _controller_ports(first: int, broker_ports: set[int], n: int) -> list[int]:
    ports, port = [], first
    while len(ports) < n:
        if port not in broker_ports:
            ports.append(port)
        port += 1
    return ports


def _started(settings: Settings) -> Settings:
    """`settings` sized like the cluster last started under its home (an explicit
    LKLAB_KAFKA_BROKERS that disagrees must not hide nodes from status or stop)."""
    n = started_brokers(settings.home)
    return settings if n in (None, settings.kafka_brokers) else settings.model_copy(update={"kafka_brokers": n})


def _node(settings: Settings, node_id: int) -> _Node:
    nodes = _nodes(settings)
    if not 1 <= node_id <= len(nodes):
        raise KafkaRuntimeError(f"no Kafka node {node_id}: the cluster under {_dir(settings)} has nodes 1..{len(nodes)}")
    return nodes[node_id - 1]


def _java() -> str:
    if (java := processes.java()) is None:
        raise KafkaRuntimeError(processes.JAVA_MISSING)
    return java


def _classpath(settings: Settings) -> str:
    jars = settings.jars_dir / "kafka"
    if not any(jars.glob("kafka_2.13-*.jar")):
        raise KafkaRuntimeError(f"Kafka jars missing in {jars}: run `make setup` (resolves them from Maven Central)")
    return str(jars / "*")



def _require_free(host: str, port: int, what: str) -> None:
    if not processes.port_free(host, port):
        raise KafkaRuntimeError(
            f"{what} port {host}:{port} is already in use; stop what holds it or set LKLAB_KAFKA_PORT / LKLAB_KAFKA_CONTROLLER_PORT"
        )


def log_dir(settings: Settings) -> Path:
    """The first node's log directory (server.log, controller.log, stdout.log)."""
    return _nodes(settings)[0].logs


def read_pid(settings: Settings) -> int | None:
    """The pid of a running node (node 1 first), or None when no node runs."""
    return next((pid for pid in map(_running, _pid_files(settings)) if pid is not None), None)


def _running(pid_file: Path) -> int | None:
    return processes.read_pid(pid_file, _MARKER)


def _pid(node: _Node) -> int | None:
    return _running(node.pid_file)


def _pid_files(settings: Settings) -> list[Path]:
    """The nodes' pid files, plus any other under <home>/kafka: a size mismatch never hides a JVM."""
    known = [node.pid_file for node in _nodes(_started(settings))]
    root = _dir(settings)
    others = [f for f in [root / "broker.pid", *sorted(root.glob("node-*/broker.pid"))] if f.exists() and f not in known]
    return known + others


def _parallel(fn: Callable[[_A], _T], items: Iterable[_A]) -> list[_T]:
    items = list(items)
    with ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        return list(pool.map(fn, items))


def _heap(settings: Settings) -> str:
    if settings.kafka_brokers == 1:
        return settings.kafka_heap
    match = re.fullmatch(r"(\d+)([kmg]?)", settings.kafka_heap.strip().lower())
    if not match:
        raise KafkaRuntimeError(f"LKLAB_KAFKA_HEAP={settings.kafka_heap!r} is not a JVM size like 512m or 1g")
    scale = {"": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024}[match[2]]
    return f"{min(int(int(match[1]) * scale), CLUSTER_HEAP_MB)}m"


def _server_properties(settings: Settings, node: _Node) -> str:
    host, nodes = settings.kafka_host, _nodes(settings)
    rf, min_isr = min(3, len(nodes)), (2 if len(nodes) >= 3 else 1)  # the broker's own topics: the lab's derivation
    props = {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": ",".join(f"{n.node_id}@{host}:{n.controller_port}" for n in nodes),
        "listeners": f"PLAINTEXT://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{host}:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(node.dir / "data"),
        "num.partitions": str(settings.partitions),
        "offsets.topic.replication.factor": str(rf),
        "offsets.topic.num.partitions": "4",
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "4",
        "default.replication.factor": str(rf),
        "min.insync.replicas": str(min_isr),
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "log.retention.hours": "-1",
        "log.retention.check.interval.ms": "5000",  # topics that set retention see it applied within seconds
        "log.segment.bytes": str(64 * 1024 * 1024),
    }
    if len(nodes) > 1:
        # A killed broker is fenced (and its partitions get new leaders) once it misses heartbeats
        # for the session timeout: 9 s by default, a long stall for a chaos drill. 4 s still
        # tolerates a GC pause of three JVMs on two cores.
        props |= {"broker.heartbeat.interval.ms": "1000", "broker.session.timeout.ms": "4000"}
    return "".join(f"{k}={v}\n" for k, v in props.items())


def _cluster_id(settings: Settings, nodes: list[_Node]) -> str:
    """Every node must be formatted with the same cluster id: the recorded one, else that of a
    node already formatted (a home from before the cluster file), else a new one."""
    try:
        return json.loads((settings.home / CLUSTER_FILE).read_text())["cluster_id"]
    except (FileNotFoundError, KeyError, ValueError):
        pass
    for node in nodes:
        meta = node.dir / "data" / "meta.properties"
        if meta.exists() and (found := re.search(r"^cluster\.id=(\S+)", meta.read_text(), re.M)):
            return found[1]
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _existing_size(settings: Settings) -> int | None:
    """How many nodes the data under <home>/kafka was formatted for; None for a fresh home."""
    recorded = started_brokers(settings.home)
    if recorded is not None:
        return recorded
    return 1 if (_dir(settings) / "data" / "meta.properties").exists() else None


def _format_storage(java: str, cp: str, node: _Node, cluster_id: str) -> None:
    if (node.dir / "data" / "meta.properties").exists():
        return
    result = subprocess.run(
        [java, "-cp", cp, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}", "-c", str(node.config)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise KafkaRuntimeError(f"kafka storage format of node {node.node_id} failed: "
                                f"{(result.stderr or result.stdout).strip().splitlines()[-1:]}")


def _prepare(settings: Settings, node: _Node) -> None:
    node.logs.mkdir(parents=True, exist_ok=True)
    node.config.write_text(_server_properties(settings, node))
    (node.dir / "log4j.properties").write_text(resources.files("lklab.runtime").joinpath("log4j.properties").read_text())


def _spawn(settings: Settings, node: _Node, java: str, cp: str) -> int:
    """Start one node's JVM in the background and return its pid at once: the nodes of a cluster
    wait for each other (a quorum), so readiness is judged for all of them together."""
    try:
        return processes.spawn(
            [java, f"-Xmx{_heap(settings)}", "-Xms128m", *shlex.split(settings.kafka_java_options), "-Djava.awt.headless=true",
             f"-Dkafka.logs.dir={node.logs}", f"-Dlog4j.configuration=file:{node.dir / 'log4j.properties'}",
             "-cp", cp, "kafka.Kafka", str(node.config)],
            log=node.logs / "stdout.log", pid_file=node.pid_file, ready=lambda _pid: True, wait_s=1.0, poll_s=0.1,
        )
    except processes.StartupExited as exited:
        # a JVM that refuses its options can exit before the first poll: the same reason as later
        raise KafkaRuntimeError(f"Kafka node {node.node_id} exited with code {exited.returncode} at once: "
                                f"{_exit_reason(settings, node)}; see {node.logs}") from None


def _registered(settings: Settings) -> set[int]:
    """Broker ids the cluster's metadata lists (registered, not fenced); empty while it is not answering."""
    from lklab.log import kafka_io  # aiokafka only once something waits: `lklab kafka stop` stays quick

    try:
        return kafka_io.run(kafka_io.broker_ids(settings, timeout_s=3.0))
    except Exception:  # noqa: BLE001 - not up yet (connection refused, no quorum, timeouts): keep waiting
        return set()


def _exit_reason(settings: Settings, node: _Node) -> str:
    """The last lines the node wrote; a JVM that would not start names the Java options it was given."""
    tail = processes.log_tail(node.logs / "stdout.log", 3)
    if "Could not create the Java Virtual Machine" in tail:
        tail += f" (LKLAB_KAFKA_JAVA_OPTIONS is {settings.kafka_java_options!r})"
    return tail


def _wait_ready(settings: Settings, nodes: list[_Node], pids: dict[int, int], wait_s: float) -> None:
    """Until every node's broker port accepts connections and the metadata lists each as a broker."""
    deadline, wanted = time.monotonic() + wait_s, {node.node_id for node in nodes}
    while True:
        for node in nodes:
            if not processes.alive(pids[node.node_id], _MARKER):
                node.pid_file.unlink(missing_ok=True)
                raise KafkaRuntimeError(f"Kafka node {node.node_id} exited during start-up: {_exit_reason(settings, node)}; "
                                        f"see {node.logs}")
        if all(port_open(settings.kafka_host, node.port) for node in nodes) and wanted <= _registered(settings):
            return
        if time.monotonic() >= deadline:
            late = [n for n in nodes if n.node_id not in _registered(settings)] or nodes
            raise KafkaRuntimeError(f"Kafka node(s) {', '.join(str(n.node_id) for n in late)} not ready on {settings.bootstrap} "
                                    f"within {wait_s:.0f}s; see {', '.join(str(n.logs) for n in late)}")
        time.sleep(0.3)


def start(settings: Settings, wait_s: float = 60.0) -> int:
    """Start every node in the background and wait until all are brokers of one cluster; returns
    node 1's pid (the only node's, for a single broker)."""
    if settings.bootstrap_servers:
        raise KafkaRuntimeError(f"LKLAB_BOOTSTRAP_SERVERS={settings.bootstrap_servers} points at an external cluster; nothing to start")
    if (pid := read_pid(settings)) is not None:
        raise KafkaRuntimeError(f"Kafka is already running (pid {pid}, {_started(settings).bootstrap}); `lklab kafka stop` first")
    n, root = settings.kafka_brokers, _dir(settings)
    if (existing := _existing_size(settings)) not in (None, n):
        raise KafkaRuntimeError(f"{root} holds a {existing}-broker cluster; start it with --brokers {existing}, "
                                f"or delete {root} for a fresh {n}-broker one")
    java, cp, nodes = _java(), _classpath(settings), _nodes(settings)
    _heap(settings)  # a bad LKLAB_KAFKA_HEAP is refused before anything is written
    for node in nodes:
        _require_free(settings.kafka_host, node.port, "Kafka broker")
        _require_free(settings.kafka_host, node.controller_port, "Kafka controller")
    cluster_id = _cluster_id(settings, nodes)
    for node in nodes:
        _prepare(settings, node)
    _parallel(lambda node: _format_storage(java, cp, node, cluster_id), nodes)
    (settings.home / CLUSTER_FILE).write_text(json.dumps({"brokers": n, "cluster_id": cluster_id}) + "\n")
    pids: dict[int, int] = {}
    try:
        for node in nodes:  # all at once: no node is ready before a quorum of controllers is up
            pids[node.node_id] = _spawn(settings, node, java, cp)
        _wait_ready(settings, nodes, pids, wait_s)
    except KafkaRuntimeError:
        stop(settings)
        raise
    return pids[1]


def stop(settings: Settings, wait_s: float = 30.0) -> bool:
    """Stop every node, in parallel (SIGTERM, then SIGKILL). Returns False when none was running."""
    return any(_parallel(lambda pid_file: processes.stop_group(pid_file, _MARKER, wait_s), _pid_files(settings)))


def kill_node(settings: Settings, node_id: int, sig: int = signal.SIGKILL, wait_s: float = 10.0) -> int:
    """Send `sig` to one node (chaos: the default SIGKILL is a crash, no controlled shutdown) and,
    for SIGKILL, wait until it is gone. Returns its pid."""
    settings = _started(settings)
    node = _node(settings, node_id)
    if (pid := _pid(node)) is None:
        raise KafkaRuntimeError(f"Kafka node {node_id} is not running")
    os.killpg(pid, sig)
    if sig == signal.SIGKILL:
        deadline = time.monotonic() + wait_s
        while processes.alive(pid, _MARKER) and time.monotonic() < deadline:
            time.sleep(0.05)
        # a killed JVM is a zombie that still listens while its threads are torn down: gone means
        # clients are refused, as they are after a real crash
        processes.wait_port_free(settings.kafka_host, node.port, max(0.0, deadline - time.monotonic()))
    return pid


def start_node(settings: Settings, node_id: int, wait_s: float = 60.0) -> int:
    """Restart one node of a cluster whose other nodes run (after kill_node), from the config it
    was started with; waits until it is a broker of the cluster again. Returns its pid."""
    settings = _started(settings)
    node = _node(settings, node_id)
    if not node.config.exists():
        raise KafkaRuntimeError(f"Kafka node {node_id} was never started under {_dir(settings)}; `lklab kafka start` first")
    if (pid := _pid(node)) is not None:
        raise KafkaRuntimeError(f"Kafka node {node_id} is already running (pid {pid})")
    for port, what in ((node.port, "Kafka broker"), (node.controller_port, "Kafka controller")):
        if not processes.wait_port_free(settings.kafka_host, port):  # a node just killed lets go of its sockets a moment later
            _require_free(settings.kafka_host, port, what)
    pid = _spawn(settings, node, _java(), _classpath(settings))
    try:
        _wait_ready(settings, [node], {node_id: pid}, wait_s)
    except KafkaRuntimeError:
        processes.stop_group(node.pid_file, _MARKER, 10.0)
        raise
    return pid


def status(settings: Settings) -> BrokerStatus:
    if settings.bootstrap_servers:
        host, _, port = settings.bootstrap.split(",")[0].rpartition(":")
        return BrokerStatus(running=True, pid=None, reachable=port_open(host, int(port)), bootstrap=settings.bootstrap,
                            data_dir=_dir(settings) / "data")
    settings = _started(settings)
    nodes = tuple(_parallel(lambda node: _node_status(settings, node), _nodes(settings)))
    return BrokerStatus(
        running=any(n.alive for n in nodes),
        pid=next((n.pid for n in nodes if n.pid is not None), None),
        reachable=any(n.reachable for n in nodes),  # a client bootstraps from any broker it reaches
        bootstrap=settings.bootstrap,
        data_dir=_dir(settings) / "data" if len(nodes) == 1 else _dir(settings),
        nodes=nodes,
    )


def _node_status(settings: Settings, node: _Node) -> NodeStatus:
    pid = _pid(node)
    return NodeStatus(node.node_id, pid, node.port, pid is not None, port_open(settings.kafka_host, node.port), node.dir / "data")
