"""`late-storm`: a sweep of allowed lateness under the seed's profile (99.9 % of events within
5 minutes, the rest up to 48 hours late), one live lab per setting on the same workload.

The tail is made a storm: the late fraction is raised, and the generator's late deliveries that
were due after the live section (each 5 min to 48 h late) are delivered during it instead, at
the event times they were generated with, hours back in the backlog, as a fleet of offline
phones reconnecting would. Per setting it measures what the Lambda speed layer left to batch
(its `late_dropped` counter and late windows), how wrong Lambda readers were and how long until
a batch run fixed it; and the Kappa job's state in bytes (it never closes a window: lklab's
Kappa has no batch behind it) with its correction delay. The answer to the seed's question is
read off the numbers: a short watermark plus a correction path for the tail, or a long one and
its state."""
from __future__ import annotations

import statistics
import time
from bisect import bisect_right
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sqlalchemy import Engine, func, select, text

from lklab import views
from lklab.drills.lab import LiveLab, free_port
from lklab.drills.readers import RawRead
from lklab.drills.registry import Drill, DrillContext, DrillError, register
from lklab.drills.result import KAPPA, LAMBDA, Action, ArchRun, DrillResult, Fault
from lklab.drills.scoring import PrefixOracle, parse_rows
from lklab.drills.stream import LogTimeline, StreamShape
from lklab.core.events import Event
from lklab.core.provenance import git_sha
from lklab.kappa.names import output_name, replay_scope
from lklab.serving import progress
from lklab.serving.store import held_chunks, speed_contrib, speed_event_state
from lklab.engine.sink import load_contribs, read_late_windows

VIEW = "revenue_per_minute"
HOUR = 3600
LATENESS_S = {"small": (60, 48 * HOUR), "default": (60, 300, HOUR, 48 * HOUR)}
# A low rate keeps the backlog small while it spans hours of event time: the storm lands hours back.
SHAPES = {"small": StreamShape(backlog_min=120, live_min=6, rides_per_minute=3, speedup=24),
          "default": StreamShape(backlog_min=300, live_min=12, rides_per_minute=4, speedup=20)}
PROFILE = {"late_fraction": 0.05, "late_max_s": 48 * HOUR}  # the seed's 48 h tail, 50x as frequent: a storm
STORM = (0.1, 0.6)  # the storm is delivered between these shares of the live section's wall time
STORM_BURSTS = 10
STALE_WALL_S = 15.0  # at this low rate the slowest partition's newest event trails the log's by minutes of event time
ARCH_COLORS = {LAMBDA: "tab:blue", KAPPA: "tab:green"}
QUESTION = "What watermark strategy would you choose if 99.9% of events arrive within 5 minutes but 0.1% arrive within 48 hours?"
STATE_BYTES_HOW = ("SQLite dbstat: bytes of the pages of speed_event_state and speed_contrib (with their indexes), "
                   "times the scope's share of each table's rows, plus the bytes of the scope's state chunks (held_chunks "
                   "payloads; their entries count as rows)")
OPEN_WINDOW_HOW = ("derived: the Kappa state bytes times the share of its contributions whose window is still open "
                   "at watermark minus the setting (what a job that closed windows at that lateness would hold)")
DELAY_HOW = ("measured from the raw reads: from the produce acknowledgement of a storm event to the first read in "
             "which every window it touches equals the oracle at that read's log position")


def lateness_label(seconds: int) -> str:
    """60 -> 60s, 3600 -> 1h, 172800 -> 48h."""
    return f"{seconds // HOUR}h" if seconds >= HOUR and seconds % HOUR == 0 else f"{seconds}s"


def setting_context(ctx: DrillContext, lateness_s: int) -> DrillContext:
    """The drill's context for one setting: its own home (serving store, lake, Dagster), topics,
    speed group and web port on the same broker, so runs share no state."""
    base, label = ctx.settings, lateness_label(lateness_s)
    if base.serving_url is not None:
        raise DrillError("late-storm needs a serving store per setting: run it without serving_url (SQLite under home)")
    home = base.home / f"lateness-{label}"
    home.mkdir(parents=True, exist_ok=True)
    settings = base.model_copy(update={
        "allowed_lateness_s": lateness_s, "home": home, "topic": f"{base.topic}.late-{label}",
        "dlq_topic": f"{base.dlq_topic}.late-{label}", "speed_group": f"{base.speed_group}-late-{label}",
        "speed_web_port": free_port(),
        "lake_uri": None if base.lake_uri is None else f"{base.lake_uri.rstrip('/')}/late-{label}"})
    return DrillContext(f"{ctx.name}@{label}", settings, ctx.size, ctx.seed, ctx.spark, ctx.console)


