"""The drills, each defined once: its name, the seed question it answers, how it runs and how
its result is plotted. `lklab drill list|run|report` and `make drills` read this registry."""
from __future__ import annotations

import platform
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rich.console import Console
from rich.markup import escape

from lklab.core.config import Settings
from lklab.core.provenance import git_sha
from lklab.drills.result import DrillResult

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Size = Literal["small", "default"]
SIZES: tuple[Size, ...] = ("small", "default")


class DrillError(RuntimeError):
    """A drill that could not run to the end (one line: what failed and where)."""


@dataclass
class DrillContext:
    """What a drill runs on: settings whose broker is up (its own topics, store, lake and ports),
    the run's size and seed, a Spark session for the batch layer, and where to say what it does."""

    name: str
    settings: Settings
    size: Size = "small"
    seed: int = 7
    spark: SparkSession | None = None
    console: Console = field(default_factory=Console)
    began: float = field(default_factory=time.monotonic)

    def say(self, text: str) -> None:
        """One progress line, with the seconds since the drill began (where a run spends its time)."""
        elapsed = time.monotonic() - self.began
        self.console.print(f"[bold cyan]▶[/bold cyan] {escape(f'[{self.name} {elapsed:5.0f}s] {text}')}", highlight=False)

    def versions(self) -> dict[str, str]:
        """What produced a result: lklab's commit, the broker (the embedded jar's version), Python
        and the engines' packages."""
        jars = sorted((self.settings.jars_dir / "kafka").glob("kafka_2.13-*.jar"))
        kafka = (f"external ({self.settings.bootstrap_servers})" if self.settings.bootstrap_servers
                 else jars[-1].stem.removeprefix("kafka_2.13-") if jars else "unknown")
        found = {"lklab": git_sha(), "kafka": kafka, "python": platform.python_version()}
        for package in ("pyspark", "delta-spark", "faust-streaming", "aiokafka", "dagster", "great-expectations"):
            try:
                found[package] = version(package)
            except PackageNotFoundError:
                pass
        return found


@dataclass(frozen=True)
class Drill:
    name: str
    question: str  # the seed's question it answers
    summary: str  # what it does, one line
    run: Callable[[DrillContext], DrillResult]
    plot: Callable[[DrillResult, Path], Path] | None = None  # None: the shared timeline plot (lklab.drills.plot)


DRILLS: dict[str, Drill] = {}


def register(drill: Drill) -> Drill:
    DRILLS[drill.name] = drill
    return drill
