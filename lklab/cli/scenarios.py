"""`lklab demo` and `lklab compare`: whole scenarios on their own broker."""
from __future__ import annotations

from typing import Annotated

import typer

from lklab.cli.common import app, console, fail


@app.command()
def compare(
    scenario: Annotated[str, typer.Argument(help="sessionization")],
    days: Annotated[int, typer.Option(min=2, help="days of generated history")] = 30,
    seed: Annotated[int, typer.Option(help="generator seed")] = 7,
) -> None:
    """Play a fix both ways on the same history and print them side by side (own broker, .lklab/compare)."""
    from lklab.scenarios.compare import run_sessionization
    from lklab.log.broker import KafkaRuntimeError
    from lklab.serving.migrations import StoreSchemaError

    if scenario != "sessionization":
        raise fail(f"unknown scenario {scenario!r}; one of: sessionization")
    try:
        code = run_sessionization(days=days, seed=seed, console=console)
    except (KafkaRuntimeError, StoreSchemaError, TimeoutError, LookupError) as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code=code)


@app.command()
def demo(
    minutes: Annotated[int, typer.Option(help="minutes of event time to generate")] = 10,
    seed: Annotated[int, typer.Option(help="generator seed")] = 7,
) -> None:
    """The main job: own broker + Faust worker + Dagster batch on generated events, merged view vs the oracle."""
    from lklab.scenarios.demo import run_demo
    from lklab.log.broker import KafkaRuntimeError
    from lklab.serving.migrations import StoreSchemaError
    from lklab.lambda_arch.speed import SpeedError

    try:
        code = run_demo(minutes=minutes, seed=seed, console=console).exit_code
    except (KafkaRuntimeError, SpeedError, StoreSchemaError, TimeoutError, LookupError) as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code=code)
