"""`lklab demo --scaled` (`make demo-scaled`): the demo path, unchanged, on the scaled stack the
README's table names, started on this machine: a 3-broker KRaft cluster (replication factor 3,
min.insync.replicas 2, acks=all), a Spark standalone master and worker, and a PostgreSQL serving
store. Only Settings differ from `lklab demo`; every process listens on 127.0.0.1."""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

from rich.console import Console
from sqlalchemy import make_url

from lklab.core.config import Settings
from lklab.core.processes import free_port, free_port_range
from lklab.lake import standalone
from lklab.log import broker as kafka_runtime
from lklab.scenarios.demo import DEMO_SEGMENT_BYTES, DemoResult, run_demo
from lklab.serving import postgres

BROKERS = 3
# Two cores: the demo's own Spark application holds one for its whole run, and a Kappa job that
# restores a snapshot through Spark starts a second application beside it (one core each).
WORKER_CORES, WORKER_MEMORY = 2, "2g"


def scaled_settings(home: Path) -> Settings:
    """The lab's settings for a 3-broker cluster on free consecutive loopback ports."""
    brokers = free_port_range(BROKERS)
    controllers = free_port_range(BROKERS, avoid=range(brokers, brokers + BROKERS))
    return Settings(home=home, kafka_brokers=BROKERS, kafka_port=brokers, kafka_controller_port=controllers,
                    speed_web_port=free_port(), topic_segment_bytes=DEMO_SEGMENT_BYTES)


def _postgres_root(home: Path) -> Path:
    """Under root the server runs as `postgres`, which must traverse every parent of its directory."""
    if os.geteuid() != 0 or all(os.stat(p).st_mode & 0o001 for p in home.resolve().parents):
        return home / "postgres"
    return Path(tempfile.mkdtemp(prefix="lklab-pg-"))


@contextmanager
def scaled_stack(home: Path, say: Callable[[str], None]) -> Iterator[Settings]:
    """Start the cluster, Spark standalone and PostgreSQL (concurrently), yield the settings that
    point at them, and stop all three at the end, whatever happened."""
    settings = scaled_settings(home)
    pg_root = _postgres_root(home)
    with ExitStack() as stack:
        stack.callback(kafka_runtime.stop, settings)
        stack.callback(standalone.stop, settings)
        stack.callback(postgres.stop, pg_root)
        if pg_root.parent != home:
            stack.callback(shutil.rmtree, pg_root, True)
        with ThreadPoolExecutor(3) as pool:
            kafka = pool.submit(kafka_runtime.start, settings)
            spark = pool.submit(standalone.start, settings, free_port(), WORKER_CORES, WORKER_MEMORY)
            store = pool.submit(postgres.start, pg_root, free_port())
            kafka.result()
            master, server = spark.result(), store.result()
        scaled = settings.model_copy(update={"spark_master": master, "serving_url": server.url()})
        say(f"scaled stack up: Kafka {BROKERS} brokers on {scaled.bootstrap} (replication factor "
            f"{scaled.topic_replication_factor}, min.insync.replicas {scaled.topic_min_insync_replicas}, acks=all); "
            f"Spark standalone {master} ({WORKER_CORES} cores, {WORKER_MEMORY}); serving store "
            f"{make_url(scaled.serving).render_as_string(hide_password=True)}")
        yield scaled


def run_scaled_demo(minutes: int = 10, seed: int = 7, console: Console | None = None, home: Path | None = None) -> DemoResult:
    """The demo on the scaled stack under `home` (default .lklab/demo-scaled, wiped first). Its
    exit code is the demo's: 0 only when every merged view and the hybrid replays equal the oracle."""
    console = console or Console()
    home = home or Path.cwd() / ".lklab" / "demo-scaled"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    say = lambda text: console.print(f"[bold cyan]▶[/bold cyan] {text}", highlight=False)  # noqa: E731
    with scaled_stack(home, say) as settings:
        result = run_demo(minutes=minutes, seed=seed, console=console, settings=settings)
        ran = standalone.status(settings)
        say(f"Spark standalone: {ran.active_apps + ran.completed_apps} application(s) ran on its worker "
            f"({ran.active_apps} still active), in {standalone.executors_started(settings)} executor(s) it started")
    return result
