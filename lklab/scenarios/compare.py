"""`lklab compare sessionization`: the seed's backfill scenario played both ways on the same
history. A sessionization bug (v1 splits sessions at midnight UTC) shipped; the fix (v2) is
applied as a Lambda batch backfill of every daily partition and as a Kappa replay + cutover.
Both are timed, checked against the oracle, and watched by a reader polling the served answer."""
from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from rich.console import Console
from rich.table import Table

from expectations.runner import run_suite
from lklab.kappa import cutover as co
from lklab.kappa.query import query as kappa_query
from lklab.log import kafka_io
from lklab.log import broker as kafka_runtime
from lklab import kappa
from lklab.lambda_arch import merge
from lklab.core import oracle
from orchestration.launch import run_batch
from lklab.scenarios.demo import demo_settings
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import produce_events
from lklab.serving.store import make_engine


@dataclass
class ReaderLog:
    """What a reader polling the served answer saw while a fix was applied."""

    polls: int = 0
    seen: list[str] = field(default_factory=list)  # old / new / other / empty, in order, deduplicated runs

    def note(self, what: str) -> None:
        self.polls += 1
        if not self.seen or self.seen[-1] != what:
            self.seen.append(what)

    def describe(self) -> str:
        bad = [s for s in self.seen if s in ("other", "empty")]
        return f"{' → '.join(self.seen)} over {self.polls} reads; {'never a mix or an empty answer' if not bad else 'SAW ' + ', '.join(bad)}"


@dataclass
class PathResult:
    name: str
    wall_s: float
    events: int
    steps: list[str]
    comparison: oracle.Comparison | None
    reader: ReaderLog


def _watch(read: Callable[[], dict], old: dict, new: dict, log: ReaderLog, stop: threading.Event) -> threading.Thread:
    def loop() -> None:
        while not stop.is_set():
            got = read()
            log.note("empty" if not got else "old (v1)" if got == old else "new (v2)" if got == new else "other")
            time.sleep(0.02)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def _count_compare(actual: dict, expected: dict) -> oracle.Comparison:
    # oracle.compare works on numbers: compare session counts and durations as one exact key space
    flat = lambda m: {(*k, part): v[i] for k, v in m.items() for i, part in enumerate(("sessions", "ms"))}  # noqa: E731
    return oracle.compare(flat(actual), flat(expected))


def run_sessionization(days: int = 30, seed: int = 7, console: Console | None = None) -> int:
    console = console or Console()
    base = demo_settings()
    settings = base.model_copy(update={"home": base.home.parent / "compare", "user_sessions_logic": 1,
                                       "topic_segment_bytes": None})  # no retention drill here: full-size batches
    shutil.rmtree(settings.home, ignore_errors=True)
    settings.home.mkdir(parents=True)
    engine = make_engine(settings)
    say = lambda text: console.print(f"[bold cyan]▶[/bold cyan] {text}")  # noqa: E731
    with ExitStack() as cleanup:
        kafka_runtime.start(settings)
        cleanup.callback(kafka_runtime.stop, settings)
        kafka_io.run(kafka_io.ensure_topics(settings))
        start = datetime(2026, 10, 18, tzinfo=timezone.utc)
        workload = generate(GeneratorConfig(seed=seed, duration_s=days * 86_400, rides_per_minute=1, users=200, start=start))
        truth = oracle.user_sessions(workload.truth)
        say(f"{days} days of history: {len(workload.deliveries)} deliveries, {len(truth)} (rider, day) rows in the oracle")
        produce_events(settings, workload.deliveries)

        say("production before the fix: Lambda batch and Kappa v1 both serve the buggy v1 logic")
        assert run_batch(settings).success, "the v1 batch build failed"
        kappa.replay(settings, engine, "user_sessions", 1)
        co.cutover(settings, engine, "user_sessions", 1, "v1 in production", run_suite=run_suite)
        old_lambda = {(r.entity, r.window_start): r.value for r in merge.query(engine, "user_sessions").rows}
        old_kappa = {(u, d): v for u, d, v in kappa_query(engine, "user_sessions").rows}

        last_day = (start + timedelta(days=days - 1)).date().isoformat()
        results = []

        log, stop = ReaderLog(), threading.Event()
        reader = _watch(lambda: {(r.entity, r.window_start): r.value for r in merge.query(engine, "user_sessions").rows}, old_lambda, truth, log, stop)
        clock = time.monotonic()
        fixed = settings.model_copy(update={"user_sessions_logic": 2})
        outcome = run_batch(fixed, (start.date().isoformat(), last_day))
        wall = time.monotonic() - clock
        time.sleep(0.5)  # let the reader see what is served after the change
        stop.set()
        reader.join()
        served = {(r.entity, r.window_start): r.value for r in merge.query(engine, "user_sessions").rows}
        results.append(PathResult(
            "Lambda: deploy v2, backfill daily partitions", wall, len(workload.deliveries),
            [f"{len(outcome.run_ids)} Dagster runs (ingest, lambda_batch over {days} partitions in one run)",
             f"{len(outcome.gates)} blocking gates", "atomic promotion of the new build"],
            _count_compare(served, truth) if outcome.success else None, log))

        log, stop = ReaderLog(), threading.Event()
        reader = _watch(lambda: {(u, d): v for u, d, v in kappa_query(engine, "user_sessions").rows}, old_kappa, truth, log, stop)
        clock = time.monotonic()
        replayed = kappa.replay(settings, engine, "user_sessions", 2)
        swap = co.cutover(settings, engine, "user_sessions", 2, "fix the midnight split", tolerance_pct=100.0, run_suite=run_suite)
        wall = time.monotonic() - clock
        time.sleep(0.5)  # let the reader see what is served after the change
        stop.set()
        reader.join()
        served = {(u, d): v for u, d, v in kappa_query(engine, "user_sessions").rows}
        results.append(PathResult(
            "Kappa: replay v2 from earliest, cut over", wall, replayed.events,
            [f"replay into user_sessions__v2 ({replayed.events_per_s:,.0f} ev/s)",
             f"{len(swap.checks)} validation checks ({', '.join(c.name for c in swap.checks)})", "atomic alias swap"],
            _count_compare(served, truth) if swap.swapped else None, log))

    table = Table(title=f"sessionization fix on {days} days of history, both ways")
    table.add_column("")
    for r in results:
        table.add_column(r.name)
    table.add_row("wall time", *(f"{r.wall_s:.1f} s" for r in results))
    table.add_row("events processed", *(f"{r.events:,}" for r in results))
    table.add_row("steps", *("\n".join(r.steps) for r in results))
    table.add_row("correct vs oracle", *("[green]exact[/green]" if r.comparison and r.comparison.equal
                                         else f"[red]{r.comparison or 'not published'}[/red]" for r in results))
    table.add_row("what readers saw", *(r.reader.describe() for r in results))
    console.print(table)
    return 0 if all(r.comparison and r.comparison.equal for r in results) else 1
