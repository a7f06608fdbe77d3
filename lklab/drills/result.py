"""What one drill run records (drills/results/NAME.json): the fault and its interval, every
read both architectures' readers made, scored against the oracle, the actions taken, the
signals that fired, and the figures derived from them. One definition, read by the table,
the plot and the report."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

LAMBDA, KAPPA = "lambda", "kappa"


class Read(BaseModel):
    """One reader's read of one architecture through the HTTP API, scored against the oracle."""

    t: float = Field(description="seconds since the run started")
    status: int = Field(description="HTTP status; 0 when the API did not answer")
    stale: bool = Field(False, description="the answer said it was stale (or it was refused as stale)")
    staleness_s: float | None = Field(None, description="event-time seconds behind the log's newest event (None: no answer)")
    error: int | None = Field(None, description="sum of absolute differences from the oracle, over every window (None: no answer)")
    wrong_windows: int | None = None
    windows: int | None = Field(None, description="windows in the answer or the oracle")
    source: str | None = Field(None, description="what served it: lambda | batch-only | the Kappa version")
    logic: int | None = Field(None, description="the logic version whose oracle the answer is nearest, in a drill that scores "
                                                "several (None: not asked, or as near to another)")
    behind_s: float | None = Field(None, description="a wrong answer that equals the oracle whole at an earlier log position "
                                                     "(of the last 30 s): how long before the read that position was. A reader "
                                                     "behind, not one served a wrong or mixed state (None: correct, or no such position)")

    @property
    def answered(self) -> bool:
        return self.status == 200

    @property
    def correct(self) -> bool:
        return self.answered and self.error == 0

    @property
    def wrong_share(self) -> float | None:
        return None if self.wrong_windows is None or not self.windows else self.wrong_windows / self.windows


class Action(BaseModel):
    """Something done during the run: an operator step (counted), or the harness/system acting."""

    t: float
    what: str
    by: str = Field("operator", description="operator (a step a person would take) | harness | system")

    @property
    def step(self) -> bool:
        return self.by == "operator"


class Signal(BaseModel):
    """A detection signal that fired: lag, health, gate, ledger, diff, hydration, crash."""

    t: float
    name: str
    detail: str


class Figures(BaseModel):
    """The derived figures of one architecture in one run (None: not measured in this drill)."""

    reads: int = 0
    wrong_reader_s: float = 0.0
    stale_reader_s: float = 0.0
    failed_reader_s: float = Field(0.0, description="reader-seconds of errors returned (non-200)")
    max_error: int = 0
    detect_s: float | None = Field(None, description="from the fault's start to the first signal")
    detected_by: str | None = None
    recovery_s: float | None = Field(None, description="from the fault's end to the first fully correct read")
    events_reprocessed: int | None = None
    operator_steps: int = 0
    events_lost: int | None = None
    events_double_counted: int | None = None


class ArchRun(BaseModel):
    """One architecture (or variant) in one run."""

    arch: str = Field(description="lambda | kappa, or a variant name")
    label: str
    reads: list[Read] = Field(default_factory=list)
    actions: list[Action] = Field(default_factory=list)
    signals: list[Signal] = Field(default_factory=list)
    figures: Figures = Field(default_factory=Figures)
    evidence: dict[str, Any] = Field(default_factory=dict, description="drill-specific figures of this architecture")


class Fault(BaseModel):
    name: str
    description: str
    start_s: float | None = None
    end_s: float | None = None


class DrillResult(BaseModel):
    drill: str
    question: str = Field(description="the seed's question this drill answers")
    size: str
    seed: int
    started_at: datetime
    wall_s: float
    git_sha: str
    versions: dict[str, str]
    workload: dict[str, Any] = Field(default_factory=dict, description="what was streamed: events, span, rates, lateness profile")
    poll_interval_s: float = 0.25
    fault: Fault
    runs: list[ArchRun]
    evidence: dict[str, Any] = Field(default_factory=dict, description="drill-level figures (e.g. a sweep)")
    lessons: list[str] = Field(default_factory=list, description="what the run shows, one line each")

    def run(self, arch: str) -> ArchRun:
        return next(r for r in self.runs if r.arch == arch)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> DrillResult:
        return cls.model_validate_json(path.read_text())
