"""The drills, each defined once: its name, the seed question it answers, how it runs and how
its result is plotted. `lklab drill list|run|report` and `make drills` read this registry."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rich.console import Console

from lklab.core.config import Settings
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

    def say(self, text: str) -> None:
        self.console.print(f"[bold cyan]▶[/bold cyan] [{self.name}] {text}", highlight=False)


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


def drill(name: str) -> Drill:
    from lklab.drills import catalog  # noqa: F401 - registers every drill

    try:
        return DRILLS[name]
    except KeyError:
        raise DrillError(f"unknown drill {name!r}; one of: {', '.join(DRILLS)}") from None


def all_drills() -> list[Drill]:
    from lklab.drills import catalog  # noqa: F401 - registers every drill

    return list(DRILLS.values())
