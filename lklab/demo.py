"""The main job: a hermetic run of the Lambda slice on generated events, checked against the oracle.

It starts its own broker on free loopback ports under .lklab/demo, so it never touches a
broker or data you run yourself, and it stops everything it started.
"""
from __future__ import annotations

import shutil
import socket
import time
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console
from rich.table import Table

from lklab import kafka_io, kafka_runtime, merge, oracle, speed, views
from expectations.runner import data_docs_index
from lklab.batch import run_batch
from lklab.config import Settings
from lklab.generator import GeneratorConfig, bad_lines, generate, write_jsonl, write_ledger
from lklab.produce import produce_file
from lklab.serving import make_engine


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def demo_settings() -> Settings:
    home = Path.cwd() / ".lklab" / "demo"
    return Settings(home=home, kafka_port=_free_port(), kafka_controller_port=_free_port(), speed_web_port=_free_port())


def _write_input(settings: Settings, workload) -> tuple[Path, int]:
    """The user's path: a JSONL file, with a few bad lines mixed in to exercise the dead-letter topic."""
    path = settings.home / "events.jsonl"
    write_jsonl(workload.deliveries, path)
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
        table.add_row(g.gate, "[green]passed[/green]" if g.passed else "[red]FAILED[/red]", g.description)
    return table


def _results_table(rows: list[tuple[str, oracle.Comparison]]) -> Table:
    table = Table(title="lklab demo: views against the oracle")
    for column in ("view", "rows", "exact matches", "max abs error", "equal"):
        table.add_column(column, justify="right" if column in ("rows", "exact matches", "max abs error") else "left")
    for name, c in rows:
        table.add_row(name, str(c.rows_actual), f"{c.exact_matches}/{c.rows_expected}", str(c.max_abs_error),
                      "[green]yes[/green]" if c.equal else "[red]NO[/red]")
    return table


def run_demo(minutes: int = 10, seed: int = 7, console: Console | None = None, settings: Settings | None = None) -> int:
    """Run the demo; returns the exit code (0 only when the merged view equals the oracle).
    With `settings`, it uses that (running) broker and home instead of starting its own."""
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

        workload = generate(GeneratorConfig(seed=seed, duration_s=minutes * 60))
        engine = make_engine(settings)
        write_ledger(engine, workload.truth)
        path, bad = _write_input(settings, workload)
        late = sum(1 for s in workload.lateness_s() if s > 300)
        step(f"generated {len(workload.deliveries)} deliveries of {len(workload.truth)} events "
             f"({late} more than 5 min late, duplicates and corrections included) + {bad} bad lines → {path}")

        step("starting the Faust speed worker")
        speed.start(settings)
        cleanup.callback(speed.stop, settings)

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
            console.print(f"[red]gate failed:[/red] {line}")
        if not outcome.success:
            console.print(f"[red]{outcome.message}[/red]")
            return 1
        step(f"{outcome.message}; GX Data Docs: {data_docs_index(settings.home)}")
        console.print(_gates_table(outcome.gates))

        comparisons, T = [], None
        for name in views.VIEWS:
            answer = merge.query(engine, name)
            T = answer.T
            truth = oracle.for_view(name, workload.truth)
            final = lambda key: views.VIEWS[name].is_final(key[1], T)  # noqa: E731
            rows = lambda src: {(r.entity, r.window_start): r.value for r in answer.rows if src in (None, r.source)}  # noqa: E731
            comparisons += [
                (f"{name} (Lambda merge)", oracle.compare(rows(None), truth)),
                ("  batch rows (final at T)", oracle.compare(rows("batch"), {k: v for k, v in truth.items() if final(k)})),
                ("  speed rows (after T)", oracle.compare(rows("speed"), {k: v for k, v in truth.items() if not final(k)})),
            ]
        step(f"T = {T} (build {answer.build_id})")
        console.print(_results_table(comparisons))
        wrong = [(name, c) for name, c in comparisons if "merge" in name and not c.equal]
        for name, c in wrong:
            console.print(f"[red]{name} differs from the oracle:[/red] {c}")
        if wrong:
            return 1
        console.print(f"[green]every merged view equals the oracle exactly[/green] in {time.monotonic() - clock:.0f}s")
        return 0
