"""The demo's live part: Lambda and Kappa consume the same events as they arrive, and readers of
both are checked against the oracle with each one's freshness; then one blue/green cutover of a
live Kappa view (user_sessions v1, the midnight bug, to v2, the fix) while a reader polls."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from expectations.runner import run_suite
from lklab import kappa, views
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.kappa import cutover as co
from lklab.kappa import hydration, jobs
from lklab.kappa.query import query as kappa_query
from lklab.kappa.query import serve as kappa_serve
from lklab.lambda_arch import merge
from lklab.scenarios.report import ViewComparison, results_table

LAMBDA_READERS = "lambda readers"  # what a Lambda reader gets (the merge), per view
KAPPA_READERS = "kappa readers"  # what a Kappa reader gets (the published version), per view
BLUE_GREEN_VIEW = "user_sessions"  # v1 ships the seed's midnight bug, v2 the fix: a real logic change


def start_jobs(settings: Settings) -> list[tuple[str, int]]:
    """Start v1 of every Kappa view live, before any event arrives, so they consume as Lambda does."""
    started = []
    for view in kappa.KAPPA_VIEWS:
        jobs.start(settings, view, 1)
        started.append((view, 1))
    return started


def stop_jobs(settings: Settings) -> None:
    for job in jobs.status(settings):
        if job.running:
            jobs.stop(settings, job.view, job.version)


def wait_caught_up(settings: Settings, timeout_s: float = 300.0) -> None:
    """Until every running Kappa job has consumed the log to its end."""
    deadline = time.monotonic() + timeout_s
    while (behind := [j for j in jobs.status(settings) if j.running and j.lag != 0]):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Kappa jobs not caught up after {timeout_s:.0f}s: " + ", ".join(f"{j.output} lag {j.lag}" for j in behind))
        time.sleep(0.2)


@dataclass
class BlueGreen:
    reads: int = 0
    versions: list[str] = field(default_factory=list)  # versions read, consecutive repeats collapsed
    bad: int = 0  # answers with no version or no rows
    swapped: bool = False
    summaries: list[str] = field(default_factory=list)


def _comparisons(settings: Settings, engine, truth: list) -> list[ViewComparison]:
    """Each view as a Lambda reader and as a Kappa reader gets it (the readers' path, reader
    policy included), against the oracle."""
    found = []
    for view in views.VIEWS:
        expected = oracle.for_view(view, truth)
        answer, served = merge.serve(engine, settings, view), kappa_serve(settings, engine, view)
        found += [ViewComparison(view, LAMBDA_READERS, f"{view} (Lambda: {answer.mode})",
                                 oracle.compare({(r.entity, r.window_start): r.value for r in answer.rows}, expected)),
                  ViewComparison(view, KAPPA_READERS, f"{view} (Kappa: {served.target})",
                                 oracle.compare({(e, w): v for e, w, v in served.rows}, expected))]
    return found


def freshness_table(settings: Settings, engine) -> Table:
    """Each architecture's freshness, per view, as its readers' answers carry it."""
    health = merge.current_speed_health(engine, settings)
    table = Table(title="freshness: what readers of each architecture are served from")
    for column in ("view", "Lambda", "Kappa"):
        table.add_column(column)
    for view in views.VIEWS:
        answer, served = merge.serve(engine, settings, view), kappa_serve(settings, engine, view)
        speed = (f", speed lag {health.lag}, heartbeat {health.heartbeat_age_s:.1f}s ago"
                 if views.view(view).measure.speed_layer and health.heartbeat_age_s is not None else " (batch only)")
        lam = f"T {answer.T:%Y-%m-%d %H:%M}{speed}" if answer.T else "no batch build"
        f = served.freshness
        kap = (f"{served.target}: lag {f.lag}, watermark {f.watermark:%Y-%m-%d %H:%M:%S}, heartbeat {f.heartbeat_age_s:.1f}s ago"
               if f.watermark and f.heartbeat_age_s is not None else f"{served.target}")
        table.add_row(view, lam + (f" [yellow]stale: {answer.stale_reason}[/yellow]" if answer.stale else ""),
                      kap + (f" [yellow]stale: {f.stale_reason}[/yellow]" if f.stale else ""))
    return table


def blue_green(settings: Settings, engine, spark, step: Callable[[str], None]) -> BlueGreen:
    """user_sessions v1 → v2 while a reader polls the published view: start v2's job from the
    earliest offset, wait until it is hydrated, cut over with every check."""
    found, stop = BlueGreen(), threading.Event()

    def reader() -> None:
        while not stop.is_set():
            answer = kappa_query(engine, BLUE_GREEN_VIEW)
            found.reads += 1
            found.bad += answer.target is None or not answer.rows
            if not found.versions or found.versions[-1] != answer.target:
                found.versions.append(answer.target)
            time.sleep(0.01)

    polling = threading.Thread(target=reader, daemon=True)
    polling.start()
    try:
        jobs.start(settings, BLUE_GREEN_VIEW, 2)
        step(hydration.wait_until_hydrated(settings, engine, BLUE_GREEN_VIEW, 2, timeout_s=300).summary)
        result = co.cutover(settings, engine, BLUE_GREEN_VIEW, 2, "demo: blue/green, the midnight fix", spark=spark,
                            tolerance_pct=100, run_suite=run_suite)
        found.swapped, found.summaries = result.swapped, [f"{c.status} {c.name}: {c.summary}" for c in result.checks]
        time.sleep(0.3)  # the reader reads the new version too
    finally:
        stop.set()
        polling.join(timeout=10)
    return found


def run_side_by_side(settings: Settings, engine, spark, truth: list, console: Console,
                     step: Callable[[str], None]) -> tuple[bool, list[ViewComparison]]:
    """Publish v1 of every Kappa view, print both architectures' answers against the oracle and
    their freshness, then the blue/green cutover; returns whether both end equal to the oracle
    (a job that does not catch up or hydrate, or a refused cutover, is one red line and False)."""
    try:
        return _side_by_side(settings, engine, spark, truth, console, step)
    except (TimeoutError, jobs.JobError, co.CutoverError) as exc:
        console.print(f"[red]{exc}[/red]", highlight=False)
        return False, []


def _side_by_side(settings: Settings, engine, spark, truth: list, console: Console,
                  step: Callable[[str], None]) -> tuple[bool, list[ViewComparison]]:
    wait_caught_up(settings)
    for view in kappa.KAPPA_VIEWS:
        co.cutover(settings, engine, view, 1, "demo: first publication", spark=spark, tolerance_pct=100, run_suite=run_suite)
    step("Kappa: v1 of every view published (hydrated, GX suite, ledger); Lambda: the merge at T")
    before = _comparisons(settings, engine, truth)
    console.print(results_table(before, "Lambda and Kappa readers against the oracle (live jobs, same events)"))
    console.print(freshness_table(settings, engine))
    step(f"blue/green: {BLUE_GREEN_VIEW} v1 (the midnight bug) → v2 (the fix) while a reader polls the published view")
    switch = blue_green(settings, engine, spark, step)
    for line in switch.summaries:
        console.print(f"  {line}", highlight=False, soft_wrap=True)
    step(f"reader: {switch.reads} reads, versions seen in order {' → '.join(switch.versions)}, {switch.bad} empty or without a version")
    after = [c for c in _comparisons(settings, engine, truth) if c.view == BLUE_GREEN_VIEW and c.part == KAPPA_READERS]
    console.print(results_table(after, f"{BLUE_GREEN_VIEW} after the cutover"))
    final = [c for c in before if not (c.view == BLUE_GREEN_VIEW and c.part == KAPPA_READERS)] + after
    ok = switch.swapped and switch.bad == 0 and all(c.comparison.equal for c in final)
    return ok, final
