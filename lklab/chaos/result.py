"""What one chaos check records (chaos/results/NAME.json): the fault, how many trials, and each
figure beside the bound it must meet. One definition, read by the CLI table and RELIABILITY.md."""
from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field


class Figure(BaseModel):
    """One measured figure and the bound it is held to."""

    name: str = Field(description="what was measured, e.g. 'acknowledged events lost'")
    value: float | int | str | None
    unit: str = ""
    bound: str = Field(description="what it must be, in words: '0', '= injected', '≤ 30 s'")
    ok: bool

    def shown(self) -> str:
        value = f"{self.value:.1f}" if isinstance(self.value, float) else str(self.value)
        return f"{value} {self.unit}".strip()


class CheckResult(BaseModel):
    check: str
    fault: str = Field(description="what was done to the system, one line")
    size: str
    seed: int
    trials: int = Field(description="how many times the fault was applied")
    started_at: datetime
    wall_s: float
    git_sha: str
    figures: list[Figure]
    promise: str = Field(description="what the most trusted systems promise for the same fault")
    scope: str = Field(description="what lklab guarantees here, and where that is narrower than the promise")
    evidence: dict[str, Any] = Field(default_factory=dict, description="per-trial detail")

    @property
    def passed(self) -> bool:
        return all(f.ok for f in self.figures)

    def figure(self, name: str) -> Figure:
        return next(f for f in self.figures if f.name == name)

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.model_dump_json(indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> CheckResult:
        return cls.model_validate_json(path.read_text())


def zero(name: str, value: int, unit: str = "") -> Figure:
    """A count that must be 0 (lost, double-counted, 5xx, mixed answers)."""
    return Figure(name=name, value=value, unit=unit, bound="0", ok=value == 0)


def at_most(name: str, value: float | None, limit: float, unit: str = "s") -> Figure:
    return Figure(name=name, value=value, unit=unit, bound=f"≤ {limit:g} {unit}".strip(), ok=value is not None and value <= limit)


def equal(name: str, value: Any, expected: Any, unit: str = "", bound: str | None = None) -> Figure:
    return Figure(name=name, value=value, unit=unit, bound=bound or f"= {expected}", ok=value == expected)


def holds(name: str, ok: bool, detail: str = "") -> Figure:
    """A yes/no property (the served views equal the oracle; no partial promotion was visible)."""
    return Figure(name=name, value=detail or ("yes" if ok else "no"), bound="yes", ok=ok)
