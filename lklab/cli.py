"""`lklab`: run the lab from the shell. Every failure is one line on stderr and exit code 2."""
from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from lklab.config import Settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sqlalchemy import Engine

app = typer.Typer(help="lklab: Lambda, Kappa and hybrid pipelines side by side on Kafka, Spark/Delta, Faust, Dagster and GX.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
kafka_app = typer.Typer(help="The embedded Kafka broker (KRaft, 127.0.0.1 only).", no_args_is_help=True)
speed_app = typer.Typer(help="The Faust speed-layer worker, in the background.", no_args_is_help=True)
app.add_typer(kafka_app, name="kafka")
app.add_typer(speed_app, name="speed")
lambda_app = typer.Typer(help="The Lambda serving layer: T, freshness and who serves what.", no_args_is_help=True)
app.add_typer(lambda_app, name="lambda")
db_app = typer.Typer(help="The serving store's schema: revision, pending migrations, upgrade.", no_args_is_help=True)
app.add_typer(db_app, name="db")
UNWRAPPED_WIDTH = 100_000  # piped output: one record per line, never cut, for grep and scripts


def _console(stderr: bool = False) -> Console:
    """Rich wraps at 80 columns whenever its stream is not a terminal; piped into grep or a file,
    lines stay whole instead (COLUMNS, when set, still wins)."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and "COLUMNS" not in os.environ
    return Console(stderr=stderr, width=UNWRAPPED_WIDTH if piped else None)


console = _console()
err = _console(stderr=True)
# aiokafka logs each failed connection attempt; with no handler configured Python would print
# them to stderr next to the one-line error that the exception becomes here.
logging.getLogger("aiokafka").addHandler(logging.NullHandler())

def fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def kafka_failure(s: Settings, exc: Exception) -> typer.Exit:
    return fail(f"Kafka at {s.bootstrap} failed: {exc} (is it running? `lklab kafka status`)")


def settings() -> Settings:
    try:
        return Settings()
    except Exception as exc:  # pydantic ValidationError: a bad LKLAB_* variable
        raise fail(f"bad LKLAB_* setting: {str(exc).splitlines()[0:3]}") from None


def parse_iso(value: Optional[str], flag: str) -> Optional[datetime]:
    if value is None:
        return None
    from lklab.events import parse_time

    try:
        return parse_time(value)
    except ValueError:
        raise fail(f"{flag} {value!r} is not an ISO-8601 time like 2026-11-17T10:00Z") from None


def serving_engine(s: Settings) -> Engine:
    """The serving store at this code's schema revision (upgraded if behind), or one line saying why not."""
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    from lklab.migrations import StoreSchemaError, public_url
    from lklab.serving import make_engine

    try:
        return make_engine(s)
    except StoreSchemaError as exc:
        raise fail(str(exc)) from None
    except (ArgumentError, SQLAlchemyError, ImportError) as exc:  # bad URL, server down, driver missing
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise fail(f"serving store {public_url(s.serving)}: {first}") from None


# --- kafka --------------------------------------------------------------------------------

@kafka_app.command("start")
def kafka_start() -> None:
    """Start the broker in the background (data under .lklab/kafka)."""
    from lklab import kafka_io, kafka_runtime

    s = settings()
    try:
        pid = kafka_runtime.start(s)
        kafka_io.run(kafka_io.ensure_topics(s))
    except (kafka_runtime.KafkaRuntimeError, TimeoutError) as exc:
        raise fail(str(exc)) from None
    console.print(f"Kafka running: pid {pid}, bootstrap {s.bootstrap}, topics {s.topic} and {s.dlq_topic} ({s.partitions} partitions)")


@kafka_app.command("stop")
def kafka_stop() -> None:
    """Stop the broker."""
    from lklab import kafka_runtime

    stopped = kafka_runtime.stop(settings())
    console.print("Kafka stopped" if stopped else "Kafka was not running")


@kafka_app.command("status")
def kafka_status() -> None:
    """Is the broker up and reachable; topics with their end offsets."""
    from lklab import kafka_io, kafka_runtime

    s = settings()
    st = kafka_runtime.status(s)
    health = "healthy" if st.running and st.reachable else ("running, not reachable" if st.running else "stopped")
    console.print(f"Kafka {health}: pid {st.pid or '-'}, bootstrap {st.bootstrap}, data {st.data_dir}")
    if st.reachable:
        for topic in (s.topic, s.dlq_topic):
            try:
                ends = kafka_io.run(kafka_io.end_offsets(s, topic))
                console.print(f"  {topic}: {sum(ends.values())} records, end offsets {ends}")
            except LookupError:
                console.print(f"  {topic}: not created yet")
    if not (st.running and st.reachable):
        raise typer.Exit(code=1)


# --- produce ------------------------------------------------------------------------------

@app.command()
def produce(file: Annotated[Path, typer.Option("--file", "-f", help="JSONL, one schema-v1 event per line")]) -> None:
    """Import your own events: valid lines go to the topic, bad lines to the dead-letter topic with a reason."""
    from aiokafka.errors import KafkaError

    from lklab.produce import ProduceError, produce_file

    s = settings()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as bar:  # piped, a transient bar leaves only a blank line
        task = bar.add_task(f"producing {file}", total=None)
        try:
            report = produce_file(s, file, on_progress=lambda n: bar.update(task, description=f"producing {file}: line {n}"))
        except ProduceError as exc:
            report, stopped = exc.report, exc
        except (FileNotFoundError, LookupError, OSError) as exc:
            raise fail(str(exc)) from None
        except (KafkaError, TimeoutError) as exc:
            raise kafka_failure(s, exc) from None
        else:
            stopped = None
    for reason in report.reasons:
        err.print(f"dead-lettered {reason}", highlight=False)
    if report.dead_lettered > len(report.reasons):
        err.print(f"... and {report.dead_lettered - len(report.reasons)} more (read them from {s.dlq_topic})")
    console.print(f"accepted {report.accepted}, dead-lettered {report.dead_lettered} (to {s.dlq_topic})"
                  f"{'; the import stopped' if stopped else ''}")
    if stopped:
        raise fail(str(stopped))


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write")],
    minutes: Annotated[int, typer.Option(min=1, help="minutes of event time")] = 10,
    seed: Annotated[int, typer.Option(help="generator seed")] = 7,
    rides_per_minute: Annotated[int, typer.Option(min=0)] = 60,
) -> None:
    """Write a deterministic workload (late, duplicate, corrected events) and its payments ledger."""
    from lklab.generator import GeneratorConfig, write_jsonl, write_ledger
    from lklab.generator import generate as make_workload

    s = settings()
    workload = make_workload(GeneratorConfig(seed=seed, duration_s=minutes * 60, rides_per_minute=rides_per_minute))
    write_jsonl(workload.deliveries, out, workload.config.local_offsets)
    ledger = write_ledger(serving_engine(s), workload.truth)
    console.print(f"wrote {len(workload.deliveries)} deliveries of {len(workload.truth)} events to {out}; "
                  f"{ledger} payments in the ledger ({s.serving})")


