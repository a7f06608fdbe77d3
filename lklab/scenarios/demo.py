"""The main job: Lambda and Kappa live side by side on the same generated events, checked against
the oracle: the Faust speed layer and a live Kappa job per view consume the events as they
arrive, Dagster runs the batch with its gates, both architectures' readers are compared with the
oracle with their freshness, one blue/green cutover runs under a polling reader, and the hybrid
path (retention, bronze, snapshots, audit) follows.

It starts its own broker on free loopback ports under .lklab/demo, so it never touches a
broker or data you run yourself, and it stops everything it started.
"""
from __future__ import annotations

import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from rich.console import Console
from rich.table import Table

from expectations.runner import run_suite
from lklab.log import kafka_io
from lklab.log import broker as kafka_runtime
from lklab.lambda_arch import merge
from lklab.core import oracle
from lklab.lambda_arch import speed
from lklab import views
from expectations.runner import data_docs_index
from orchestration.launch import run_batch
from lklab.core.config import Settings
from lklab.core.processes import free_port
from lklab.core.gates import styled
from lklab.log.generator import GeneratorConfig, bad_lines, generate, write_jsonl, write_ledger
from lklab.log.produce import produce_file
from lklab.serving.store import make_engine
from lklab.scenarios import side_by_side
from lklab.scenarios.report import ViewComparison, results_table


# The parts of a view the demo checks against the oracle (ViewComparison.part).
MERGE = "merge"  # the Lambda merge: what readers get
BATCH_ROWS = "batch rows"  # its batch rows: windows final at T
SPEED_ROWS = "speed rows"  # its speed rows: windows after T
SNAPSHOT_REPLAY = "hybrid replay from snapshot"  # Kappa replay seeded from a Delta snapshot, then the log
FULL_REPLAY = "hybrid full replay"  # Kappa replay of the whole log, across bronze and Kafka


@dataclass
class DemoResult:
    """What a demo run found: every comparison with the oracle, and the exit code (0 only when
    every merged view, and the hybrid replays when they ran, equal the oracle)."""

    exit_code: int
    message: str  # the outcome, in one line
    comparisons: list[ViewComparison] = field(default_factory=list)
    T: datetime | None = None  # the batch build's final-through time
    build_id: str | None = None
    hybrid_ran: bool = False

    def part(self, part: str) -> list[ViewComparison]:
        return [c for c in self.comparisons if c.part == part]


DEMO_START = datetime(2026, 11, 17, 23, 55, tzinfo=timezone.utc)  # across midnight: user_sessions v1's bug shows
DEMO_SEGMENT_BYTES = 64 * 1024  # small segments, so a short retention deletes some of them
DEMO_RETENTION_BYTES = 64 * 1024  # per partition: Kafka keeps 64-128 KB (the newest 150-300 records) of each


def demo_settings() -> Settings:
    home = Path.cwd() / ".lklab" / "demo"
    return Settings(home=home, kafka_port=free_port(), kafka_controller_port=free_port(), speed_web_port=free_port(),
                    topic_segment_bytes=DEMO_SEGMENT_BYTES)


