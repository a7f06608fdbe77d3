"""The demo path on the whole scaled stack (3 Kafka brokers with replication factor 3, Spark
standalone, PostgreSQL), as `make demo-scaled` runs it: the same code as `lklab demo`, chosen by
settings alone, and every view equals the oracle. It runs as its own process: the test session
already holds a local Spark session, and a JVM has one SparkContext."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEST_BROKER_JAVA_OPTIONS, TEST_SPARK_JAVA_OPTIONS

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]
LKLAB = str(Path(sys.executable).parent / "lklab")


def test_the_demo_on_the_scaled_stack_equals_the_oracle(tmp_path: Path) -> None:
    run = subprocess.run([LKLAB, "demo", "--scaled", "--minutes", "6", "--seed", "17"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=840, env={"PATH": "/usr/bin:/bin", "LKLAB_SPARK_CODEGEN": "false",
                                                                  "LKLAB_SPARK_JAVA_OPTIONS": TEST_SPARK_JAVA_OPTIONS,
                                                                  "LKLAB_KAFKA_JAVA_OPTIONS": TEST_BROKER_JAVA_OPTIONS})
    out = run.stdout
    assert run.returncode == 0, (out[-4000:], run.stderr[-2000:])
    # it really ran scaled: three brokers and replicated topics, a standalone master, PostgreSQL
    stack = re.search(r"scaled stack up: Kafka 3 brokers on (\S+) \(replication factor 3, min\.insync\.replicas 2, acks=all\); "
                      r"Spark standalone (spark://127\.0\.0\.1:\d+) .*serving store (postgresql\+psycopg://lklab:\*\*\*@127\.0\.0\.1:\d+/lklab)", out)
    assert stack, out[:3000]
    assert len(stack[1].split(",")) == 3 and all(b.startswith("127.0.0.1:") for b in stack[1].split(","))
    # the batch ran on the cluster, not in local mode: the master lists the application and the worker started executors
    apps = re.search(r"Spark standalone: (\d+) application\(s\) ran on its worker .*, in (\d+) executor\(s\) it started", out)
    assert apps and int(apps[1]) >= 1 and int(apps[2]) >= 1, out[-2000:]
    # and the demo's own checks against the oracle all passed
    assert "every merged view equals the oracle exactly" in out and "demo complete" in out
    assert "versions seen in order user_sessions__v1 → user_sessions__v2, 0 empty or without a version" in out
    assert not re.search(r"password|[A-Za-z0-9_-]{32}@", out + run.stderr)  # the store's password is never printed