# --- speed --------------------------------------------------------------------------------

@speed_app.command("start")
def speed_start() -> None:
    """Run the Faust worker in the background."""
    from lklab import speed
    from lklab.migrations import StoreSchemaError

    s = settings()
    try:
        pid = speed.start(s)
    except (speed.SpeedError, StoreSchemaError, RuntimeError, TimeoutError, LookupError) as exc:
        raise fail(str(exc)) from None
    console.print(f"speed worker running: pid {pid}, log {s.logs_dir / 'speed.log'}")


@speed_app.command("stop")
def speed_stop() -> None:
    """Stop the Faust worker."""
    from lklab import speed

    console.print("speed worker stopped" if speed.stop(settings()) else "speed worker was not running")


@speed_app.command("status")
def speed_status() -> None:
    """Worker health, lag per partition, event-time watermark and counters."""
    from lklab import speed

    st = speed.status(settings())
    state = f"running (pid {st.pid})" if st.running else "stopped"
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


# --- db -----------------------------------------------------------------------------------

@db_app.command("status")
def db_status() -> None:
    """The serving store (URL without password), its schema revision, this code's head and the
    pending revisions; changes nothing. Exit 1 when the store is not at head."""
    from lklab import migrations

    with store_as_found() as engine:
        st = migrations.status(engine)
    console.print(f"serving store {st.url}", highlight=False, soft_wrap=True)
    if st.current is None:
        held = "none (no lklab tables yet)"
    elif not st.stamped:
        held = f"{migrations.title(st.current)} (made before migrations: no alembic_version yet; the upgrade stamps it)"
    else:
        held = migrations.title(st.current)
    console.print(f"  revision: {held}", highlight=False, soft_wrap=True)
    console.print(f"  head:     {migrations.title(st.head)}", highlight=False, soft_wrap=True)
    console.print(f"  pending:  {', '.join(migrations.title(r) for r in st.pending) or 'none'}", highlight=False, soft_wrap=True)
    if not st.at_head:
        console.print(f"run `{migrations.UPGRADE_COMMAND}` (or start any lklab process with LKLAB_SERVING_AUTO_MIGRATE on)", soft_wrap=True)
        raise typer.Exit(code=1)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Bring the serving store to this code's head revision, keeping its data (a store made before
    migrations is stamped with the revision it holds first). Safe while other lklab processes run."""
    from lklab import migrations

    with store_as_found() as engine:
        found, applied = migrations.upgrade(engine)
    if found.stamped and not applied:
        console.print(f"serving store {found.url} is already at head {migrations.title(found.head)}", highlight=False, soft_wrap=True)
        return
    stamped = "" if found.stamped or found.current is None else f"stamped {found.current} (made before migrations), "
    console.print(f"serving store {found.url}: {stamped}applied {', '.join(migrations.title(r) for r in applied) or 'nothing'}; "
                  f"now at {found.head}", highlight=False, soft_wrap=True)


@db_app.command("revision")
def db_revision(message: Annotated[str, typer.Argument(help="what the schema change does, e.g. 'batch_runs: add attempt'")]) -> None:
    """For developers: write the next revision file with the operations that turn the head schema
    into lklab.serving's tables (Alembic autogenerate). Review it before committing."""
    from lklab import migrations

    path = migrations.new_revision(message)
    console.print(f"wrote {path}: review it (autogenerate misses renames and comment-only changes)", highlight=False, soft_wrap=True)


