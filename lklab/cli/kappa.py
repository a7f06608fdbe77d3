"""`lklab replay`, `lklab cutover`, `lklab rollback`: Kappa versions and their publication."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.progress import Progress, TextColumn
from rich.table import Table

from lklab.cli.common import app, console, fail, kafka_failure, kappa_app, serving_engine, settings, show
from lklab.core.config import Settings


@app.command()
def replay(
    view: Annotated[str, typer.Argument(help="revenue_per_minute | daily_active_users | driver_earnings_daily | user_sessions")],
    version: Annotated[int, typer.Option("--version", help="write <view>__v<N>")],
    from_: Annotated[Optional[str], typer.Option("--from", help="earliest (default), or partition:offset pairs like 0:120,1:98; "
                                                 "partitions not named start from the earliest offset")] = None,
    from_snapshot: Annotated[Optional[str], typer.Option("--from-snapshot", help="latest, or a snapshot id: load its state, "
                                                         "read the log from its offsets")] = None,
    max_rate: Annotated[Optional[float], typer.Option("--max-rate", help="throttle the replay (the hydration) to this many events/s")] = None,
    plan_only: Annotated[bool, typer.Option("--plan", help="change nothing: print the plan (tiers, lost ranges, estimate)")] = False,
    until_end: Annotated[bool, typer.Option("--until-end", help="the bounded replay: stop at the end offsets recorded at start "
                                            "(reproducible builds, the bench) instead of starting the live job")] = False,
    wait_s: Annotated[float, typer.Option("--wait", min=0, help="seconds to wait for the live job to be hydrated (0: do not wait)")] = 600.0,
) -> None:
    """Kappa replay: start <view>__v<N>'s live job as a new consumer group (from earliest, offsets
    or a snapshot; bronze below Kafka's retention, then Kafka, then it keeps consuming) while the
    published version keeps serving, and wait until it is hydrated: `lklab cutover` needs that.
    With --until-end, today's bounded replay up to the end offsets recorded at start."""
    from aiokafka.errors import KafkaError

    from lklab import kappa

    s = settings()
    try:
        start = None if from_ in (None, "earliest") else kappa.parse_from(from_)
        kappa.check_request(s, view, version, start, from_snapshot, max_rate)
    except (kappa.ReplayError, LookupError) as exc:
        raise fail(str(exc)) from None
    except KafkaError as exc:
        raise kafka_failure(s, exc) from None
    engine = serving_engine(s)
    if plan_only:
        try:
            the_plan = kappa.plan(s, engine, view, version, start, from_snapshot)
        except (kappa.ReplayError, LookupError) as exc:
            raise fail(str(exc)) from None
        print_plan(s, engine, the_plan, max_rate)
        if the_plan.lost:
            raise fail(the_plan.lost_message().replace("; nothing replayed", ""))
        return
    if until_end:
        bounded_replay(s, engine, view, version, start, from_snapshot, max_rate)
    else:
        live_replay(s, engine, view, version, from_ or "earliest", from_snapshot, max_rate, wait_s)


