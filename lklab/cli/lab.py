"""`lklab up`, `lklab ps`, `lklab down` and `lklab traffic`: the whole lab as one thing."""
from __future__ import annotations

import signal
import threading
import time
from typing import Annotated

import typer
from rich.table import Table

from lklab.cli.common import app, console, err, fail, settings


def _say(line: str) -> None:
    console.print(f"[bold cyan]▶[/bold cyan] {line}", highlight=False, soft_wrap=True)


@app.command()
def up(
    with_traffic: Annotated[bool, typer.Option("--with-traffic", help="also run the paced live producer (LKLAB_TRAFFIC_*)")] = False,
) -> None:
    """Start the whole lab in the background, in order, each part health-checked: the broker,
    topics, the Faust speed worker, the published Kappa jobs (a view with nothing published gets
    v1, published once hydrated), the Dagster web server and daemon (schedules and sensors run),
    and the API with the dashboard. Logs under <home>/logs; `lklab ps`, `lklab down`."""
    from lklab.lab import up as lab

    from orchestration.launch import write_dagster_yaml

    s = settings()
    began = time.monotonic()
    write_dagster_yaml(s)  # the run queue's limit: one Lambda batch run at a time, whoever launches it

    def publish(s_, plan) -> str:
        from expectations.runner import run_suite

        return lab.first_publication(s_, plan, run_suite)

    try:
        lab.up(s, with_traffic, _say, publish)
    except lab.LabUpError as exc:
        raise fail(str(exc), code=1) from None
    _say(f"the lab is up in {time.monotonic() - began:.0f}s: dashboard http://127.0.0.1:{s.api_port}/ · "
         f"Dagster http://127.0.0.1:{s.dagster_port}/ · `lklab ps` · `lklab down`")


@app.command()
def ps() -> None:
    """Each process `lklab up` started: pid, port, health and log."""
    from lklab.lab import up as lab

    s = settings()
    rows = lab.ps(s)
    if not rows:
        err.print("the lab is not up (`lklab up` starts it)")
        raise typer.Exit(1)
    table = Table(title=f"lklab at {s.home}")
    for column in ("service", "pid", "port", "health", "log"):
        table.add_column(column)
    for r in rows:
        health = f"[green]ok[/green] {r.detail}" if r.healthy else f"[red]unhealthy[/red] {r.detail}"
        table.add_row(r.name, str(r.pid or "—"), f"127.0.0.1:{r.port}" if r.port else "—", health, str(r.log))
    console.print(table)


@app.command()
def down() -> None:
    """Stop everything `lklab up` started, in reverse order, and nothing else."""
    from lklab.lab import up as lab

    s = settings()
    if lab.read_state(s) is None:
        err.print("the lab is not up: nothing to stop")
        return
    stopped = lab.down(s, _say)
    _say(f"the lab is down ({len(stopped)} service(s) stopped)")


@app.command()
def traffic() -> None:
    """Produce the generator's workload in real time, until stopped (Ctrl-C or SIGTERM): each event
    at its arrival time, with the seed's lateness, duplicates and corrections. Rate and lateness:
    LKLAB_TRAFFIC_RIDES_PER_MINUTE, _LATE_FRACTION, _LATE_MAX_S, _ON_TIME_MAX_S."""
    from lklab.lab.traffic import Traffic

    s = settings()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    paced = Traffic(s)
    _say(f"traffic: {s.traffic_rides_per_minute:g} rides per minute into {s.topic} at {s.bootstrap}, in real time")
    try:
        paced.run(stop)
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - Kafka unreachable and the like: one line
        raise fail(f"traffic stopped: {exc}", code=1) from None
    _say(f"traffic: stopped after {paced.produced:,} events")
