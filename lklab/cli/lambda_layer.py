"""`lklab speed`, `lklab batch`, `lklab lambda status`: the Lambda layers."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from lklab.cli.common import blocked_line, app, console, err, fail, lambda_app, serving_engine, settings, show, speed_app




@speed_app.command("start")
def speed_start() -> None:
    """Run the Faust workers (LKLAB_SPEED_WORKERS, default 1) in the background."""
    from lklab.lambda_arch import speed
    from lklab.serving.migrations import StoreSchemaError

    s = settings()
    try:
        pid = speed.start(s)
    except (speed.SpeedError, StoreSchemaError, RuntimeError, TimeoutError, LookupError) as exc:
        raise fail(str(exc)) from None
    if s.speed_workers == 1:
        console.print(f"speed worker running: pid {pid}, log {speed.log_file(s, 0)}")
    else:
        console.print(f"{s.speed_workers} speed workers running: pids {', '.join(map(str, speed.read_pids(s)))}, "
                      f"logs {speed.log_file(s, 0)} and speed-<i>.log beside it")


@speed_app.command("stop")
def speed_stop() -> None:
    """Stop the Faust workers."""
    from lklab.lambda_arch import speed

    console.print("speed worker stopped" if speed.stop(settings()) else "speed worker was not running")


@speed_app.command("status")
def speed_status() -> None:
    """Worker health, lag per partition, event-time watermark and counters."""
    from lklab.lambda_arch import speed

    st = speed.status(settings())
    state = f"running (pid {', '.join(map(str, st.workers))})" if st.running else "stopped"
    lag = "unknown" if st.total_lag is None else str(st.total_lag)
    console.print(f"speed worker {state}, group {st.group}, topic {st.topic}: total lag {lag}, "
                  f"watermark {show(st.watermark)}, final through {show(st.final_through)}")
    if st.kafka_error:
        err.print(f"Kafka not reachable: {st.kafka_error}")
    table = Table("partition", "next offset", "end offset", "lag", "max event time")
    for p in sorted(st.partitions.values(), key=lambda x: x.partition):
        table.add_row(str(p.partition), str(p.next_offset), str(p.end_offset), show(p.lag), show(p.max_event_time))
    console.print(table)
    if st.counters:
        console.print("counters: " + ", ".join(f"{k}={v}" for k, v in sorted(st.counters.items())))
    if not st.running:
        raise typer.Exit(code=1)



@app.command()
def batch(
    from_day: Annotated[Optional[str], typer.Option("--from-day", help="backfill: first event date (YYYY-MM-DD)")] = None,
    to_day: Annotated[Optional[str], typer.Option("--to-day", help="backfill: last event date, inclusive")] = None,
) -> None:
    """Ingest new offsets into bronze, rebuild the touched event dates (or a backfill range) through
    Dagster with blocking quality gates, and promote the build."""
    from datetime import date

    if (from_day is None) != (to_day is None):
        raise fail("--from-day and --to-day go together")
    dates = None
    if from_day and to_day:
        try:
            first, last = date.fromisoformat(from_day), date.fromisoformat(to_day)
        except ValueError:
            raise fail(f"--from-day/--to-day must be dates like 2026-11-17, got {from_day!r} and {to_day!r}") from None
        if first > last:
            raise fail(f"--from-day {from_day} is after --to-day {to_day}")
        dates = (first.isoformat(), last.isoformat())
    s = settings()  # a bad LKLAB_* setting is one line here, before Dagster's modules read Settings at import
    from lklab.lambda_arch.builds import batch_views

    try:
        batch_views(s)  # an unknown view name is one line here, not after the ingest ran
    except ValueError as exc:
        raise fail(str(exc)) from None
    serving_engine(s).dispose()  # a store this code cannot serve is refused here, before Dagster starts
    from expectations.runner import data_docs_index
    from orchestration.launch import run_batch

    with console.status("running the Dagster batch layer (ingest → silver → gold → gates → promote)"):
        outcome = run_batch(s, dates, on_wait=lambda message: err.print(message, highlight=False))
    if outcome.retried_dates:
        console.print(f"rebuilding event dates whose last batch run did not promote: {', '.join(outcome.retried_dates)}",
                      highlight=False)
    print_gates(outcome.gates)
    docs = data_docs_index(s.home)
    if docs.exists():
        console.print(f"data-quality report (GX Data Docs): {docs}")
    if not outcome.success:
        raise fail(f"{outcome.message} (runs {', '.join(outcome.run_ids) or 'none'})")
    console.print(f"{outcome.message} (Dagster runs {', '.join(outcome.run_ids)}; instance {s.dagster_home})")


def print_gates(gates) -> None:
    """One line per gate: pass, warn or fail, with its reason (never a traceback)."""
    from lklab.core.gates import styled

    for gate in gates:
        console.print(f"{styled(gate.status)}{gate.line()[4:]}", highlight=False, soft_wrap=True)

@lambda_app.command("status")
def lambda_status() -> None:
    """T (from the promoted batch build), the speed layer's watermark, lag and health, the age of
    the last batch, and which windows come from which layer."""
    from lklab.lambda_arch import merge

    s = settings()
    st = merge.lambda_status(serving_engine(s), s)
    b = st.build
    if b is None:
        console.print("no promoted batch build yet: every window comes from the speed layer (run `lklab batch`)")
    else:
        console.print(f"T = {show(b.final_through)}  (batch build {b.build_id}, {st.batch_age_s:.0f}s old, watermark {show(b.watermark)}, "
                      f"allowed lateness {s.allowed_lateness_s}s, git {b.git_sha})")
        console.print(f"  offsets consumed: {b.offsets}")
    if st.batch_blocked:
        console.print(f"[red]batch layer BLOCKED[/red] {blocked_line(st.batch_blocked)}. Readers get "
                      f"{'the speed rows of diverged windows flagged' if s.blocked_windows_policy == 'serve-flagged' else 'no speed rows for diverged windows'} "
                      f"(LKLAB_BLOCKED_WINDOWS_POLICY={s.blocked_windows_policy}). Fix the cause, then run `lklab batch`: "
                      f"it rebuilds the blocked dates.", highlight=False, soft_wrap=True)
    h = st.speed
    state = "healthy" if h.healthy else f"UNHEALTHY: {h.reason} → serving is batch-only, answers flagged stale"
    age = "never" if h.heartbeat_age_s is None else f"{h.heartbeat_age_s:.1f}s ago"
    console.print(f"speed: {state}; heartbeat {age}; lag {h.lag if h.lag is not None else 'unknown'} records; "
                  f"watermark {show(st.speed_watermark)}; final through {show(st.speed_final_through)}")
    table = Table("view", "batch rows", "batch serves", "speed rows", "speed serves", title="who serves what")
    for layer in st.layers:
        table.add_row(layer.view, str(layer.batch_rows), layer.batch_serves, str(layer.speed_rows), layer.speed_serves)
    console.print(table)
