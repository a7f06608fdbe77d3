"""Reading gate outcomes back from the Dagster instance (for the failure sensor and the CLI)."""
from dataclasses import dataclass

from dagster import DagsterEventType, DagsterInstance


@dataclass(frozen=True)
class GateOutcome:
    gate: str  # <asset>.<check>
    passed: bool
    description: str
    first_problem: str  # the first failure/difference line, or ""

    def line(self) -> str:
        return f"{self.gate}: {self.description}" + (f" | {self.first_problem}" if self.first_problem else "")


def gate_outcomes(instance: DagsterInstance, run_id: str) -> list[GateOutcome]:
    """Every asset check evaluated in the run, in order."""
    outcomes = []
    for record in instance.get_records_for_run(run_id=run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION).records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        problems = evaluation.metadata.get("failures") or evaluation.metadata.get("differences")
        first = problems.value.splitlines()[0].lstrip("- ") if problems is not None and problems.value not in ("", "none") else ""
        outcomes.append(GateOutcome(f"{evaluation.asset_key.to_user_string()}.{evaluation.check_name}",
                                    evaluation.passed, evaluation.description or "", first))
    return outcomes


def failed_gates(instance: DagsterInstance, run_id: str) -> list[str]:
    """One line per failed asset check in the run."""
    return [g.line() for g in gate_outcomes(instance, run_id) if not g.passed]