@contextmanager
def store_as_found() -> Iterator[Engine]:
    """The configured store's engine, schema as found, for `lklab db`; store errors become one line."""
    from sqlalchemy.exc import SQLAlchemyError

    from lklab.migrations import StoreSchemaError, public_url
    from lklab.serving import store_engine

    s = settings()
    try:
        engine = store_engine(s)
    except (SQLAlchemyError, ImportError) as exc:  # a malformed LKLAB_SERVING_URL, a driver not installed
        raise fail(f"serving store {public_url(s.serving)}: {str(exc).splitlines()[0]}") from None
    try:
        yield engine
    except StoreSchemaError as exc:
        raise fail(str(exc)) from None
    except SQLAlchemyError as exc:  # unreachable, refused credentials
        raise fail(f"serving store {public_url(s.serving)}: {str(getattr(exc, 'orig', None) or exc).splitlines()[0]}") from None
    finally:
        engine.dispose()


# --- batch and query ----------------------------------------------------------------------

@app.command()
def batch(
    from_day: Annotated[Optional[str], typer.Option("--from-day", help="backfill: first event date (YYYY-MM-DD)")] = None,
    to_day: Annotated[Optional[str], typer.Option("--to-day", help="backfill: last event date, inclusive")] = None,
) -> None:
    """Ingest new offsets into bronze, rebuild the touched event dates (or a backfill range) through
    Dagster with blocking quality gates, and promote the build."""
    from datetime import date

    from expectations.runner import data_docs_index
    from lklab.batch import run_batch

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
    s = settings()
    serving_engine(s).dispose()  # a store this code cannot serve is refused here, before Dagster starts
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
    from lklab.gates import styled

    for gate in gates:
        console.print(f"{styled(gate.status)}{gate.line()[4:]}", highlight=False, soft_wrap=True)


