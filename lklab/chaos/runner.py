"""Run one check on its own broker, serving store, lake and ports (.lklab/chaos/NAME), stop what
it started, and write its result to chaos/results/NAME.json."""
from __future__ import annotations

from pathlib import Path

from rich.console import Console

from lklab.chaos.registry import ChaosContext, Check, Size
from lklab.chaos.result import CheckResult

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "chaos" / "results"


def run_isolated(the_check: Check, size: Size = "full", seed: int = 7, console: Console | None = None,
                 results_dir: Path | None = None) -> tuple[CheckResult, Path]:
    from lklab.drills.lab import own_lab  # the drill lab imports GX (seconds): only when a check runs, not for every `lklab`

    name = the_check.name
    with own_lab(ROOT / ".lklab" / "chaos" / name, f"lklab-speed-chaos-{name}") as (settings, spark):
        result = the_check.run(ChaosContext(name, settings, size, seed, spark, console or Console()))
    return result, result.write((results_dir or RESULTS) / f"{name}.json")
