"""Session-scoped real services: one Kafka broker and (lazily) one Spark session per test run."""
from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest

from lklab.core import processes
from lklab.kappa.freshness import WORKER_MARKER
from lklab.log import kafka_io
from lklab.log import broker as kafka_runtime
from lklab.core.config import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("lklab-home")
    return Settings(
        home=home,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        speed_web_port=free_port(),
        partitions=4,
    )


@pytest.fixture(scope="session")
def kafka(base_settings: Settings):
    """A real single-node KRaft broker on free loopback ports, stopped at the end of the run."""
    kafka_runtime.start(base_settings)
    try:
        yield base_settings
    finally:
        kafka_runtime.stop(base_settings)


@pytest.fixture
def isolated(kafka: Settings, tmp_path: Path):
    """Settings with their own topics, consumer group, serving store and lake on the shared broker."""
    tag = uuid.uuid4().hex[:8]
    settings = kafka.model_copy(
        update={
            "home": tmp_path / "home",
            "topic": f"rides.events.{tag}",
            "dlq_topic": f"rides.events.{tag}.dlq",
            "speed_group": f"lklab-speed-{tag}",
            "lake_uri": str(tmp_path / "lake"),
            "speed_web_port": free_port(),  # fresh per test: a port reserved at session start could be taken since
        }
    )
    settings.home.mkdir(parents=True, exist_ok=True)
    kafka_io.run(kafka_io.ensure_topics(settings))
    yield settings
    for pid_file in (settings.home / "kappa").glob("*.pid"):  # a failed test must not leave its live Kappa jobs behind
        processes.stop_group(pid_file, WORKER_MARKER, 10.0)


@pytest.fixture(scope="session")
def spark(base_settings: Settings):
    """The one Spark session of the run (Delta + Kafka source); Dagster runs in-process reuse it."""
    from lklab.lake.spark import get_spark

    session = get_spark(base_settings)
    yield session
    session.stop()
