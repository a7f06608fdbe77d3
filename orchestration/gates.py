"""Reading gate outcomes back from the Dagster instance (for the failure sensor and the CLI)."""
from dataclasses import dataclass

from dagster import AssetCheckSeverity, DagsterEventType, DagsterInstance

from lklab.core.gates import GateLine, Severity
from lklab.core.gates import status as gate_status


@dataclass(frozen=True)
class GateOutcome:
    gate: str  # <asset>.<check>
    passed: bool
    description: str
    first_problem: str  # the first failure/warning/difference line, or ""
    status: str = "pass"  # pass | warn (failed at WARN severity: did not block) | fail

    def line(self) -> str:
        """`<status> <gate>: <reason>`, one line: the summary and the first problem behind it."""
        extra = f" | {self.first_problem}" if self.first_problem and self.first_problem not in self.description else ""
        return GateLine(self.gate, self.status, f"{self.description}{extra}").line()


def _first(metadata, *keys: str) -> str:
    for key in keys:
        value = metadata.get(key)
        if value is not None and value.value not in ("", "none"):
            return value.value.splitlines()[0].lstrip("- ")
    return ""


def gate_outcomes(instance: DagsterInstance, run_id: str) -> list[GateOutcome]:
    """Every asset check evaluated in the run, in order."""
    outcomes = []
    for record in instance.get_records_for_run(run_id=run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        level = Severity.WARN if evaluation.severity == AssetCheckSeverity.WARN else Severity.FAIL
        status = gate_status(evaluation.passed, level)
        outcomes.append(GateOutcome(f"{evaluation.asset_key.to_user_string()}.{evaluation.check_name}", evaluation.passed,
                                    evaluation.description or "", _first(evaluation.metadata, "failures", "differences", "warnings"),
                                    status))
    return outcomes


def failed_gates(instance: DagsterInstance, run_id: str) -> list[str]:
    """One line per fail-severity asset check that failed in the run (warnings do not block)."""
    return [g.line() for g in gate_outcomes(instance, run_id) if g.status == "fail"]