def _write_input(settings: Settings, workload) -> tuple[Path, int]:
    """The user's path: a JSONL file, with a few bad lines mixed in to exercise the dead-letter topic."""
    path = settings.home / "events.jsonl"
    write_jsonl(workload.deliveries, path, workload.config.local_offsets, workload.riders)
    bad = [line for line, _ in bad_lines()]
    lines = path.read_text().splitlines()
    step = max(1, len(lines) // (len(bad) + 1))
    for i, line in enumerate(bad, start=1):
        lines.insert(i * step + i - 1, line)
    path.write_text("\n".join(lines) + "\n")
    return path, len(bad)


def _gates_table(gates: list) -> Table:
    table = Table(title="blocking quality gates (Dagster asset checks)")
    table.add_column("gate")
    table.add_column("result")
    table.add_column("summary")
    for g in gates:
        table.add_row(g.gate, styled(g.status), g.description)
    return table


def run_demo(minutes: int = 10, seed: int = 7, console: Console | None = None, settings: Settings | None = None) -> DemoResult:
    """Run the demo; returns what it found, with the exit code (0 only when every merged view,
    and the hybrid replays, equal the oracle).
    With `settings`, it uses that (running) broker and home instead of starting its own. The
    hybrid part runs when the topic has small segments (settings.topic_segment_bytes), which
    is what lets a short retention delete some of them."""
    console = console or Console()
    own_broker = settings is None
    settings = settings or demo_settings()
    if own_broker:
        shutil.rmtree(settings.home, ignore_errors=True)
    settings.home.mkdir(parents=True, exist_ok=True)
    clock = time.monotonic()
    step = lambda text: console.print(f"[bold cyan]▶[/bold cyan] {text}  [dim]({time.monotonic() - clock:.0f}s)[/dim]")  # noqa: E731
    with ExitStack() as cleanup:
        if own_broker:
            step(f"starting Kafka (KRaft) on {settings.bootstrap}, data under {settings.home}")
            kafka_runtime.start(settings)
            cleanup.callback(kafka_runtime.stop, settings)
        kafka_io.run(kafka_io.ensure_topics(settings))

        workload = generate(GeneratorConfig(seed=seed, duration_s=minutes * 60, start=DEMO_START))
        engine = make_engine(settings)
        write_ledger(engine, workload.truth)
        path, bad = _write_input(settings, workload)
        late = sum(1 for s in workload.lateness_s() if s > 300)
        step(f"generated {len(workload.deliveries)} deliveries of {len(workload.truth)} events "
             f"({late} more than 5 min late, duplicates and corrections included) + {bad} bad lines → {path}")

        step("starting the Faust speed worker (Lambda) and a live Kappa job per view (v1): both consume the same events as they arrive")
        speed.start(settings)
        cleanup.callback(speed.stop, settings)
        cleanup.callback(side_by_side.stop_jobs, settings)
        side_by_side.start_jobs(settings)

        report = produce_file(settings, path)
        step(f"lklab produce: accepted {report.accepted}, dead-lettered {report.dead_lettered} (to {settings.dlq_topic})")
        status = speed.wait_caught_up(settings, timeout_s=300)
        counters = status.counters
        step(f"speed layer caught up: lag 0, watermark {status.watermark}; processed {counters.get('processed', 0)}, "
             f"duplicates ignored {counters.get('duplicates_ignored', 0)}, corrections applied {counters.get('corrections_applied', 0)}, "
             f"too late for speed (left to batch) {counters.get('late_dropped', 0)}")

        step("materialising bronze → silver → gold → publish through Dagster")
        outcome = run_batch(settings)
        for line in outcome.failed_gates:
            console.print(line, highlight=False)
        if not outcome.success:
            console.print(f"[red]{outcome.message}[/red]")
            return DemoResult(1, outcome.message)
        step(f"{outcome.message}; GX Data Docs: {data_docs_index(settings.home)}")
        console.print(_gates_table(outcome.gates))

        comparisons, T = [], None
        for name in views.SPEED_LAYER:  # the views whose merge splits at T between batch and speed
            answer = merge.query(engine, name)
            T = answer.T
            truth = oracle.for_view(name, workload.truth)
            final = lambda key: views.VIEWS[name].is_final(key[1], T)  # noqa: E731
            rows = lambda src: {(r.entity, r.window_start): r.value for r in answer.rows if src in (None, r.source)}  # noqa: E731
            comparisons += [
                ViewComparison(name, MERGE, f"{name} (Lambda merge)", oracle.compare(rows(None), truth)),
                ViewComparison(name, BATCH_ROWS, "  batch rows (final at T)",
                               oracle.compare(rows("batch"), {k: v for k, v in truth.items() if final(k)})),
                ViewComparison(name, SPEED_ROWS, "  speed rows (after T)",
                               oracle.compare(rows("speed"), {k: v for k, v in truth.items() if not final(k)})),
            ]
        step(f"T = {T} (build {answer.build_id})")
        result = DemoResult(1, "", comparisons, T, answer.build_id)
        console.print(results_table(comparisons))
        wrong = [c for c in comparisons if c.part == MERGE and not c.comparison.equal]
        for c in wrong:
            console.print(f"[red]{c.label} differs from the oracle:[/red] {c.comparison}")
        if wrong:
            result.message = f"{', '.join(c.view for c in wrong)}: the merged view differs from the oracle"
            return result
        console.print(f"[green]every merged view equals the oracle exactly[/green] in {time.monotonic() - clock:.0f}s")
        from lklab.lake.spark import get_spark

        live_ok, live = side_by_side.run_side_by_side(settings, engine, get_spark(settings), workload.truth, console, step)
        result.comparisons += live
        if not live_ok:
            result.message = "Lambda or Kappa readers differ from the oracle, or the blue/green cutover failed"
            return result
        side_by_side.stop_jobs(settings)  # the hybrid part replays bounded, one writer per output
        if settings.topic_segment_bytes:
            result.hybrid_ran = True
            ok, hybrid = run_hybrid(settings, engine, workload, console, step)
            result.comparisons += hybrid
            if not ok:
                result.message = "the hybrid path differs from the oracle (or the first cutover failed)"
                return result
        console.print(f"[green]demo complete[/green] in {time.monotonic() - clock:.0f}s")
        result.exit_code, result.message = 0, "demo complete: every view, read through Lambda and through Kappa" + (
            ", and both hybrid replays equal the oracle" if result.hybrid_ran else ", equals the oracle")
        return result


def _wait_for_retention(settings: Settings, timeout_s: float = 90.0) -> dict[int, int]:
    """Shorten the topic's retention and wait until the broker has deleted old segments of at
    least one partition (smaller partitions may keep all of theirs)."""
    kafka_io.run(kafka_io.set_retention_bytes(settings, DEMO_RETENTION_BYTES))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        first = kafka_io.run(kafka_io.beginning_offsets(settings))
        if any(first.values()):
            return first
        time.sleep(2)
    raise RuntimeError(f"Kafka retention deleted nothing within {timeout_s:.0f}s (first offsets {first})")


def run_hybrid(settings: Settings, engine, workload, console: Console, step) -> tuple[bool, list[ViewComparison]]:
    """The hybrid path on the same broker: retention drops old segments (bronze still holds them),
    a replay crosses both tiers, a snapshot is taken, more events arrive, and a replay from the
    snapshot equals a full replay and the oracle; then a cutover and an audit as-of. Returns
    whether it all held, and the two replays' comparisons with the oracle."""
    from lklab.hybrid import audit
    from lklab import kappa
    from lklab.engine import snapshots
    from lklab.lake import tiers
    from lklab.kappa import cutover as co
    from lklab.log.produce import produce_events
    from lklab.lake.spark import get_spark

    spark, view = get_spark(settings), "revenue_per_minute"
    first = _wait_for_retention(settings)
    step(f"Kafka retention (retention.bytes={DEMO_RETENTION_BYTES}) deleted old segments: first retained offsets {first}; "
         "bronze still holds everything below them")
    plan = kappa.plan(settings, engine, view, 2, spark=spark)
    step(f"replay plan: {plan.records(tiers.BRONZE)} records from bronze, {plan.records(tiers.KAFKA)} from Kafka, "
         f"{plan.records(tiers.LOST)} lost")
    across = kappa.replay(settings, engine, view, 2, spark=spark)
    snap = snapshots.take(settings, engine, spark, view, kappa.spec_for(view, 2), kappa.replay_scope(view, 2))
    step(f"{across.output}: {across.events} events across both tiers {across.tiers}; snapshot {snap.snapshot_id} at offsets {snap.offsets}")
    published = co.cutover(settings, engine, view, 2, "demo: replayed across both tiers", spark=spark, tolerance_pct=100, run_suite=run_suite)
    served_v1, between = {(e, w): v for e, w, v in kappa.read_output(engine, view, across.output)}, datetime.now(timezone.utc)
    time.sleep(0.05)

    more = generate(GeneratorConfig(seed=workload.config.seed + 1, duration_s=60,  # < retention: Kafka still holds it
                                    start=workload.config.start + timedelta(seconds=workload.config.duration_s - 90)))
    truth = oracle.for_view(view, [*workload.truth, *more.truth])
    write_ledger(engine, more.truth)
    produce_events(settings, more.deliveries)
    step(f"{len(more.deliveries)} more deliveries arrive, overlapping the last 90 s of event time")
    clock = time.monotonic()
    fast = kappa.replay(settings, engine, view, 3, snapshot="latest", spark=spark)
    fast_s, clock = time.monotonic() - clock, time.monotonic()  # wall time: verifying and loading the snapshot included
    full = kappa.replay(settings, engine, view, 4, spark=spark)
    full_s = time.monotonic() - clock
    rows = lambda r: {(e, w): v for e, w, v in kappa.read_output(engine, view, r.output)}  # noqa: E731
    results = [ViewComparison(view, SNAPSHOT_REPLAY, f"{fast.output} (snapshot + {fast.events} events)",
                              oracle.compare(rows(fast), truth)),
               ViewComparison(view, FULL_REPLAY, f"{full.output} (full replay, {full.events} events)",
                              oracle.compare(rows(full), truth))]
    console.print(results_table(results))
    step(f"replay from snapshot {fast_s:.1f}s (checksum, load, {fast.events} events) vs full replay {full_s:.1f}s "
         f"across tiers {full.tiers}")
    if not all(c.comparison.equal for c in results) or not published.swapped:
        console.print("[red]the hybrid path differs from the oracle (or the first cutover failed)[/red]")
        return False, results
    co.cutover(settings, engine, view, 3, "demo: caught up from the snapshot", spark=spark, tolerance_pct=100, run_suite=run_suite)
    key, window = next((k for k in sorted(truth) if k in served_v1 and truth[k] != served_v1[k]), min(truth))
    then = audit.answer(settings, engine, spark, view, key, window, between, arch="kappa")
    now = audit.answer(settings, engine, spark, view, key, window, datetime.now(timezone.utc), arch="kappa")
    step(f"audit {view} {key} {window:%Y-%m-%dT%H:%MZ}: as of the cross-tier publication {then.value} (from {then.publish['target']}), "
         f"now {now.value} (from {now.publish['target']})")
    return True, results
