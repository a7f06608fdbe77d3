"""What the demo's runs print and return: a part of a view against the oracle, and the table of them."""
from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

from lklab.core import oracle


@dataclass(frozen=True)
class ViewComparison:
    """One row of the demo's tables: a part of a view against the oracle."""

    view: str
    part: str  # what was compared (lklab.scenarios.demo and side_by_side name the parts)
    label: str  # as printed in the table
    comparison: oracle.Comparison


def results_table(rows: list[ViewComparison], title: str = "lklab demo: views against the oracle") -> Table:
    table = Table(title=title)
    for column in ("view", "rows", "exact matches", "max abs error", "equal"):
        table.add_column(column, justify="right" if column in ("rows", "exact matches", "max abs error") else "left")
    for row in rows:
        c = row.comparison
        table.add_row(row.label, str(c.rows_actual), f"{c.exact_matches}/{c.rows_expected}", str(c.max_abs_error),
                      "[green]yes[/green]" if c.equal else "[red]NO[/red]")
    return table
