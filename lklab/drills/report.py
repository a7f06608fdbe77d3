"""drills/REPORT.md: every drill result in drills/results, summed up in one table and then one
section each (question, fault, figures, lessons, timeline, and what it ran on)."""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import ValidationError

from lklab.drills.catalog import all_drills
from lklab.drills.result import DrillResult, Fault
from lklab.drills.table import detection, figure_rows, human, seconds

HEADER = """# Drills

A drill applies one named fault to both architectures, Lambda and Kappa, fed by the same live
stream. Readers poll each architecture through the HTTP API the whole time, and every read is
scored against the oracle (the generator knows the true answer). The figures count the
reader-seconds spent on wrong, stale or failed answers, how long the fault took to detect and to
recover from, what was reprocessed, and how many steps an operator took.

Written by `lklab drill report` (`make drills` runs every drill at default size, then writes this).
"""


def markdown_table(header: list[str], rows: list[list[str]], text_columns: int = 1) -> str:
    """A GitHub markdown table: the first text_columns left-aligned (names), the rest right-aligned (figures)."""
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"

    rule = "|" + "---|" * text_columns + "---:|" * (len(header) - text_columns)
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def load_results(results_dir: Path) -> list[tuple[DrillResult, Path]]:
    """Every result under results_dir with its JSON path: registered drills in registry order, then the others by name."""
    loaded = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            loaded.append((DrillResult.load(path), path))
        except ValidationError as exc:
            raise ValueError(f"{path} is not a drill result ({exc.error_count()} errors, first: {exc.errors()[0]['msg']})") from None
    order = {d.name: index for index, d in enumerate(all_drills())}
    return sorted(loaded, key=lambda item: (order.get(item[0].drill, len(order)), item[0].drill))


def write_report(results_dir: Path, out: Path) -> Path:
    results = load_results(results_dir)
    parts = [HEADER.strip(), _summary(results)]
    parts += [_section(result, json_path, out.parent) for result, json_path in results]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(parts).rstrip() + "\n")
    return out


def _summary(results: list[tuple[DrillResult, Path]]) -> str:
    if not results:
        return "No drill results yet: run `make drills` or `lklab drill run NAME`."
    header = ["drill", "architecture", "wrong reader-s", "stale reader-s", "max error", "detected", "recovery", "operator steps"]
    rows = [[f"[{result.drill}](#{result.drill})", run.label, seconds(run.figures.wrong_reader_s),
             seconds(run.figures.stale_reader_s), human(run.figures.max_error), detection(run.figures),
             seconds(run.figures.recovery_s), human(run.figures.operator_steps)]
            for result, _ in results for run in result.runs]
    return "## Summary\n\n" + markdown_table(header, rows, text_columns=2)


def _fault_line(fault: Fault) -> str:
    start = "?" if fault.start_s is None else f"{fault.start_s:.1f} s"
    end = "no end" if fault.end_s is None else f"{fault.end_s:.1f} s"
    return f"**Fault.** {fault.name}: {fault.description} (from {start} to {end})"


def _section(result: DrillResult, json_path: Path, report_dir: Path) -> str:
    lines = [f"## {result.drill}", "", f"**Question.** {result.question}", "", _fault_line(result.fault), "",
             markdown_table(["", *(run.label for run in result.runs)], figure_rows(result))]
    if result.evidence:
        lines += ["", *(f"- {key}: {human(value)}" for key, value in result.evidence.items())]
    if result.lessons:
        lines += ["", "**Lessons.**", "", *(f"- {lesson}" for lesson in result.lessons)]
    png = json_path.with_suffix(".png")
    link = Path(os.path.relpath(png, report_dir)).as_posix()
    lines += ["", f"![{result.drill} timeline]({link})" if png.exists() else f"(no timeline: {link} is missing)"]
    versions = ", ".join(f"{name} {version}" for name, version in result.versions.items())
    lines += ["", f"Size {result.size}, seed {result.seed}, git {result.git_sha[:12]}, "
                  f"started {result.started_at.isoformat(timespec='seconds')}, {result.wall_s:.0f} s wall; {versions}."]
    return "\n".join(lines)
