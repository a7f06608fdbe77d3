"""The chaos checks, each defined once: its name, the fault, what trusted systems promise for it,
and how it runs. `lklab chaos list|run|report` and `make chaos` read this registry."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from rich.console import Console
from rich.markup import escape

from lklab.chaos.result import CheckResult, Figure
from lklab.core.config import Settings
from lklab.core.provenance import git_sha

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

Size = Literal["small", "full"]
SIZES: tuple[Size, ...] = ("small", "full")


class ChaosError(RuntimeError):
    """A check that could not run to the end (one line: what failed and where)."""


@dataclass
class ChaosContext:
    """What a check runs on: settings whose broker is up (its own topics, store, lake and ports;
    a check that needs more, e.g. a 3-broker cluster, starts it itself under settings.home), the
    size (small: `make test`; full: `make chaos`), the seed, the process's Spark session, and
    where to say what it does."""

    name: str
    settings: Settings
    size: Size = "small"
    seed: int = 7
    spark: SparkSession | None = None
    console: Console = field(default_factory=Console)
    began: float = field(default_factory=time.monotonic)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.began
        self.console.print(f"[bold magenta]⚡[/bold magenta] {escape(f'[{self.name} {elapsed:5.0f}s] {text}')}", highlight=False)

    def result(self, *, fault: str, trials: int, figures: list[Figure], evidence: dict | None = None) -> CheckResult:
        check = CHECKS[self.name]
        return CheckResult(check=self.name, fault=fault, size=self.size, seed=self.seed, trials=trials,
                           started_at=self.started_at, wall_s=round(time.monotonic() - self.began, 1), git_sha=git_sha(),
                           figures=figures, promise=check.promise, scope=check.scope, evidence=evidence or {})


@dataclass(frozen=True)
class Check:
    name: str
    title: str  # the claim under test, one line
    promise: str  # what the most trusted systems promise for the same fault (Kafka, Flink, Delta)
    scope: str  # lklab's guarantee for it, and where it is narrower
    run: Callable[[ChaosContext], CheckResult]


CHECKS: dict[str, Check] = {}


def register(check: Check) -> Check:
    CHECKS[check.name] = check
    return check
