"""`lklab chaos list|run|report`: the chaos checks (lklab.chaos), their results, RELIABILITY.md and reliability.json."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lklab.chaos.registry import SIZES, ChaosError, Check, Size
from lklab.chaos.result import CheckResult
from lklab.chaos.runner import RESULTS, ROOT
from lklab.cli.common import chaos_app, console, err, fail


@chaos_app.command("list")
def list_checks() -> None:
    """Every check: its name, the claim it tests and what trusted systems promise for the same fault."""
    from lklab.chaos.catalog import all_checks

    table = Table("name", "claim under test", "the trusted promise", title="chaos checks")
    for c in all_checks():
        table.add_row(c.name, c.title, c.promise)
    console.print(table)


@chaos_app.command()
def run(
    names: Annotated[list[str] | None, typer.Argument(help="checks from `lklab chaos list`, run one after another")] = None,
    every: Annotated[bool, typer.Option("--all", help="run every check (as `make chaos` does)")] = False,
    size: Annotated[str, typer.Option(help="small (the tests' few trials) | full (the report's trial counts)")] = "full",
    seed: Annotated[int, typer.Option(help="seed of the random kill points and generated input")] = 7,
    out: Annotated[Path, typer.Option(help="where NAME.json goes")] = RESULTS,
) -> None:
    """Run checks, each on its own broker, serving store, lake and ports: print each one's figures
    and write NAME.json. A check that fails to run is reported in one line and the rest still run;
    the exit code is 1 if any failed to run or missed a bound."""
    from lklab.chaos.catalog import all_checks, check

    if every == bool(names):
        raise fail("name the checks to run, or pass --all (not both)")
    if size not in SIZES:
        raise fail(f"unknown size {size!r}; one of: {', '.join(SIZES)}")
    try:
        chosen = all_checks() if every else [check(name) for name in names or []]
    except ChaosError as exc:
        raise fail(str(exc)) from None
    began, bad = time.monotonic(), []
    for the_check in chosen:
        result = _run_one(the_check, size, seed, out)  # type: ignore[arg-type]
        if result is None or not result.passed:
            bad.append(the_check.name)
    console.print(f"{len(chosen)} check(s) took {time.monotonic() - began:.0f}s"
                  + (f"; failed or missed a bound: {', '.join(bad)}" if bad else "; every bound held"), highlight=False)
    if bad:
        raise typer.Exit(code=1)


def _run_one(the_check: Check, size: Size, seed: int, out: Path) -> CheckResult | None:
    from lklab.chaos.runner import run_isolated
    from lklab.log.broker import KafkaRuntimeError

    try:
        result, path = run_isolated(the_check, size=size, seed=seed, console=console, results_dir=out)
    except (ChaosError, KafkaRuntimeError, TimeoutError, LookupError) as exc:
        fail(f"{the_check.name}: {exc}")  # the one line; the caller goes on with the other checks
        return None
    print_result(result)
    console.print(f"wrote {path}; {the_check.name} took {result.wall_s:.0f}s", highlight=False)
    return result


def print_result(result: CheckResult) -> None:
    table = Table("figure", "measured", "bound", "", title=f"{result.check}: {result.fault} ({result.trials} trials)")
    for f in result.figures:
        table.add_row(f.name, f.shown(), f.bound, "[green]ok[/green]" if f.ok else "[red]MISSED[/red]")
    console.print(table)


@chaos_app.command()
def report(
    results: Annotated[Path, typer.Option(help="the check results (NAME.json)")] = RESULTS,
    out: Annotated[Path, typer.Option(help="the report to write; reliability.json goes beside it")] = ROOT / "RELIABILITY.md",
) -> None:
    """Write RELIABILITY.md and reliability.json from every check result."""
    from lklab.chaos.report import write_report

    try:
        md, js = write_report(results, out)
    except ValueError as exc:
        raise fail(str(exc)) from None
    err.print(f"wrote {md} and {js}", highlight=False)