@app.command()
def query(
    view: Annotated[str, typer.Argument(help="revenue_per_minute | daily_active_users | driver_earnings_daily")],
    key: Annotated[Optional[str], typer.Option("--key", "--city", "--driver", help="only this city (or driver, for driver_earnings_daily)")] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="window start ≥ this ISO time")] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="window start < this ISO time")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    arch: Annotated[str, typer.Option("--arch", help="lambda (merged batch+speed) or kappa (the published version)")] = "lambda",
) -> None:
    """A view as readers see it: Lambda (batch rows for windows final at T, speed for the rest) or
    Kappa (the version the alias points at)."""
    from lklab import merge, views

    if arch not in ("lambda", "kappa"):
        raise fail(f"--arch {arch!r}: one of lambda, kappa")
    from lklab.kappa import KAPPA_VIEWS

    known = KAPPA_VIEWS if arch == "kappa" else tuple(views.VIEWS)
    if view not in known:
        raise fail(f"unknown view {view!r} for --arch {arch}; one of: {', '.join(known)}")
    start, end = parse_iso(from_, "--from"), parse_iso(to, "--to")
    if start and end and start >= end:
        raise fail(f"--from {from_} is not before --to {to}")
    if arch == "kappa":
        from lklab import cutover as co

        answer = co.query(serving_engine(settings()), view, key, start, end)
        entity, value = ("user_id", ("sessions", "duration_ms")) if view == "user_sessions" else \
            (views.VIEWS[view].entity, (views.VIEWS[view].value_column,))
        print(json.dumps({"view": view, "arch": "kappa", "version": answer.target, "rows": [
            {entity: e, "window_start": w.isoformat(), **dict(zip(value, v if isinstance(v, tuple) else (v,)))}
            for e, w, v in answer.rows]}, indent=2))
        return
    s = settings()
    engine = serving_engine(s)
    answer = merge.query(engine, view, key, start, end, health=merge.current_speed_health(engine, s), policy=s.blocked_windows_policy)
    spec = views.VIEWS[view]
    if as_json:
        print(json.dumps(merge.answer_json(answer), indent=2))
        return
    if answer.stale:
        err.print(f"[yellow]stale:[/yellow] {answer.stale_reason}; serving batch-only")
    if answer.batch_blocked:
        err.print(f"[yellow]batch blocked:[/yellow] {blocked_line(answer.batch_blocked)}; {policy_line(answer)}", highlight=False)
    build = f"T = {answer.T.isoformat()}, build {answer.build_id}" if answer.build_id else "no promoted batch build yet"
    table = Table(title=f"{view} ({build}, mode {answer.mode})")
    for column in (spec.entity, "window_start", spec.value_column, "source"):
        table.add_column(column)
    for r in answer.rows:
        table.add_row(r.entity, r.window_start.isoformat(), str(r.value), r.source + (" (diverged)" if r.diverged else "") + (" (left to batch)" if r.left_to_batch else ""))
    console.print(table)


def blocked_line(blocked) -> str:
    gate = f"gate {blocked.gate}" if blocked.gate else "a run failure"
    return (f"since {blocked.since.isoformat(timespec='seconds')}, stopped by {gate}: {blocked.reason} "
            f"(run {blocked.run_id}, event dates {blocked.first_date}…{blocked.last_date})")


def policy_line(answer) -> str:
    if answer.policy == "refuse":
        return f"{answer.withheld} speed rows of diverged windows withheld (policy refuse)"
    return f"{sum(r.diverged for r in answer.rows)} speed rows of diverged windows served, flagged (policy serve-flagged)"


@lambda_app.command("status")
def lambda_status() -> None:
    """T (from the promoted batch build), the speed layer's watermark, lag and health, the age of
    the last batch, and which windows come from which layer."""
    from lklab import merge

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


def show(value) -> str:
    """A time (or anything) for humans: ISO, or 'none yet' instead of Python's None."""
    if value is None:
        return "none yet"
    return value.isoformat() if isinstance(value, datetime) else str(value)


@app.command()
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="port on 127.0.0.1")] = 8000,
    host: Annotated[str, typer.Option(help="bind address (keep it on loopback unless you front it with auth)")] = "127.0.0.1",
) -> None:
    """The read-only HTTP JSON query API (see README, Query API)."""
    import uvicorn

    from lklab.api import create_app
    from lklab.migrations import StoreSchemaError

    try:
        api = create_app(settings())
    except StoreSchemaError as exc:
        raise fail(str(exc)) from None
    uvicorn.run(api, host=host, port=port, log_level="warning")


