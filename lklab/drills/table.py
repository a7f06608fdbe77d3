"""A drill's figures side by side, one column per architecture: the rows are defined once here
and printed by `lklab drill run` (rich) and written by the report (markdown)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from lklab.drills.result import DrillResult, Figures

NONE = "—"  # not measured in this drill


def seconds(value: float | None) -> str:
    return NONE if value is None else f"{value:,.1f} s"


def human(value: Any) -> str:
    """A figure for people: thousands separated, floats to two decimals, None as a dash."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


def detection(f: Figures) -> str:
    if f.detect_s is None:
        return NONE
    return seconds(f.detect_s) + (f" by {f.detected_by}" if f.detected_by else "")


FIGURE_ROWS: list[tuple[str, Callable[[Figures], str]]] = [
    ("reads", lambda f: human(f.reads)),
    ("wrong reader-seconds", lambda f: seconds(f.wrong_reader_s)),
    ("stale reader-seconds", lambda f: seconds(f.stale_reader_s)),
    ("failed reader-seconds", lambda f: seconds(f.failed_reader_s)),
    ("max error", lambda f: human(f.max_error)),
    ("detected", detection),
    ("recovery", lambda f: seconds(f.recovery_s)),
    ("events reprocessed", lambda f: human(f.events_reprocessed)),
    ("operator steps", lambda f: human(f.operator_steps)),
    ("events lost", lambda f: human(f.events_lost)),
    ("events double-counted", lambda f: human(f.events_double_counted)),
]


def evidence_keys(result: DrillResult) -> list[str]:
    """Every run's evidence keys, in the order they first appear."""
    return list(dict.fromkeys(key for run in result.runs for key in run.evidence))


def figure_rows(result: DrillResult) -> list[list[str]]:
    """[label, value per run…] for every figure, then every evidence key (a dash where a run has none)."""
    rows = [[label, *(show(run.figures) for run in result.runs)] for label, show in FIGURE_ROWS]
    rows += [[key, *(human(run.evidence.get(key)) for run in result.runs)] for key in evidence_keys(result)]
    return rows


def figures_table(result: DrillResult) -> Table:
    table = Table("", *(run.label for run in result.runs), title=f"drill {result.drill}: {result.fault.name}")
    for column in table.columns[1:]:
        column.justify = "right"
    rows = figure_rows(result)
    for index, row in enumerate(rows):
        table.add_row(*row, end_section=index == len(FIGURE_ROWS) - 1 and len(rows) > len(FIGURE_ROWS))
    return table


def print_result(result: DrillResult, console: Console) -> None:
    console.print(figures_table(result))
    for key, value in result.evidence.items():
        console.print(f"{key}: {human(value)}", highlight=False)
    if result.lessons:
        console.print("[bold]lessons[/bold]")
    for lesson in result.lessons:
        console.print(f"  • {lesson}", highlight=False)