# ---- the storm ---------------------------------------------------------------------------------
def storm_events(lab: LiveLab) -> list[Event]:
    """The late deliveries due after the live section, in their arrival order: more than
    on_time_max_s late, with an event time at least that long before the live section (so each
    is still that late when it is delivered early)."""
    config, shape = lab.workload.config, lab.shape
    live_start = lab.stream.live_start
    live_end = live_start + timedelta(minutes=shape.live_min)
    on_time = timedelta(seconds=config.on_time_max_s)
    return [e for e, arrival in zip(lab.workload.deliveries, lab.workload.arrival_times)
            if arrival >= live_end and arrival - e.event_time > on_time and e.event_time <= live_start - on_time]


def deliver_storm(lab: LiveLab, events: list[Event], live_started: float) -> tuple[float, float]:
    """Inject the storm in bursts over STORM of the live section; returns when it began and ended."""
    wall = lab.shape.live_wall_s
    began, ended = live_started + STORM[0] * wall, live_started + STORM[1] * wall
    step = (ended - began) / STORM_BURSTS
    size = -(-len(events) // STORM_BURSTS) or 1
    for k, first in enumerate(range(0, len(events), size)):
        time.sleep(max(0.0, began + k * step - lab.now()))
        for event in events[first:first + size]:
            lab.stream.inject(event)
    time.sleep(max(0.0, ended - lab.now()))
    return began, ended


# ---- what is measured --------------------------------------------------------------------------
def correction_delays(view: str, raw: list[RawRead], timeline: LogTimeline, storm: list[Event]) -> list[float | None]:
    """Per storm event that touches the view: seconds from the acknowledgement of the batch that
    delivered it to the first read in which every window it touches (any version) is equal to the
    oracle at the read's log position; None if no read ever showed it right."""
    prefix = PrefixOracle(view, timeline.events)
    delivered, times = [m.delivered for m in timeline.marks], [m.t for m in timeline.marks]
    wanted = {(e.event_id, e.event_version) for e in storm}
    pending: list[tuple[int, float, set]] = []  # (index in the log, produced at, windows)
    seen: set = set()
    for index, event in enumerate(timeline.events):
        pair = (event.event_id, event.event_version)
        if pair in wanted and pair not in seen and (keys := prefix.keys_of(event.event_id)):
            seen.add(pair)
            pending.append((index, times[bisect_right(delivered, index)], keys))
    delays: list[float | None] = []
    for read in raw:
        if not pending:
            break
        last = bisect_right(times, read.t) - 1
        if read.status != 200 or last < 0:
            continue
        expected, answer = prefix.at(delivered[last]), parse_rows(view, read.body.get("rows", []))
        still = []
        for index, produced, keys in pending:
            if index < delivered[last] and all(answer.get(k) == expected.get(k) for k in keys):
                delays.append(round(read.t - produced, 2))
            else:
                still.append((index, produced, keys))
        pending = still
    return delays + [None] * len(pending)


def delay_summary(delays: list[float | None]) -> dict[str, float | int | None]:
    done = sorted(d for d in delays if d is not None)
    quantile = lambda q: done[min(len(done) - 1, int(q * len(done)))] if done else None  # noqa: E731
    return {"storm_events_in_view": len(delays), "correction_p50_s": statistics.median(done) if done else None,
            "correction_p90_s": quantile(0.9), "correction_max_s": done[-1] if done else None,
            "never_corrected": len(delays) - len(done)}


def state_bytes(engine: Engine, scope: str, view_names: list[str]) -> tuple[int, int]:
    """(bytes, rows) of one consumer's state in the serving store: its dedup rows
    (speed_event_state) and its contributions (speed_contrib), each table's page bytes (dbstat,
    indexes included) apportioned by the scope's share of its rows, and a Kappa job's chunks
    (lklab.engine.chunks: payload bytes, entries as rows)."""
    if engine.dialect.name != "sqlite":
        raise DrillError(f"late-storm measures state bytes with SQLite's dbstat; the serving store is {engine.dialect.name}")
    parts = ((speed_event_state, speed_event_state.c.scope == scope), (speed_contrib, speed_contrib.c.view.in_(view_names)))
    total_bytes = total_rows = 0
    with engine.connect() as conn:
        for table, mine in parts:
            pages = conn.execute(text("SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN "
                                      "(SELECT name FROM sqlite_schema WHERE tbl_name = :t)"), {"t": table.name}).scalar_one()
            rows = conn.execute(select(func.count()).select_from(table)).scalar_one()
            held = conn.execute(select(func.count()).select_from(table).where(mine)).scalar_one()
            total_bytes += round(pages * held / rows) if rows else 0
            total_rows += held
        chunk_bytes, entries = conn.execute(
            select(func.coalesce(func.sum(func.length(held_chunks.c.payload)), 0), func.coalesce(func.sum(held_chunks.c.entries), 0))
            .where(held_chunks.c.scope == scope)).one()
    return total_bytes + chunk_bytes, total_rows + entries


def open_window_share(lab: LiveLab, lateness_s: int) -> float:
    """Of the Kappa job's contributions, the share in windows still open at its watermark minus
    lateness_s (what a job closing windows at that lateness would still hold)."""
    scope, output = replay_scope(VIEW, 1), output_name(VIEW, 1)
    with lab.engine.connect() as conn:
        wm = views.watermark(progress.max_event_times(conn, scope, lab.settings.topic), lab.settings.partitions)
        cut = views.final_through(wm, lateness_s)
        held = load_contribs(conn, [output])
    total = len(held)
    open_ = total if cut is None else sum(1 for c in held.values() if c.window >= cut)
    return open_ / total if total else 0.0


# ---- one setting -------------------------------------------------------------------------------
@dataclass
class SettingRun:
    lateness_s: int
    runs: list[ArchRun]
    row: dict
    workload: dict


def shifted(run: ArchRun, by: float) -> ArchRun:
    """The run on the time axis of its live section (t = 0 when the live stream started)."""
    move = lambda items: [i.model_copy(update={"t": round(i.t - by, 3)}) for i in items]  # noqa: E731
    return run.model_copy(update={"reads": move(run.reads), "actions": move(run.actions), "signals": move(run.signals)})


def run_setting(ctx: DrillContext, lateness_s: int) -> SettingRun:
    label, size = lateness_label(lateness_s), ctx.size
    shape = SHAPES[size]
    # no batch cadence: one batch run right after the stream, when the speed layer left it events
    with LiveLab(ctx, VIEW, shape, workload_overrides=PROFILE, stale_wall_s=STALE_WALL_S) as lab:
        live_started = lab.now()
        dropped_before = progress.read_counters(lab.engine, lab.settings.speed_group)[progress.LATE_DROPPED]
        storm = storm_events(lab)
        ctx.say(f"storm: {len(storm)} late deliveries, {STORM[0]:.0%}-{STORM[1]:.0%} into the live section")
        began, ended = deliver_storm(lab, storm, live_started)
        fault = Fault(name="late_storm", description="", start_s=began, end_s=ended)
        lab.wait_stream()
        left = progress.read_counters(lab.engine, lab.settings.speed_group)[progress.LATE_DROPPED] - dropped_before
        if left:
            lab.act(LAMBDA, f"the batch run after the stream (the speed layer left {left} events to it)", by="harness")
            lab.batch()
        else:
            lab.act(LAMBDA, "no batch run after the stream: the speed layer left nothing to batch", by="harness")
        lab.settle(2)
        lab.finish()
        dropped = progress.read_counters(lab.engine, lab.settings.speed_group)[progress.LATE_DROPPED]
        late_windows = read_late_windows(lab.engine, VIEW)
        kappa_bytes, kappa_rows = state_bytes(lab.engine, replay_scope(VIEW, 1), [output_name(VIEW, 1)])
        speed_bytes, _ = state_bytes(lab.engine, lab.settings.speed_group, list(views.SPEED_LAYER))
        open_bytes = round(kappa_bytes * open_window_share(lab, lateness_s))
        delays = {arch: delay_summary(correction_delays(VIEW, lab.readers[arch].reads, lab.stream.timeline, storm))
                  for arch in (LAMBDA, KAPPA)}
        lam = lab.arch_run(LAMBDA, f"Lambda, lateness {label}", fault, {
            "allowed_lateness": label, "left_to_batch_backlog": dropped_before, "left_to_batch_live": dropped - dropped_before,
            "revenue_windows_left_to_batch": len(late_windows), **delays[LAMBDA], "speed_state_bytes": speed_bytes})
        kap = lab.arch_run(KAPPA, f"Kappa, lateness {label}", fault, {
            "allowed_lateness": label, **delays[KAPPA], "state_bytes": kappa_bytes, "state_rows": kappa_rows,
            "open_window_state_bytes": open_bytes})
        builds = [{"began": round(b - live_started, 2), "ended": round(e - live_started, 2), "promoted": ok, "note": note}
                  for b, e, ok, note in lab.builds]
        runs = [shifted(r, live_started).model_copy(update={"arch": f"{r.arch}@{label}"}) for r in (lam, kap)]
        for run in runs:
            run.actions += [Action(t=b["ended"], what=f"batch run {'promoted' if b['promoted'] else 'failed'}", by="system")
                            for b in builds if b["ended"] > 0]
        row = {"lambda_left_to_batch": dropped - dropped_before, "lambda_wrong_reader_s": lam.figures.wrong_reader_s,
               "lambda_max_error": lam.figures.max_error, "lambda_fixed_after_storm_s": lam.figures.recovery_s,
               "lambda_correction_p50_s": delays[LAMBDA]["correction_p50_s"],
               "kappa_wrong_reader_s": kap.figures.wrong_reader_s, "kappa_correction_p50_s": delays[KAPPA]["correction_p50_s"],
               "kappa_state_bytes": kappa_bytes, "kappa_open_window_state_bytes": open_bytes, "batch_runs": builds}
        workload = lab.result("late-storm", QUESTION, fault, [], datetime.now(timezone.utc)).workload
        workload.pop("batch_builds", None)
        return SettingRun(lateness_s, runs, row, {**workload, "storm_events": len(storm), "storm_s": [round(began - live_started, 2),
                                                                                                      round(ended - live_started, 2)]})


# ---- the drill ---------------------------------------------------------------------------------
def run_late_storm(ctx: DrillContext) -> DrillResult:
    started, clock = datetime.now(timezone.utc), time.monotonic()
    done = [run_setting(setting_context(ctx, lateness), lateness) for lateness in LATENESS_S[ctx.size]]
    first = done[0].workload
    shape = SHAPES[ctx.size]
    fault = Fault(name="late_storm", start_s=first["storm_s"][0], end_s=first["storm_s"][1], description=(
        f"{first['storm_events']} late deliveries (each generated 5 min to 48 h late, event times up to "
        f"{shape.backlog_min // 60} h back) delivered during the live section, under allowed lateness "
        + ", ".join(lateness_label(s.lateness_s) for s in done)))
    workload = {**{k: v for k, v in first.items() if k != "storm_s"}, "profile": (
        f"the seed's profile (on-time deliveries within 5 min, the tail uniformly 5 min to 48 h late) with the tail at "
        f"{PROFILE['late_fraction']:.0%} instead of 0.1 %; the tail's deliveries due after the live section are delivered "
        "during it (a storm): at 0.1 % and a drill-length live section, almost none of a 48 h tail would arrive at all"),
        "settings_s": [s.lateness_s for s in done]}
    evidence = {lateness_label(s.lateness_s): s.row for s in done}
    evidence |= {"state_bytes_measured_by": STATE_BYTES_HOW, "open_window_state_bytes": OPEN_WINDOW_HOW,
                 "correction_delay": DELAY_HOW}
    return DrillResult(drill="late-storm", question=QUESTION, size=ctx.size, seed=ctx.seed, started_at=started,
                       wall_s=round(time.monotonic() - clock, 1), git_sha=git_sha(), versions=ctx.versions(),
                       workload=workload, fault=fault, runs=[r for s in done for r in s.runs], evidence=evidence,
                       lessons=lessons(done))


def lessons(done: list[SettingRun]) -> list[str]:
    rows = {lateness_label(s.lateness_s): s.row for s in done}
    short, long_ = lateness_label(done[0].lateness_s), lateness_label(done[-1].lateness_s)
    s, l = rows[short], rows[long_]  # noqa: E741
    out = [f"{label}: the speed layer left {r['lambda_left_to_batch']} events to batch; Lambda readers were wrong "
           f"{r['lambda_wrong_reader_s']:.1f} reader-s (max error {r['lambda_max_error']:,}), right again "
           f"{_after(r['lambda_fixed_after_storm_s'])} the storm; Kappa state {r['kappa_state_bytes']:,} B, "
           f"{r['kappa_open_window_state_bytes']:,} B of it in windows open at this lateness" for label, r in rows.items()]
    out.append(f"a {short} watermark keeps the speed layer's open state small ({s['kappa_open_window_state_bytes']:,} B of open "
               f"windows) but hands the late tail and even on-time stragglers to batch: readers are wrong until the next batch run")
    out.append(f"a {long_} watermark is right at once (Lambda {l['lambda_wrong_reader_s']:.1f} wrong reader-s) but holds "
               f"every window of the last {long_} open: {l['kappa_open_window_state_bytes']:,} B here, growing with the rate × 48 h")
    out.append("lklab's Kappa job never closes a window, so it is right for every setting and pays the long watermark's "
               "state always; the choice: a watermark just past the bulk (5 min, the 99.9 %) for the live answer, and a "
               "correction path (batch or a Kappa replay) for the 0.1 % tail, with late windows flagged meanwhile")
    return out


def _after(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.1f} s after"


def plot_late_storm(result: DrillResult, path: Path) -> Path:
    """Four panels: Lambda and Kappa error over the live section, one curve per setting; the
    storm's correction delay and the state bytes against the setting."""
    figure = Figure(figsize=(11, 8), dpi=100, layout="constrained")
    (lam_ax, kap_ax), (delay_ax, state_ax) = figure.subplots(2, 2)
    settings = result.workload.get("settings_s", [])
    colors = {s: f"C{i}" for i, s in enumerate(settings)}
    for arch, ax in ((LAMBDA, lam_ax), (KAPPA, kap_ax)):
        for run in (r for r in result.runs if r.arch.startswith(arch + "@")):
            setting = next(s for s in settings if run.arch.endswith("@" + lateness_label(s)))
            t = [r.t for r in run.reads]
            ax.step(t, [float("nan") if r.error is None else r.error for r in run.reads], where="post",
                    color=colors[setting], label=f"lateness {lateness_label(setting)}")
            for action in (a for a in run.actions if a.by == "system" and a.t >= 0):
                ax.axvline(action.t, color=colors[setting], linestyle=":", linewidth=1, label="batch run ended")
        if result.fault.start_s is not None:
            ax.axvspan(result.fault.start_s, result.fault.end_s, color="tab:orange", alpha=0.15, label="storm delivered")
        ax.set_title(f"{'Lambda' if arch == LAMBDA else 'Kappa'}: error vs oracle", loc="left", fontsize=9)
        ax.set_xlabel("seconds since the live stream started")
        ax.set_ylabel("error (sum |Δ| cents)")
        ax.legend(fontsize=7)
    for key, style in (("correction_p50_s", "-"), ("correction_max_s", ":")):
        _per_setting(delay_ax, result, settings, key, style, key.removeprefix("correction_").removesuffix("_s"))
    _axes(delay_ax, settings, "seconds", "storm events: time until their windows were right")
    _per_setting(state_ax, result, settings, "state_bytes", "-", "state (measured)")
    _per_setting(state_ax, result, settings, "speed_state_bytes", "-", "speed-layer state (measured)", marker="^")
    _per_setting(state_ax, result, settings, "open_window_state_bytes", "--", "state in open windows (derived)", marker="s")
    _axes(state_ax, settings, "bytes", "state held at the end of the run")
    figure.suptitle(f"late-storm: {QUESTION}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def _per_setting(ax: Axes, result: DrillResult, settings: list[int], key: str, style: str, what: str,
                 marker: str = "o") -> None:
    """One line per architecture that has evidence `key`: its value against the allowed lateness."""
    for arch in (LAMBDA, KAPPA):
        points = [(s, r.evidence.get(key)) for s in settings for r in result.runs if r.arch == f"{arch}@{lateness_label(s)}"]
        points = [(s, v) for s, v in points if v is not None]
        if points:
            ax.plot([s for s, _ in points], [v for _, v in points], style, marker=marker, color=ARCH_COLORS[arch],
                    label=f"{'Lambda' if arch == LAMBDA else 'Kappa'} {what}")


def _axes(ax: Axes, settings: list[int], ylabel: str, title: str) -> None:
    ax.set_xscale("log")
    ax.set_xticks(settings, [lateness_label(s) for s in settings])
    ax.minorticks_off()
    ax.set_xlabel("allowed lateness")
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.set_title(title, loc="left", fontsize=9)
    ax.legend(fontsize=7)


register(Drill("late-storm", QUESTION, "a sweep of allowed lateness (60 s … 48 h) under a storm of late events: what "
               "Lambda leaves to batch and how long it stays wrong, Kappa's state and correction delay", run_late_storm,
               plot_late_storm))
