"""A 3-broker KRaft cluster on loopback from the same jars: replicated topics, and the leader of a
partition killed (SIGKILL) in the middle of an import loses no acknowledged event."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from lklab.core.config import Settings
from lklab.core.events import Event, parse_event
from lklab.log import broker as kafka_runtime
from lklab.log import kafka_io
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import ProduceReport, ProducerSession
from lklab.core.processes import free_port, free_port_range

ROOT = Path(__file__).resolve().parents[2]
BROKERS = 3
integration = pytest.mark.integration  # every test here but the Settings one needs the cluster


def test_bootstrap_lists_every_broker_of_the_embedded_cluster(tmp_path: Path) -> None:
    one = Settings(home=tmp_path, kafka_port=19092)
    assert (one.kafka_brokers, one.bootstrap) == (1, "127.0.0.1:19092")
    assert (one.topic_replication_factor, one.topic_min_insync_replicas) == (1, 1)
    three = Settings(home=tmp_path, kafka_port=19092, kafka_brokers=3)
    assert three.bootstrap == "127.0.0.1:19092,127.0.0.1:19093,127.0.0.1:19094"
    assert (three.topic_replication_factor, three.topic_min_insync_replicas) == (3, 2)
    assert Settings(home=tmp_path, kafka_brokers=5).topic_replication_factor == 3  # more brokers, not more copies
    external = Settings(home=tmp_path, bootstrap_servers="k1:9092,k2:9092", replication_factor=2)
    assert (external.bootstrap, external.topic_replication_factor, external.topic_min_insync_replicas) == ("k1:9092,k2:9092", 2, 1)
    (tmp_path / "kafka").mkdir()
    (tmp_path / "kafka" / "cluster.json").write_text(json.dumps({"brokers": 3}))
    assert Settings(home=tmp_path).kafka_brokers == 3  # what `lklab kafka start --brokers 3` recorded
    assert Settings(home=tmp_path, kafka_brokers=1).kafka_brokers == 1  # an explicit value wins


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    brokers = free_port_range(BROKERS)
    controllers = free_port_range(BROKERS, avoid=range(brokers, brokers + BROKERS))
    settings = Settings(home=tmp_path_factory.mktemp("lklab-cluster"), kafka_port=brokers, kafka_controller_port=controllers,
                        kafka_brokers=BROKERS, partitions=3, speed_web_port=free_port())
    try:
        kafka_runtime.start(settings)
        yield settings
    finally:
        kafka_runtime.stop(settings)


@pytest.fixture
def topics(cluster: Settings) -> Settings:
    tag = uuid.uuid4().hex[:8]
    settings = cluster.model_copy(update={"topic": f"rides.events.{tag}", "dlq_topic": f"rides.events.{tag}.dlq"})
    kafka_io.run(kafka_io.ensure_topics(settings))
    return settings


async def _describe(settings: Settings) -> tuple[list[dict], str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.bootstrap)
    await admin.start()
    try:
        [topic] = await admin.describe_topics([settings.topic])
        [response] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topic,
                                                                  configs={"min.insync.replicas": None})])
        [(_error, _message, _type, _name, entries, *_)] = response.resources
        return topic["partitions"], dict((e[0], e[1]) for e in entries)["min.insync.replicas"]
    finally:
        await admin.close()


@integration
def test_the_cluster_runs_every_node_and_topics_have_three_replicas(topics: Settings) -> None:
    status = kafka_runtime.status(topics)
    assert status.healthy and [(n.node_id, n.alive, n.reachable) for n in status.nodes] == [(1, True, True), (2, True, True), (3, True, True)]
    assert kafka_io.run(kafka_io.broker_ids(topics)) == {1, 2, 3}
    partitions, min_isr = kafka_io.run(_describe(topics))
    assert min_isr == "2"
    assert [sorted(p["replicas"]) for p in partitions] == [[1, 2, 3]] * topics.partitions
    with pytest.raises(kafka_runtime.KafkaRuntimeError, match="already running"):
        kafka_runtime.start(topics)


@integration
def test_later_commands_find_the_cluster_without_the_flag(cluster: Settings) -> None:
    """Only home and ports in the environment, no LKLAB_KAFKA_BROKERS: the cluster file says 3."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "LKLAB_HOME": str(cluster.home),
           "LKLAB_KAFKA_PORT": str(cluster.kafka_port), "LKLAB_KAFKA_CONTROLLER_PORT": str(cluster.kafka_controller_port)}
    lklab = [sys.executable, "-m", "lklab.cli", "kafka"]
    result = subprocess.run([*lklab, "status"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"Kafka healthy: pid {kafka_runtime.read_pid(cluster)}, bootstrap {cluster.bootstrap}")
    assert [line.split(",")[0] for line in lines[1:4]] == ["  node 1: up", "  node 2: up", "  node 3: up"]
    for bad in ("0", "10"):
        result = subprocess.run([*lklab, "start", "--brokers", bad], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
        assert (result.returncode, result.stderr.strip(), result.stdout) == (2, f"error: --brokers {bad}: must be between 1 and 9", "")


def _send_while_killing(settings: Settings, session: ProducerSession, chunks: list[list[Event]], victim: int) -> list[ProduceReport]:
    """Send chunk after chunk from a thread; SIGKILL node `victim` once the first is acknowledged,
    while the rest are in flight. Returns the reports of the acknowledged chunks."""
    reports: list[ProduceReport] = []
    failures: list[BaseException] = []
    latencies: list[float] = []
    first_acked = threading.Event()

    def pump() -> None:
        try:
            for chunk in chunks:
                began = time.monotonic()
                reports.append(session.send(chunk))
                latencies.append(time.monotonic() - began)
                first_acked.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            failures.append(exc)
            first_acked.set()

    thread = threading.Thread(target=pump, name="pump")
    thread.start()
    assert first_acked.wait(30)
    kafka_runtime.kill_node(settings, victim, signal.SIGKILL)
    thread.join(90)
    assert not thread.is_alive(), "the import did not finish within 90 s of the kill"
    assert not failures, f"the import stopped after the leader was killed: {failures[0]}"
    # a send waits out the election of a new leader (seconds): proof the kill hit the import mid-flight
    assert max(latencies) > 1.0, f"no send waited for a new leader: {latencies}"
    return reports


@integration
def test_killing_the_leader_mid_import_loses_no_acknowledged_event(topics: Settings) -> None:
    events = generate(GeneratorConfig(seed=41, duration_s=300, rides_per_minute=60)).deliveries
    first, second = events[:500], events[500:]
    chunks = [second[i:i + 40] for i in range(0, len(second), 40)]
    victim = kafka_io.wait_for_leader(topics, 0)
    began = time.monotonic()
    try:
        with ProducerSession(topics) as session:
            assert session.send(first).accepted == len(first)
            reports = _send_while_killing(topics, session, chunks, victim)
        failover_s = time.monotonic() - began
        assert [r.accepted for r in reports] == [len(c) for c in chunks]  # every event acknowledged, none dead-lettered
        assert kafka_io.wait_for_leader(topics, 0, not_on=victim) != victim

        end = kafka_io.run(kafka_io.end_offsets(topics))
        logged = [parse_event(r.value) for r in kafka_io.run(kafka_io.read_range(topics, {}, end))]
        # the workload delivers some events twice on purpose: the log must hold exactly what was sent
        assert Counter(e.event_id for e in logged) == Counter(e.event_id for e in events)
        assert sorted(e.to_json() for e in logged) == sorted(e.to_json() for e in events)
        assert sum(end.values()) == len(events), "a retried send was written twice"
    finally:
        if kafka_runtime.status(topics).nodes[victim - 1].pid is None:
            kafka_runtime.start_node(topics, victim)
    assert failover_s < 45
    status = kafka_runtime.status(topics)
    assert status.healthy and kafka_io.run(kafka_io.broker_ids(topics)) == {1, 2, 3}
    deadline = time.monotonic() + 20  # the restarted node catches up and is back in the in-sync replicas
    while (isrs := [sorted(p["isr"]) for p in kafka_io.run(_describe(topics))[0]]) != [[1, 2, 3]] * topics.partitions:
        assert time.monotonic() < deadline, f"node {victim} is not back in every in-sync replica set: {isrs}"
        time.sleep(0.5)


@integration
def test_killing_or_restarting_a_node_that_cannot_be_is_one_line(cluster: Settings) -> None:
    with pytest.raises(kafka_runtime.KafkaRuntimeError, match=r"no Kafka node 4: .* has nodes 1\.\.3"):
        kafka_runtime.kill_node(cluster, 4)
    with pytest.raises(kafka_runtime.KafkaRuntimeError, match="node 2 is already running"):
        kafka_runtime.start_node(cluster, 2)
