"""Gate severities, as Databricks DLT expectations have them: `fail` blocks promotion (and the
Kappa cutover), `warn` is recorded and shown but does not block, `drop` quarantines the offending
rows with a reason. Contracts fail; heuristics warn.

Every gate has a name (the Dagster asset check name; a part of a GX suite adds `.<part>`) and a
default severity below. `Settings.gate_severity` overrides any of them, e.g.
LKLAB_GATE_SEVERITY='{"gx_gold_revenue_per_minute.minute_coverage": "fail"}'.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from lklab.core.config import Settings


class Severity(str, Enum):
    FAIL = "fail"
    WARN = "warn"
    DROP = "drop"


MINUTE_COVERAGE = "gx_gold_revenue_per_minute.minute_coverage"
SILVER_QUARANTINE = "silver_events.quarantine"

# name -> (default severity, the severities that mean something for it)
GATES: dict[str, tuple[Severity, frozenset[Severity]]] = {
    "gx_bronze_events": (Severity.FAIL, frozenset({Severity.FAIL, Severity.WARN})),
    "gx_silver_events": (Severity.FAIL, frozenset({Severity.FAIL, Severity.WARN})),
    "gx_gold_revenue_per_minute": (Severity.FAIL, frozenset({Severity.FAIL, Severity.WARN})),
    MINUTE_COVERAGE: (Severity.WARN, frozenset({Severity.FAIL, Severity.WARN})),  # a city may have a minute without payments
    "gx_gold_daily_active_users": (Severity.FAIL, frozenset({Severity.FAIL, Severity.WARN})),
    "gx_gold_driver_earnings_daily": (Severity.FAIL, frozenset({Severity.FAIL, Severity.WARN})),
    "gx_gold_user_sessions": (Severity.FAIL, frozenset({Severity.FAIL, Severity.WARN})),
    "divergence_revenue_per_minute": (Severity.FAIL, frozenset({Severity.FAIL, Severity.WARN})),
    "divergence_daily_active_users": (Severity.FAIL, frozenset({Severity.FAIL, Severity.WARN})),
    "divergence_driver_earnings_daily": (Severity.FAIL, frozenset({Severity.FAIL, Severity.WARN})),
    "ledger_reconciliation": (Severity.FAIL, frozenset({Severity.FAIL, Severity.WARN})),
    # A batch logic that reads a field older schema versions lack needs the whole history readable.
    "history_readable": (Severity.FAIL, frozenset({Severity.FAIL, Severity.WARN})),
    # Events that break the schema never reach silver: they go to silver_rejects with a reason.
    SILVER_QUARANTINE: (Severity.DROP, frozenset({Severity.DROP})),
}


def check_overrides(overrides: dict[str, str]) -> dict[str, str]:
    """Validate `Settings.gate_severity`: known gate names, severities that mean something for them."""
    for name, value in overrides.items():
        if name not in GATES:
            raise ValueError(f"gate_severity: unknown gate {name!r}; one of: {', '.join(GATES)}")
        allowed = GATES[name][1]
        if value not in {s.value for s in allowed}:
            raise ValueError(f"gate_severity[{name!r}] = {value!r}: one of {', '.join(sorted(s.value for s in allowed))}")
    return overrides


def severity(overrides: dict[str, str], gate: str) -> Severity:
    """The severity of `gate`: the override if set, else its default (unknown gates fail)."""
    if gate in overrides:
        return Severity(overrides[gate])
    return GATES.get(gate, (Severity.FAIL, frozenset()))[0]


class SuiteOutcome(Protocol):
    """What a data-quality suite run reports (expectations.runner.GateResult is one)."""

    passed: bool
    failures: Sequence[str]
    warnings: Sequence[str]
    data_docs_page: str | None  # the validation's Data Docs page, relative to the site

    def summary(self) -> str: ...


class SuiteRunner(Protocol):
    """Runs a lake table's suite over a Spark frame (expectations.runner.run_suite). The core takes
    it as a parameter where it validates (the Kappa cutover), so it never imports GX itself."""

    def __call__(self, home: Path, table: str, df: Any, **suite_params: Any) -> SuiteOutcome: ...


@dataclass(frozen=True)
class GateLine:
    """One gate's outcome as every command prints it: `pass|warn|fail <gate>: <reason>`."""

    gate: str
    status: str  # pass | warn | fail
    reason: str

    def line(self) -> str:
        return f"{self.status:<4} {self.gate}: {self.reason}"


STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "red"}  # how every command colours a gate's status


def styled(status: str) -> str:
    """A gate status as rich markup: pass, warn or fail in its colour, padded to one width."""
    return f"[{STATUS_STYLE[status]}]{status:<4}[/]"


def status(passed: bool, level: Severity) -> str:
    """pass, or what a failure of this severity means (a drop gate that dropped rows warns)."""
    if passed:
        return "pass"
    return "fail" if level == Severity.FAIL else "warn"


def suite_severities(settings: Settings, table: str) -> dict[str, Severity]:
    """run_suite's severity parameters for a lake table's GX gate (`gx_<table>`), from Settings."""
    levels = {"severity": severity(settings.gate_severity, f"gx_{table}")}
    if table == "gold_revenue_per_minute":
        levels["coverage_severity"] = severity(settings.gate_severity, MINUTE_COVERAGE)
    return levels


DATA_DOCS_SITE = "local_site"


def gx_root(home: Path) -> Path:
    """Where the GX project (config, suites, results, Data Docs) of a lklab home lives."""
    return Path(home) / "gx"


def data_docs_site(home: Path) -> Path:
    """The local GX Data Docs site of a lklab home (its index.html, validations/, expectations/):
    written by expectations.runner, served by the API at /quality/."""
    return gx_root(home) / "uncommitted" / "data_docs" / DATA_DOCS_SITE


def quality_url(settings: Settings, page: str) -> str:
    """Where the lab's API (`lklab up`, `lklab serve --port <api_port>`) serves a Data Docs page."""
    return f"http://127.0.0.1:{settings.api_port}/quality/{page}"
