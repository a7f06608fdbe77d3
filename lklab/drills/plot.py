"""The shared drill timeline (drills/results/NAME.png): one panel per architecture on one time
axis, showing how wrong and how stale each reader's answers were while the fault ran, which
reads failed, and when the operator acted."""
from __future__ import annotations

import textwrap
from pathlib import Path

from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lklab.drills.result import ArchRun, DrillResult, Fault

ERROR_COLOR, STALE_COLOR, FAULT_COLOR, FAILED_COLOR, ACTION_COLOR = "tab:red", "tab:blue", "tab:orange", "black", "tab:green"
LABEL_CHARS = 28  # operator labels are written vertically inside the panel: keep them short


def timeline(result: DrillResult, path: Path) -> Path:
    # A bare Figure (not pyplot): no global backend, no GUI, safe in threads and under tests.
    rows = max(1, len(result.runs))
    figure = Figure(figsize=(10, max(3.5, 1 + 2.5 * rows)), dpi=100, layout="constrained")
    axes = figure.subplots(rows, 1, sharex=True, squeeze=False)[:, 0]
    end = _last_time(result)
    for ax, run in zip(axes, result.runs):
        _panel(ax, run, result.fault, end)
    if not result.runs:
        _note(axes[0], "no runs recorded")
    _legend(figure)
    axes[-1].set_xlabel("seconds since start")
    first_read = min((r.t for run in result.runs for r in run.reads), default=0.0)
    axes[-1].set_xlim(max(0.0, first_read - 5), end)  # from the readers' start: set-up before it is not drawn
    figure.suptitle(textwrap.fill(f"{result.drill}: {result.question}", 110), fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _legend(figure: Figure) -> None:
    """One legend below all panels (twin axes included), each entry once."""
    entries: dict[str, Artist] = {}
    for ax in figure.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    if entries:
        figure.legend(list(entries.values()), list(entries), loc="outside lower center", ncols=len(entries), fontsize=8)


def _last_time(result: DrillResult) -> float:
    """Where the time axis ends: the last read, action, signal or fault edge (the run's wall time if none)."""
    times = [e.t for run in result.runs for e in (*run.reads, *run.actions, *run.signals)]
    times += [t for t in (result.fault.start_s, result.fault.end_s) if t is not None]
    return max(times, default=0.0) or max(result.wall_s, 1.0)


def _panel(ax: Axes, run: ArchRun, fault: Fault, end: float) -> None:
    ax.set_title(run.label, loc="left", fontsize=9)
    _fault(ax, fault, end)
    _operator_actions(ax, run)
    if not run.reads:
        _note(ax, "no reads")
        return
    t = [r.t for r in run.reads]
    # Reads with no answer have no error or staleness: NaN breaks the line there instead of drawing zero.
    error = [float("nan") if r.error is None else r.error for r in run.reads]
    ax.step(t, error, where="post", color=ERROR_COLOR, label="error vs oracle")
    ax.set_ylabel("error (sum |Δ|)", color=ERROR_COLOR)
    ax.set_ylim(bottom=0)
    band = ax.get_xaxis_transform()  # x in seconds, y in 0..1 of the panel
    ax.fill_between(t, 0, 1, where=[r.stale for r in run.reads], step="post", transform=band,
                    color=STALE_COLOR, alpha=0.12, linewidth=0, label="flagged stale")
    failed = [r.t for r in run.reads if not r.answered]
    if failed:
        ax.scatter(failed, [0.97] * len(failed), marker="x", color=FAILED_COLOR, transform=band, clip_on=False,
                   label="failed read")
    right = ax.twinx()
    staleness = [float("nan") if r.staleness_s is None else r.staleness_s for r in run.reads]
    right.plot(t, staleness, color=STALE_COLOR, linewidth=1, label="staleness")
    right.set_ylabel("staleness (s)", color=STALE_COLOR)
    right.set_ylim(bottom=0)


def _fault(ax: Axes, fault: Fault, end: float) -> None:
    if fault.start_s is None:
        return
    label = f"fault: {fault.name}" + ("" if fault.end_s is not None else " (no end)")
    ax.axvspan(fault.start_s, end if fault.end_s is None else fault.end_s, color=FAULT_COLOR, alpha=0.15, label=label)


def _operator_actions(ax: Axes, run: ArchRun) -> None:
    for action in run.actions:
        if not action.step:
            continue
        ax.axvline(action.t, color=ACTION_COLOR, linestyle="--", linewidth=1, label="operator action")
        ax.text(action.t, 0.95, textwrap.shorten(action.what, LABEL_CHARS, placeholder="…"), rotation=90,
                va="top", ha="right", fontsize=7, color=ACTION_COLOR, transform=ax.get_xaxis_transform())


def _note(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_yticks([])
