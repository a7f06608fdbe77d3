"""Run one check on its own broker, serving store, lake and ports (.lklab/chaos/NAME), stop what
it started, and write its result to chaos/results/NAME.json."""
from __future__ import annotations

import shutil
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from lklab.chaos.registry import ChaosContext, Check, Size
from lklab.chaos.result import CheckResult
from lklab.core.config import Settings
from lklab.core.processes import free_port
from lklab.log import broker as kafka_runtime

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "chaos" / "results"


def run_isolated(the_check: Check, size: Size = "full", seed: int = 7, console: Console | None = None,
                 results_dir: Path | None = None) -> tuple[CheckResult, Path]:
    from lklab.lake.spark import get_spark

    name = the_check.name
    home = ROOT / ".lklab" / "chaos" / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    settings = Settings(home=home, kafka_port=free_port(), kafka_controller_port=free_port(), speed_web_port=free_port(),
                        speed_group=f"lklab-speed-chaos-{name}")
    with ExitStack() as cleanup:
        kafka_runtime.start(settings)
        cleanup.callback(kafka_runtime.stop, settings)
        spark = get_spark(settings.model_copy(update={"home": home.parent}))  # one JVM for every check of the process
        result = the_check.run(ChaosContext(name, settings, size, seed, spark, console or Console()))
    return result, result.write((results_dir or RESULTS) / f"{name}.json")
