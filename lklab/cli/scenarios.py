"""`lklab demo` and `lklab compare` (now the drill sessionization-backfill): whole scenarios on their own broker."""
from __future__ import annotations

from typing import Annotated

import typer

from lklab.cli.common import app, console, fail
from lklab.cli.drill import DRILLS_DIR


@app.command()
def compare(
    scenario: Annotated[str, typer.Argument(help="sessionization")],
    seed: Annotated[int, typer.Option(help="generator seed")] = 7,
) -> None:
    """The sessionization fix both ways: the drill sessionization-backfill at default size (`lklab drill run`)."""
    from lklab.cli.drill import run as run_drill

    if scenario != "sessionization":
        raise fail(f"unknown scenario {scenario!r}; one of: sessionization")
    run_drill("sessionization-backfill", size="default", seed=seed, as_json=False, out=DRILLS_DIR / "results")


@app.command()
def demo(
    minutes: Annotated[int, typer.Option(help="minutes of event time to generate")] = 10,
    seed: Annotated[int, typer.Option(help="generator seed")] = 7,
    scaled: Annotated[bool, typer.Option("--scaled", help="on the scaled stack: a 3-broker Kafka cluster, Spark standalone "
                                         "and PostgreSQL, started under .lklab/demo-scaled (make demo-scaled)")] = False,
) -> None:
    """The main job: own broker + Faust worker + Dagster batch on generated events, merged view vs the oracle."""
    from lklab.scenarios.demo import run_demo
    from lklab.scenarios.scaled import run_scaled_demo
    from lklab.lake.standalone import SparkClusterError
    from lklab.log.broker import KafkaRuntimeError
    from lklab.serving.migrations import StoreSchemaError
    from lklab.serving.postgres import PostgresError
    from lklab.lambda_arch.speed import SpeedError

    run = run_scaled_demo if scaled else run_demo
    try:
        code = run(minutes=minutes, seed=seed, console=console).exit_code
    except (KafkaRuntimeError, SparkClusterError, PostgresError, SpeedError, StoreSchemaError, TimeoutError, LookupError) as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code=code)
