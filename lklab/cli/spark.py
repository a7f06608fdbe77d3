"""`lklab spark start|stop|status`: a Spark standalone cluster (one master, one worker) for the
batch and Kappa layers to run on instead of local[N]."""
from __future__ import annotations

from typing import Annotated

import typer

from lklab.cli.common import console, fail, settings, spark_app

FAILED = 1  # a cluster that cannot start or is not running, like `lklab kafka status`


@spark_app.command("start")
def spark_start(
    port: Annotated[int, typer.Option(min=1, max=65535, help="master port (its web UI takes the next one if free)")] = 7077,
    cores: Annotated[int, typer.Option(min=1, help="cores the worker offers")] = 1,
    memory: Annotated[str, typer.Option(help="memory the worker offers its executors, like 1g or 768m")] = "1g",
) -> None:
    """Start the master and one worker in the background (logs under .lklab/spark-standalone)."""
    from lklab.lake import standalone

    s = settings()
    try:
        url = standalone.start(s, port, cores, memory)
    except standalone.SparkClusterError as exc:
        raise fail(str(exc), code=FAILED) from None
    st = standalone.status(s)
    console.print(f"Spark standalone running: master {url} (pid {st.master_pid}, web UI {st.webui}), "
                  f"worker pid {st.worker_pid} ({cores} core{'s' if cores > 1 else ''}, {memory})", highlight=False)
    console.print(f"to run lklab on it: export LKLAB_SPARK_MASTER={url}", highlight=False)


@spark_app.command("stop")
def spark_stop() -> None:
    """Stop the worker (and its executors) and the master."""
    from lklab.lake import standalone

    console.print("Spark standalone stopped" if standalone.stop(settings()) else "Spark standalone was not running")


@spark_app.command("status")
def spark_status() -> None:
    """Master and worker pids, workers alive, applications running and finished."""
    from lklab.lake import standalone

    st = standalone.status(settings())
    if st.master_pid is None and st.worker_pid is None:
        console.print("Spark standalone stopped")
        raise typer.Exit(code=FAILED)
    health = "healthy" if st.running else "not healthy"
    console.print(f"Spark standalone {health}: master {st.master_url or '-'} (pid {st.master_pid or '-'}, web UI {st.webui or '-'}), "
                  f"worker pid {st.worker_pid or '-'}, {st.alive_workers} worker(s) alive, "
                  f"{st.active_apps} application(s) running, {st.completed_apps} finished", highlight=False)
    if not st.running:
        raise typer.Exit(code=FAILED)
