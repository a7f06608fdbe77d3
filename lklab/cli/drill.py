"""`lklab drill list|run|report`: the drills (lklab.drills), their results and drills/REPORT.md."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from pydantic import TypeAdapter
from rich.table import Table

import lklab
from lklab.cli.common import BAD_REQUEST, console, drill_app, err, fail
from lklab.drills.registry import SIZES, Drill, DrillError, Size
from lklab.drills.result import DrillResult

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
    names: Annotated[list[str] | None, typer.Argument(help="drills from `lklab drill list`, run one after another")] = None,
    every: Annotated[bool, typer.Option("--all", help="run every drill (as `make drills` does)")] = False,
    size: Annotated[str, typer.Option(help="small (for tests) | default (for the report)")] = "default",
    seed: Annotated[int, typer.Option(help="generator seed")] = 7,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON only (progress goes to stderr)")] = False,
    out: Annotated[Path, typer.Option(help="where NAME.json and NAME.png go")] = DRILLS_DIR / "results",
) -> None:
    """Run drills, each on its own broker, lake, serving store and ports (one Spark JVM for all):
    print each one's figures and lessons, write NAME.json and NAME.png. With several drills, a
    failed one is reported in one line and the rest still run; the exit code is then 1."""
    from lklab.drills.catalog import all_drills, drill

    if every == bool(names):
        raise fail("name the drills to run, or pass --all (not both)")
    if size not in SIZES:
        raise fail(f"unknown size {size!r}; one of: {', '.join(SIZES)}")
    try:
        chosen = all_drills() if every else [drill(name) for name in names or []]
    except DrillError as exc:
        raise fail(str(exc)) from None
    results: list[DrillResult] = []
    failed: list[str] = []
    began = time.monotonic()
    for the_drill in chosen:
        result = _run_one(the_drill, size, seed, as_json, out)
        if result is None:
            failed.append(the_drill.name)
        else:
            results.append(result)
    if len(chosen) > 1:
        err.print(f"{len(chosen)} drills took {time.monotonic() - began:.0f}s"
                  + (f"; failed: {', '.join(failed)}" if failed else ""), highlight=False)
    if as_json and results:
        typer.echo(results[0].model_dump_json(indent=1) if len(chosen) == 1
                   else TypeAdapter(list[DrillResult]).dump_json(results, indent=1).decode())
    if failed:
        raise typer.Exit(code=1 if len(chosen) > 1 else BAD_REQUEST)


def _run_one(the_drill: Drill, size: Size, seed: int, as_json: bool, out: Path) -> DrillResult | None:
    """One drill on its own broker; None (with the reason on one line) if it failed."""
    from lklab.drills.lab import run_isolated
    from lklab.drills.table import print_result
    from lklab.log.broker import KafkaRuntimeError

    began = time.monotonic()
    try:  # with --json, stdout carries the JSON alone
        result, json_path, png_path = run_isolated(the_drill, size=size, seed=seed, console=err if as_json else console,
                                                   results_dir=out)
    except (DrillError, KafkaRuntimeError, TimeoutError, LookupError) as exc:
        fail(f"{the_drill.name}: {exc}")  # the one line; the caller goes on with the other drills
        return None
    took = f"{the_drill.name} took {time.monotonic() - began:.0f}s, broker start included"
    if as_json:
        err.print(took, highlight=False)
        return result
    print_result(result, console)
    console.print(f"wrote {json_path} and {png_path}; {took}", highlight=False)
    return result


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