@app.command()
def replay(
    view: Annotated[str, typer.Argument(help="revenue_per_minute | daily_active_users | driver_earnings_daily | user_sessions")],
    version: Annotated[int, typer.Option("--version", help="write <view>__v<N>")],
    from_: Annotated[Optional[str], typer.Option("--from", help="earliest (default), or partition:offset pairs like 0:120,1:98; "
                                                 "partitions not named start from the earliest offset")] = None,
    from_snapshot: Annotated[Optional[str], typer.Option("--from-snapshot", help="latest, or a snapshot id: load its state, "
                                                         "read the log from its offsets")] = None,
    max_rate: Annotated[Optional[float], typer.Option("--max-rate", help="throttle to this many events/s")] = None,
    plan_only: Annotated[bool, typer.Option("--plan", help="change nothing: print the plan (tiers, lost ranges, estimate)")] = False,
) -> None:
    """Kappa replay: run the view's stream logic as a new consumer group into <view>__v<N>, up to
    the end offsets recorded at start, reading offsets Kafka no longer holds from bronze; writes
    build metadata."""
    from aiokafka.errors import KafkaError
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    from lklab import kappa

    s = settings()
    try:
        start = None if from_ in (None, "earliest") else kappa.parse_from(from_)
        kappa.check_request(s, view, version, start, from_snapshot, max_rate)
    except (kappa.ReplayError, LookupError) as exc:
        raise fail(str(exc)) from None
    except KafkaError as exc:
        raise kafka_failure(s, exc) from None
    try:
        engine = serving_engine(s)
        if plan_only:
            the_plan = kappa.plan(s, engine, view, version, start, from_snapshot)
            print_plan(s, engine, the_plan, max_rate)
            if the_plan.lost:
                raise fail(the_plan.lost_message().replace("; nothing replayed", ""))
            return
        with Progress(TextColumn(f"replay {view} → {kappa.output_name(view, version)}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]:,.0f} ev/s"), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("replay", total=None, rate=0.0)
            result = kappa.replay(s, engine, view, version, start, max_rate, snapshot=from_snapshot,
                                  on_progress=lambda p: bar.update(task, completed=p.done, total=p.total, rate=p.events_per_s))
    except (kappa.ReplayError, LookupError) as exc:
        raise fail(str(exc)) from None
    origin = f"snapshot {result.snapshot_id} + " if result.snapshot_id else ""
    console.print(f"{result.output}: {origin}{result.events} events in {result.seconds:.1f}s ({result.events_per_s:,.0f} ev/s; "
                  f"bronze {result.tiers.get('bronze', 0)}, kafka {result.tiers.get('kafka', 0)}), {result.rows} rows; "
                  f"offsets {result.start_offsets} → {result.target_offsets}")


def print_plan(s: Settings, engine, the_plan, max_rate: Optional[float]) -> None:
    from lklab import merge, tiers

    table = Table(title=f"replay plan: {the_plan.view} → {the_plan.output} (group {the_plan.scope})")
    for column in ("partition", "offsets", "records", "tier"):
        table.add_column(column, justify="right" if column == "records" else "left")
    for r in the_plan.ranges:
        tier = "[red]LOST from both tiers[/red]" if r.tier == tiers.LOST else r.tier
        table.add_row(str(r.partition), f"{r.start}..{r.end - 1}", f"{r.records:,}", tier)
    console.print(table)
    snap = the_plan.snapshot
    console.print(f"snapshot: {snap.snapshot_id} of {snap.source_output} at offsets {snap.offsets} ({snap.row_counts['output']:,} rows, "
                  f"logic v{snap.logic_version}, schema v{snap.schema_version}, {'load' if the_plan.load_snapshot else 'already loaded: resume'})"
                  if snap else "snapshot: none (state starts empty)", highlight=False)
    console.print(f"records: {the_plan.records():,} (bronze {the_plan.records(tiers.BRONZE):,}, kafka {the_plan.records(tiers.KAFKA):,}, "
                  f"lost {the_plan.records(tiers.LOST):,}); end offsets {the_plan.target}", highlight=False)
    estimate = the_plan.estimated_s(max_rate)
    rate = f"{the_plan.rate_eps:,.0f} ev/s from {the_plan.rate_source}" if the_plan.rate_eps else the_plan.rate_source
    console.print(f"estimate: {f'{estimate:,.1f} s' if estimate is not None else 'unknown'} ({rate}"
                  f"{f', capped by --max-rate {max_rate:,.0f}' if max_rate else ''})", highlight=False)
    health = merge.current_speed_health(engine, s)
    kafka_records = the_plan.records(tiers.KAFKA)
    console.print(f"live speed layer: {'healthy' if health.healthy else f'NOT healthy ({health.reason})'}, lag {health.lag}. "
                  f"The replay uses its own group, so live offsets are untouched; it fetches {kafka_records:,} records from the broker"
                  f"{f' at up to {max_rate:,.0f} ev/s' if max_rate else ' unthrottled (set --max-rate to bound it)'} and the "
                  f"same number of writes to the serving store the live worker writes to; bronze reads touch only the lake.",
                  highlight=False, soft_wrap=True)


@app.command()
def snapshot(
    view: Annotated[str, typer.Argument(help="the view to snapshot, or `list`")],
    list_view: Annotated[Optional[str], typer.Argument(help="with `list`: only this view's snapshots")] = None,
    version: Annotated[Optional[int], typer.Option("--version", help="snapshot <view>__v<N> (default: the published version)")] = None,
) -> None:
    """Write an immutable Delta snapshot of a Kappa output's state, with the offsets it is
    consistent with, its logic and schema version, row counts, checksum and git SHA
    (`lklab snapshot list [VIEW]` lists them)."""
    from lklab import snapshots

    s = settings()
    engine = serving_engine(s)
    if view == "list":
        return print_snapshots(snapshots.listing(engine, list_view))
    try:
        snap = take_snapshot(s, engine, view, version)
    except (snapshots.SnapshotError, LookupError) as exc:
        raise fail(str(exc)) from None
    print_snapshots([snap])


def take_snapshot(s: Settings, engine, view: str, version: Optional[int]):
    from lklab import cutover as co
    from lklab import kappa, snapshots

    if view not in kappa.KAPPA_VIEWS:
        raise snapshots.SnapshotError(f"unknown view {view!r}; one of: {', '.join(kappa.KAPPA_VIEWS)}")
    if version is None:
        with engine.connect() as conn:
            output = co.published(conn, view)
        if output is None:
            raise snapshots.SnapshotError(f"{view} has no published version: pass --version N")
    else:
        output = kappa.output_name(view, version)
    record = kappa.build_record(engine, output)
    if record is None:
        raise snapshots.SnapshotError(f"{output} was never replayed: run `lklab replay {view} --version N` first")
    from lklab.spark import get_spark

    return snapshots.take(s, engine, get_spark(s), view, kappa.spec_for(view, record["version"]), record["consumer_group"])


def print_snapshots(found) -> None:
    table = Table(title="snapshots")
    for column in ("id", "of", "created", "offsets", "rows", "logic", "schema", "checksum", "git"):
        table.add_column(column)
    for snap in found:
        table.add_row(snap.snapshot_id, snap.source_output, snap.created_at.isoformat(timespec="seconds"),
                      ",".join(f"{p}:{o}" for p, o in sorted(snap.offsets.items())), f"{snap.row_counts['output']:,}",
                      str(snap.logic_version), str(snap.schema_version), snap.checksum[:12], snap.git_sha[:12])
    console.print(table)


@app.command()
def audit(
    view: Annotated[str, typer.Argument(help="revenue_per_minute | daily_active_users | driver_earnings_daily | user_sessions")],
    key: Annotated[str, typer.Option("--key", help="the entity: city, driver_id or user_id")],
    window: Annotated[str, typer.Option("--window", help="the window start, ISO UTC")],
    as_of: Annotated[str, typer.Option("--as-of", help="the instant to answer for, like 2026-11-17T10:00Z")],
    arch: Annotated[str, typer.Option("--arch", help="lambda (the merge behind lambda@batch) or kappa (the view's alias)")] = "lambda",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """What a view served for one key and window at a past instant, from which publish, build,
    code version and input offsets (Delta time travel on the recorded versions)."""
    from lklab import audit as au

    s = settings()
    when, start = parse_iso(as_of, "--as-of"), parse_iso(window, "--window")
    try:
        found = au.answer(s, serving_engine(s), None, view, key, start, when, arch)
    except au.AuditError as exc:
        raise fail(str(exc)) from None
    body = {"view": view, "arch": found.arch, "key": key, "window": start.isoformat(), "as_of": when.isoformat(),
            "value": found.value, "found": found.found, "served_from": found.served_from, "note": found.note,
            "publish": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in found.publish.items()},
            "lineage": found.lineage}
    if as_json:
        print(json.dumps(body, indent=2, default=str))
        return
    pub = found.publish
    console.print(f"{view} {key} {start.isoformat()} as of {when.isoformat()}: [bold]{found.value}[/bold]"
                  f"{f'  ({found.note})' if found.note else ''}", highlight=False, soft_wrap=True)
    console.print(f"served from {found.served_from}; published {pub['at'].isoformat()} by {pub['who']} ({pub['action']} "
                  f"{pub['from_target']} → {pub['target']}: {pub['why']})", highlight=False, soft_wrap=True)
    lineage = found.lineage
    console.print(f"git {lineage.get('git_sha')}, logic v{lineage.get('logic_version')}, schema v{lineage.get('schema_version')}, "
                  f"input offsets {lineage.get('offsets') or lineage.get('target_offsets')}", highlight=False, soft_wrap=True)


@app.command()
def cutover(
    view: Annotated[str, typer.Argument(help="the alias to swap")],
    to: Annotated[int, typer.Option("--to", help="the version to publish")],
    why: Annotated[str, typer.Option("--why", help="recorded with the swap")] = "cutover",
    tolerance: Annotated[float, typer.Option("--tolerance-pct", help="max total |change| vs the published version, in %")] = 0.5,
) -> None:
    """Validate <view>__v<N> (GX suite, ledger, diff against the published version) and, only if
    all pass, swap the alias <view> to it atomically."""
    from lklab import cutover as co

    s = settings()
    try:
        co.check_args(view, to, tolerance)
        result = co.cutover(s, serving_engine(s), view, to, why, tolerance)
    except (co.CutoverError, KeyError) as exc:
        raise fail(str(exc).strip("'\"")) from None
    from lklab.gates import styled

    for check in result.checks:
        console.print(f"{styled(check.status)} {check.name}: {check.summary}", highlight=False, soft_wrap=True)
    if not result.swapped:
        failed = ", ".join(c.name for c in result.checks if c.status == "fail")
        raise fail(f"{view} stays on {result.from_target or 'nothing published'}: {result.to_target} failed {failed}")
    console.print(f"{view}: {result.from_target or 'nothing published'} → {result.to_target}")


@app.command()
def rollback(
    view: Annotated[str, typer.Argument(help="the alias to swap back")],
    why: Annotated[str, typer.Option("--why", help="recorded with the swap")] = "rollback",
) -> None:
    """Swap the alias <view> back to the version it had before its last cutover."""
    from lklab import cutover as co

    s = settings()
    try:
        old, new = co.rollback(s, serving_engine(s), view, why)
    except co.CutoverError as exc:
        raise fail(str(exc)) from None
    console.print(f"{view}: {old} → {new} (rolled back)")


@app.command()
def compare(
    scenario: Annotated[str, typer.Argument(help="sessionization")],
    days: Annotated[int, typer.Option(min=2, help="days of generated history")] = 30,
    seed: Annotated[int, typer.Option(help="generator seed")] = 7,
) -> None:
    """Play a fix both ways on the same history and print them side by side (own broker, .lklab/compare)."""
    from lklab.compare import run_sessionization
    from lklab.kafka_runtime import KafkaRuntimeError
    from lklab.migrations import StoreSchemaError

    if scenario != "sessionization":
        raise fail(f"unknown scenario {scenario!r}; one of: sessionization")
    try:
        code = run_sessionization(days=days, seed=seed, console=console)
    except (KafkaRuntimeError, StoreSchemaError, TimeoutError, LookupError) as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code=code)


@app.command()
def demo(
    minutes: Annotated[int, typer.Option(help="minutes of event time to generate")] = 10,
    seed: Annotated[int, typer.Option(help="generator seed")] = 7,
) -> None:
    """The main job: own broker + Faust worker + Dagster batch on generated events, merged view vs the oracle."""
    from lklab.demo import run_demo
    from lklab.kafka_runtime import KafkaRuntimeError
    from lklab.migrations import StoreSchemaError
    from lklab.speed import SpeedError

    try:
        code = run_demo(minutes=minutes, seed=seed, console=console)
    except (KafkaRuntimeError, SpeedError, StoreSchemaError, TimeoutError, LookupError) as exc:
        raise fail(str(exc)) from None
    raise typer.Exit(code=code)


if __name__ == "__main__":
    app()