def bounded_replay(s: Settings, engine, view: str, version: int, start, from_snapshot: Optional[str], max_rate: Optional[float]) -> None:
    """`lklab replay --until-end`: the replay up to the end offsets recorded at start, in the foreground."""
    from rich.progress import BarColumn, MofNCompleteColumn, TimeRemainingColumn

    from lklab import kappa
    from lklab.kappa import jobs

    try:
        jobs.ensure_not_running(s, view, version)  # one writer per output
        with Progress(TextColumn(f"replay {view} → {kappa.output_name(view, version)}"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("{task.fields[rate]:,.0f} ev/s"), TimeRemainingColumn(), console=console) as bar:
            task = bar.add_task("replay", total=None, rate=0.0)
            result = kappa.replay(s, engine, view, version, start, max_rate, snapshot=from_snapshot,
                                  on_progress=lambda p: bar.update(task, completed=p.done, total=p.total, rate=p.events_per_s))
    except (kappa.ReplayError, jobs.JobError, LookupError) as exc:
        raise fail(str(exc)) from None
    origin = f"snapshot {result.snapshot_id} + " if result.snapshot_id else ""
    console.print(f"{result.output}: {origin}{result.events} events in {result.seconds:.1f}s ({result.events_per_s:,.0f} ev/s; "
                  f"bronze {result.tiers.get('bronze', 0)}, kafka {result.tiers.get('kafka', 0)}), {result.rows} rows; "
                  f"offsets {result.start_offsets} → {result.target_offsets}")
    if result.beyond_horizon:
        console.print(f"{result.output}: {result.beyond_horizon} records refused, older than the correction horizon "
                      f"({s.correction_horizon_s / 3600:g} h): their windows are in speed_late_windows under {result.output}; "
                      f"`lklab kappa repair {view} --version {version}` recomputes them from the log")


def live_replay(s: Settings, engine, view: str, version: int, start_from: str, from_snapshot: Optional[str],
                max_rate: Optional[float], wait_s: float) -> None:
    """`lklab replay`: start the version's live job and wait (up to `wait_s`) until it is hydrated."""
    from lklab import kappa
    from lklab.kappa import hydration, jobs

    output = kappa.output_name(view, version)
    try:
        pid = jobs.start(s, view, version, start_from, from_snapshot, max_rate=max_rate)
    except (jobs.JobError, LookupError, TimeoutError) as exc:
        raise fail(str(exc)) from None
    console.print(f"{output}: live job started (pid {pid}, log {jobs.log_file(s, output)}); the published version keeps serving")
    if wait_s <= 0:
        return
    with console.status(f"{output}: hydrating") as shown:
        try:
            ready = hydration.wait_until_hydrated(s, engine, view, version, wait_s,
                                                  on_wait=lambda summary: shown.update(f"{output}: hydrating ({summary})"))
        except jobs.JobError as exc:
            raise fail(str(exc)) from None
    console.print(ready.summary, highlight=False)
    console.print(f"next: `lklab cutover {view} --to {version}`")


def print_plan(s: Settings, engine, the_plan, max_rate: Optional[float]) -> None:
    from lklab.lambda_arch import merge
    from lklab.lake import tiers

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
def cutover(
    view: Annotated[str, typer.Argument(help="the alias to swap")],
    to: Annotated[int, typer.Option("--to", help="the version to publish")],
    why: Annotated[str, typer.Option("--why", help="recorded with the swap")] = "cutover",
    tolerance: Annotated[float, typer.Option("--tolerance-pct", help="max total |change| vs the published version, in %")] = 0.5,
) -> None:
    """Validate <view>__v<N> (GX suite, ledger, diff against the published version) and, only if
    all pass, swap the alias <view> to it atomically."""
    from lklab.kappa import cutover as co

    s = settings()
    try:
        co.check_args(view, to, tolerance)
        from expectations.runner import run_suite  # GX takes seconds to import: after the arguments are checked

        result = co.cutover(s, serving_engine(s), view, to, why, tolerance, run_suite=run_suite)
    except (co.CutoverError, KeyError) as exc:
        raise fail(str(exc).strip("'\"")) from None
    from lklab.core.gates import styled

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
    from lklab.kappa import cutover as co

    s = settings()
    try:
        old, new = co.rollback(s, serving_engine(s), view, why)
    except co.CutoverError as exc:
        raise fail(str(exc)) from None
    console.print(f"{view}: {old} → {new} (rolled back)")


@kappa_app.command("start")
def kappa_start(
    view: Annotated[str, typer.Argument(help="revenue_per_minute | daily_active_users | driver_earnings_daily | user_sessions")],
    version: Annotated[Optional[int], typer.Option("--version", help="run <view>__v<N> (default: the published version)")] = None,
    from_: Annotated[str, typer.Option("--from", help="earliest, or partition:offset pairs like 0:120,1:98")] = "earliest",
    from_snapshot: Annotated[Optional[str], typer.Option("--from-snapshot", help="latest, or a snapshot id")] = None,
) -> None:
    """Run the view's stream job live in the background: hydrate (bronze below Kafka's retention,
    then Kafka, up to the log's end), then keep consuming; heartbeat, lag and watermark in `status`."""
    from lklab import kappa
    from lklab.kappa import jobs

    s = settings()
    try:
        version = version if version is not None else jobs.published_version(serving_engine(s), view)
        pid = jobs.start(s, view, version, from_, from_snapshot)
    except (jobs.JobError, LookupError, TimeoutError) as exc:
        raise fail(str(exc)) from None
    output = kappa.output_name(view, version)
    console.print(f"{output} running: pid {pid}, log {jobs.log_file(s, output)}")


@kappa_app.command("stop")
def kappa_stop(
    view: Annotated[str, typer.Argument(help="the view")],
    version: Annotated[Optional[int], typer.Option("--version", help="stop <view>__v<N> (default: the published version)")] = None,
) -> None:
    """Stop a live Kappa job (it checkpoints first)."""
    from lklab.kappa import jobs

    s = settings()
    try:
        version = version if version is not None else jobs.published_version(serving_engine(s), view)
        stopped = jobs.stop(s, view, version)
    except jobs.JobError as exc:
        raise fail(str(exc)) from None
    console.print(f"{view}__v{version} stopped" if stopped else f"{view}__v{version} was not running")


@kappa_app.command("repair")
def kappa_repair(
    view: Annotated[str, typer.Argument(help="revenue_per_minute | daily_active_users | driver_earnings_daily")],
    version: Annotated[int, typer.Option("--version", help="repair <view>__v<N>")],
) -> None:
    """Recompute, from the whole log, only the windows of <view>__v<N> that records refused beyond the
    correction horizon touched (and those their events' other versions touched). The job must be stopped."""
    from aiokafka.errors import KafkaError

    from lklab import kappa
    from lklab.kappa.repair import check_repair, repair

    s = settings()
    try:
        check_repair(s, view, version)
        found = repair(s, serving_engine(s), view, version)
    except (kappa.ReplayError, LookupError) as exc:
        raise fail(str(exc)) from None
    except KafkaError as exc:
        raise kafka_failure(s, exc) from None
    if not found.recorded:
        console.print(f"{found.output}: no record was refused beyond the horizon; nothing to repair")
        return
    console.print(f"{found.output}: {found.repaired} windows recomputed ({found.recorded} recorded by refused records), "
                  f"{found.changed} changed, from {found.events:,} events; {found.records_read:,} records read "
                  f"({', '.join(f'{n:,} from {tier}' for tier, n in found.tiers.items() if n)}) in {found.seconds:.1f}s")


@kappa_app.command("status")
def kappa_status() -> None:
    """Every Kappa job of this lab: running or not, pid, lag, watermark, heartbeat age, stale or fresh for readers,
    records refused beyond the correction horizon."""
    from lklab.kappa import jobs

    found = jobs.status(settings())
    table = Table("output", "state", "pid", "lag", "watermark", "heartbeat", "readers", "beyond horizon", "log", title="Kappa jobs")
    for job in found:
        table.add_row(job.output, "running" if job.running else "stopped", str(job.pid or "-"),
                      "unknown" if job.lag is None else str(job.lag), show(job.watermark),
                      "never" if job.heartbeat_age_s is None else f"{job.heartbeat_age_s:.1f}s ago",
                      f"[yellow]stale: {job.stale_reason}[/yellow]" if job.stale else "fresh",
                      f"[yellow]{job.beyond_horizon:,} refused[/yellow]" if job.beyond_horizon else "0", str(job.log))
    console.print(table if found else "no Kappa job has run in this lab (`lklab kappa start VIEW --version N`)")
