"""Session-scoped real services: one Kafka broker, (lazily) one Spark session and one PostgreSQL
server per test run."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from lklab.core import processes
from lklab.core.processes import free_port
from lklab.kappa.freshness import WORKER_MARKER
from lklab.log import kafka_io
from lklab.log import broker as kafka_runtime
from lklab.core.config import Settings

if os.environ.get("PYTEST_XDIST_WORKER"):
    # xdist's workers inherit COLUMNS=80 and LINES=24 from execnet's set-up, not from the shell;
    # lklab reads COLUMNS as the user's chosen width, so piped output in the tests would wrap.
    os.environ.pop("COLUMNS", None)
    os.environ.pop("LINES", None)
from lklab.serving import postgres

TEST_BROKER_JAVA_OPTIONS = "-XX:+UseSerialGC -XX:TieredStopAtLevel=1"
# C1 only: C2 compiler threads were about 40 % of each test Spark JVM's CPU (top -H), while its code
# runs on tiny tables; with codegen off too, a gate test's machine CPU fell from about 145 to 99 s
TEST_SPARK_JAVA_OPTIONS = TEST_BROKER_JAVA_OPTIONS


@pytest.fixture(scope="session")
def base_settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    home = tmp_path_factory.mktemp("lklab-home")
    return Settings(
        home=home,
        kafka_port=free_port(),
        kafka_controller_port=free_port(),
        speed_web_port=free_port(),
        partitions=4,
        # tiny tables: Janino compiling generated code was a quarter of the Spark JVM's samples (JFR)
        spark_codegen=False,
        spark_java_options=TEST_SPARK_JAVA_OPTIONS,
        # a test broker's CPU is its JVM's start-up: serial GC and C1 only halved it (9.5 → 5.4 CPU-s, ready in 11 s not 20)
        kafka_java_options=TEST_BROKER_JAVA_OPTIONS,
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


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server (Debian's binaries) on a free loopback port, started on first use.
    Its directory is a fresh one in the system temp dir: under root the server runs as `postgres`,
    which cannot traverse pytest's 0700 temp root."""
    root = Path(tempfile.mkdtemp(prefix="lklab-pg-"))
    try:
        server = postgres.start(root, free_port())
        yield server
    finally:
        postgres.stop(root)
        shutil.rmtree(root, ignore_errors=True)


STORES = ["sqlite", "postgresql"]


@pytest.fixture(params=STORES)
def serving_url(request: pytest.FixtureRequest) -> str | None:
    """Every serving-store test runs on both stores: None = the embedded SQLite file under the
    test's home; otherwise the URL of a fresh database on the run's PostgreSQL server."""
    if request.param == "sqlite":
        yield None
        return
    server = request.getfixturevalue("postgres_server")
    # DROP DATABASE … WITH (FORCE) ends the connections a test's engine still pools; when that
    # engine is collected later, SQLAlchemy logs the failed reset of each. Nothing is wrong.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
    name = f"lklab_test_{uuid.uuid4().hex[:12]}"
    yield postgres.create_database(server, name)
    postgres.drop_database(server, name)
