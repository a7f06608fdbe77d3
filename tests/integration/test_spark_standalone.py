"""The batch layer on a real Spark standalone cluster (`lklab spark start`): `lklab batch` with
LKLAB_SPARK_MASTER=spark://... builds gold views equal to the oracle, and the master saw the
application run on its worker's executor (so a batch that silently fell back to local[N] fails)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lklab import views
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.lake import standalone
from lklab.lambda_arch.builds import current_build
from lklab.log.generator import GeneratorConfig, generate, write_ledger
from lklab.log.produce import produce_events
from lklab.serving.store import make_engine
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
# One view (LKLAB_BATCH_VIEWS) still runs every stage on the cluster, Kafka ingest, bronze, silver,
# gold, GX gates, promotion; all four views cost about 25 s more on the one executor core and
# test nothing cluster-specific (the views' logic is tested in local mode).
BUILT = ["revenue_per_minute"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, str]]:
    """A master and one worker (1 core, 1g) on free loopback ports, in a home of their own."""
    settings = Settings(home=tmp_path_factory.mktemp("spark-standalone"))
    url = standalone.start(settings, free_port())
    try:
        yield settings, url
    finally:
        standalone.stop(settings)


def cli_batch(settings: Settings, master: str) -> subprocess.CompletedProcess:
    """`lklab batch` in its own process: this test process may already own the run's local
    SparkContext, and a JVM has one."""
    env = {**os.environ, **settings.to_env(), "LKLAB_SPARK_MASTER": master, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lklab.cli", "batch"], env=env, capture_output=True, text=True, timeout=540)


def promoted_rows(settings: Settings, view: str) -> dict:
    """Every row of the promoted build's view, windows after T included: the gold table as loaded."""
    spec = views.view(view)
    with make_engine(settings).connect() as conn:
        build = current_build(conn)
        assert build is not None, "no promoted build"
        rows = conn.execute(spec.measure.batch_query(spec, build.build_id, None))
        return {(r[0], r[1]): spec.measure.value(r) for r in rows}


def cluster_apps(settings: Settings) -> list[dict]:
    """The applications the master lists, running or finished (its web UI's /json/)."""
    st = standalone.status(settings)
    assert st.webui is not None
    state = standalone.master_json(int(st.webui.rsplit(":", 1)[1]))
    assert state is not None, "the master's web UI does not answer"
    return [*state["activeapps"], *state["completedapps"]]


def test_lklab_batch_on_a_standalone_cluster_builds_the_oracle(cluster: tuple[Settings, str], isolated: Settings) -> None:
    cluster_settings, master = cluster
    lab = isolated.model_copy(update={"batch_views": BUILT})
    workload = generate(GeneratorConfig(seed=61, duration_s=180, rides_per_minute=20))
    write_ledger(make_engine(lab), workload.truth)
    assert produce_events(lab, workload.deliveries).dead_lettered == 0

    result = cli_batch(lab, master)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    for name in BUILT:
        comparison = oracle.compare(promoted_rows(lab, name), oracle.for_view(name, workload.truth))
        assert comparison.equal, f"{name}: {comparison}"
    apps = [a for a in cluster_apps(cluster_settings) if a["name"] == "lklab"]
    assert apps, f"no lklab application ran on {master}: the batch ran elsewhere (local mode?)"
    executors = [d for a in apps for d in (standalone.work_dir(cluster_settings) / a["id"]).glob("*") if (d / "stderr").exists()]
    assert executors, f"the worker started no executor for {[a['id'] for a in apps]}"
