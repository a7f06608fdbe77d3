"""`lklab drill list|run|report`: the drills (lklab.drills), their results and drills/REPORT.md."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

import lklab
from lklab.cli.common import console, drill_app, err, fail
from lklab.drills.registry import SIZES, DrillError

DRILLS_DIR = Path(lklab.__file__).parents[1] / "drills"  # in the repo: results and REPORT.md are committed


@drill_app.command("list")
def list_drills() -> None:
    """Every drill: its name, the question it answers and what it does."""
    from lklab.drills.catalog import all_drills  # the drills import the lab's engines: only when asked for

    table = Table("name", "question", "what it does", title="drills")
    for d in all_drills():
        table.add_row(d.name, d.question, d.summary)
    console.print(table)


@drill_app.command()
def run(
    name: Annotated[str, typer.Argument(help="a drill from `lklab drill list`")],
    size: Annotated[str, typer.Option(help="small (for tests) | default (for the report)")] = "default",
    seed: Annotated[int, typer.Option(help="generator seed")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON only (progress goes to stderr)")] = False,
    out: Annotated[Path, typer.Option(help="where NAME.json and NAME.png go")] = DRILLS_DIR / "results",
) -> None:
    """Run one drill on its own broker: print its figures and lessons, write NAME.json and NAME.png."""
    from lklab.drills.catalog import drill

    try:
        the_drill = drill(name)
    except DrillError as exc:
        raise fail(str(exc)) from None
    if size not in SIZES:
        raise fail(f"unknown size {size!r}; one of: {', '.join(SIZES)}")
    from lklab.drills.lab import run_isolated
    from lklab.drills.table import print_result
    from lklab.log.broker import KafkaRuntimeError

    began = time.monotonic()
    try:  # with --json, stdout carries the JSON alone
        result, json_path, png_path = run_isolated(the_drill, size=size, seed=seed, console=err if as_json else console,
                                                   results_dir=out)
    except (DrillError, KafkaRuntimeError, TimeoutError, LookupError) as exc:
        raise fail(str(exc)) from None
    took = f"{name} took {time.monotonic() - began:.0f}s, broker and Spark start included"
    if as_json:
        err.print(took, highlight=False)
        typer.echo(result.model_dump_json(indent=1))
        return
    print_result(result, console)
    console.print(f"wrote {json_path} and {png_path}; {took}", highlight=False)


@drill_app.command()
def report(
    results: Annotated[Path, typer.Option(help="the drill results (NAME.json, NAME.png)")] = DRILLS_DIR / "results",
    out: Annotated[Path, typer.Option(help="the report to write")] = DRILLS_DIR / "REPORT.md",
) -> None:
    """Write the drills report from every result: a summary, then one section per drill."""
    from lklab.drills.report import write_report

    try:
        console.print(str(write_report(results, out)), highlight=False)
    except ValueError as exc:  # a JSON file there that is not a drill result
        raise fail(str(exc)) from None
