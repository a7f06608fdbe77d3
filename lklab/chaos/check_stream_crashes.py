"""`stream-crashes`: exactly-once, as lklab scopes it, through `kill -9`s of the stream processors.

One paced live stream (the seed's lateness profile, duplicates, corrections that move events
to other windows) feeds the Faust speed worker and one live Kappa job (revenue_per_minute v1).
Two independent loops, one per layer, wait a random while (random.Random(seed)), SIGKILL the
process group while records flow, restart it at once and time its recovery: from the kill until
the restarted process has committed, in the serving store, progress past every offset the log
held at the kill. The stream stops once both loops are done; when both layers have caught up
with the log, what each serves is compared with the oracle over the events produced.

Definitions (each layer, after catch-up):
- served views equal the oracle: every view the layer keeps, row for row, against
  lklab.core.oracle over the acknowledged events. The speed layer leaves windows that were
  already final (older than its watermark minus the allowed lateness) to the batch layer; those
  windows are left out, after checking that each really is final.
- events lost: acknowledged events absent from the layer's per-event state (or held there at an
  older version than the newest one acknowledged), plus payment events missing from their
  minute's contributing-event count in revenue_per_minute (the oracle's count minus the served
  one, where positive).
- events double-counted: payment events extra in their minute's count (served minus oracle,
  where positive).
- records applied other than once: |records the layer's sink applied (its `processed` and
  `dead_lettered` counters, committed with the offsets) minus records the log acknowledged|.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

from sqlalchemy import Engine, select

from lklab import views
from lklab.chaos.registry import ChaosContext, ChaosError, Check, register
from lklab.chaos.result import CheckResult, Figure, at_most, equal, holds, zero
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.core.events import Event
from lklab.drills.lab import drill_settings
from lklab.drills.sink import diff
from lklab.drills.stream import LiveStream, StreamShape, workload_for
from lklab.engine.outputs import read_output
from lklab.engine.sink import load_versions, read_late_windows, read_view
from lklab.kappa import jobs
from lklab.kappa.freshness import running_pid
from lklab.kappa.names import output_name, replay_scope
from lklab.lambda_arch import speed
from lklab.log import kafka_io
from lklab.log.kafka_io import Offsets
from lklab.serving import progress
from lklab.serving.store import make_engine, speed_view_rows

VIEW = "revenue_per_minute"  # the Kappa job's view, and the one whose per-window event counts are checked
VERSION = 1
SPEED, KAPPA = "speed", "kappa"
RECOVERY_LIMIT_S = 120.0  # a layer not caught up this long after a kill counts as never recovered (None)
CATCH_UP_S = 180.0  # after the stream: how long each layer gets to consume the rest of the log
WORKLOAD_START = datetime(2026, 11, 30, 23, 50, tzinfo=timezone.utc)  # the live stream crosses midnight: day windows close


@dataclass(frozen=True)
class Plan:
    kills: int  # per layer
    shape: StreamShape  # an upper bound: the stream stops once both layers' kills are done
    recovery_bound_s: float
    dwell_s: dict[str, tuple[float, float]]  # per layer: the random wait before each kill (s)


# Recovery is bounded at 30 s: a restarted speed worker waits ~10 s for Kafka's group coordinator
# to expire the killed member (Faust's 10 s session timeout); a Kappa job assigns its partitions
# itself and resumes in a few seconds.
PLANS = {
    "small": Plan(2, StreamShape(backlog_min=5, live_min=40, rides_per_minute=30, speedup=20), 30.0,
                  {SPEED: (0.5, 2.0), KAPPA: (2.0, 6.0)}),
    "full": Plan(20, StreamShape(backlog_min=10, live_min=200, rides_per_minute=40, speedup=20), 30.0,
                 {SPEED: (0.5, 2.5), KAPPA: (3.0, 10.0)}),
}


@dataclass
class Layer:
    """A stream process under the kill loop: its name, its consumer scope in the serving store
    (per-event state, offsets and counters), and how to start it and find its pid."""

    name: str
    scope: str
    start: Callable[[], int]
    pid: Callable[[], int | None]
    stop: Callable[[], object]


@dataclass
class Kill:
    layer: str
    t: float  # seconds since the check began
    pid: int
    stream_live: bool  # the paced stream was producing when the kill landed
    log_end: Offsets  # the log's end offsets right after the kill: the restarted process must pass them
    committed: Offsets  # what the killed process had committed: log_end minus this was in flight or unread
    new_pid: int | None = None
    restart_s: float | None = None  # kill → the restarted process is up (speed: partitions assigned; Kappa: beating)
    recovery_s: float | None = None  # kill → committed progress past log_end; None: not within RECOVERY_LIMIT_S

    @property
    def uncommitted(self) -> int:
        return sum(max(end - self.committed.get(p, 0), 0) for p, end in self.log_end.items())


def layers(settings: Settings) -> dict[str, Layer]:
    kappa_output = output_name(VIEW, VERSION)
    return {
        SPEED: Layer(SPEED, settings.speed_group, lambda: speed.start(settings), lambda: speed.read_pid(settings),
                     lambda: speed.stop(settings)),
        KAPPA: Layer(KAPPA, replay_scope(VIEW, VERSION), lambda: jobs.start(settings, VIEW, VERSION),
                     lambda: running_pid(settings, kappa_output), lambda: jobs.stop(settings, VIEW, VERSION)),
    }


# ---- the kill loop -----------------------------------------------------------------------------

def committed_offsets(engine: Engine, settings: Settings, scope: str) -> Offsets:
    with engine.connect() as conn:
        return progress.next_offsets(conn, scope, settings.topic)


def passed(committed: Offsets, target: Offsets) -> bool:
    return all(committed.get(p, 0) >= end for p, end in target.items())


def wait_passed(engine: Engine, settings: Settings, layer: Layer, target: Offsets, timeout_s: float) -> bool:
    """Until the layer has committed progress past `target` on every partition, while running."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if passed(committed_offsets(engine, settings, layer.scope), target) and layer.pid() is not None:
            return True
        time.sleep(0.1)
    return False


def restart(layer: Layer, attempts: int = 3) -> int:
    """Start the layer again, as an orchestrator would at once; a start that fails is retried."""
    for attempt in range(1, attempts + 1):
        try:
            return layer.start()
        except (speed.SpeedError, jobs.JobError) as exc:
            if attempt == attempts:
                raise ChaosError(f"{layer.name} did not restart after a kill ({attempts} attempts): {exc}") from None
    raise AssertionError("unreachable")


def kill_9(layer: Layer, wait_s: float = 15.0) -> int:
    """SIGKILL the layer's process group (no shutdown, no last checkpoint or offset commit) and
    wait until it is gone."""
    pid = layer.pid()
    if pid is None:
        raise ChaosError(f"{layer.name} was not running when its kill was due")
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while layer.pid() is not None:
        if time.monotonic() > deadline:
            raise ChaosError(f"{layer.name} (pid {pid}) still ran {wait_s:.0f}s after SIGKILL")
        time.sleep(0.05)
    return pid


def kill_and_recover(ctx: ChaosContext, settings: Settings, engine: Engine, layer: Layer, stream: LiveStream) -> Kill:
    """One kill -9, the restart at once, and the time until the new process has committed past
    what the log held at the kill."""
    live = stream.running
    began = time.monotonic()
    pid = kill_9(layer)
    kill = Kill(layer.name, round(began - ctx.began, 2), pid, live, kafka_io.run(kafka_io.end_offsets(settings)),
                committed_offsets(engine, settings, layer.scope))
    kill.new_pid = restart(layer)
    kill.restart_s = round(time.monotonic() - began, 2)
    if wait_passed(engine, settings, layer, kill.log_end, RECOVERY_LIMIT_S - kill.restart_s):
        kill.recovery_s = round(time.monotonic() - began, 2)
    recovered = f"caught up in {kill.recovery_s}s" if kill.recovery_s is not None else "NOT caught up"
    ctx.say(f"kill -9 {layer.name} pid {pid} ({kill.uncommitted} records uncommitted); up again as {kill.new_pid} "
            f"in {kill.restart_s}s; {recovered}")
    return kill


def kill_loop(ctx: ChaosContext, settings: Settings, layer: Layer, plan: Plan, rng: random.Random, stream: LiveStream,
              stop: threading.Event) -> list[Kill]:
    """`plan.kills` kills of one layer, each after a random wait; the next waits for the recovery."""
    engine = make_engine(settings)
    kills: list[Kill] = []
    try:
        for _ in range(plan.kills):
            if stop.wait(rng.uniform(*plan.dwell_s[layer.name])):
                break
            kills.append(kill_and_recover(ctx, settings, engine, layer, stream))
    finally:
        engine.dispose()
    return kills


# ---- the comparison -----------------------------------------------------------------------------

@dataclass
class Verdict:
    """One layer against the oracle, after catch-up."""

    views_equal: bool
    detail: str
    lost_from_state: int
    lost_from_counts: int
    double_counted: int
    applied: int
    evidence: dict = field(default_factory=dict)

    @property
    def lost(self) -> int:
        return self.lost_from_state + self.lost_from_counts


def keyed(rows: list[tuple]) -> dict[tuple, object]:
    return {(entity, window): value for entity, window, value in rows}


def event_counts(engine: Engine, target: str) -> dict[tuple, int]:
    """Contributing events per (city, minute) of a revenue_per_minute output, as the sink counted them."""
    t = speed_view_rows
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.entity, t.c.window_start, t.c.events).where(t.c.view == target, t.c.events != 0))
        return {(entity, window): n for entity, window, n in rows}


def oracle_event_counts(delivered: list[Event]) -> dict[tuple, int]:
    """Final events per (city, minute) that the oracle's revenue_per_minute adds up."""
    counts: Counter = Counter()
    for event in oracle.final_events(delivered):
        counts.update(oracle.for_view(VIEW, [event]).keys())
    return dict(counts)


def newest_versions(delivered: list[Event]) -> dict[str, int]:
    best: dict[str, int] = {}
    for event in delivered:
        best[event.event_id] = max(best.get(event.event_id, 0), event.event_version)
    return best


def state_shortfall(engine: Engine, scope: str, delivered: list[Event]) -> list[str]:
    """Acknowledged events the layer's per-event state lacks, or holds at an older version."""
    with engine.connect() as conn:
        held = load_versions(conn, scope)
    return sorted(eid for eid, version in newest_versions(delivered).items() if held.get(eid, 0) < version)


def judge(engine: Engine, layer: Layer, delivered: list[Event], compared: dict[str, tuple[dict, dict]], target: str,
          left_out: set, caught_up: bool, evidence: dict) -> Verdict:
    """A layer's outputs (view → (served, oracle)) and state against the oracle."""
    comparisons = {name: oracle.compare(served, expected) for name, (served, expected) in compared.items()}
    counted = diff(drop(event_counts(engine, target), left_out), drop(oracle_event_counts(delivered), left_out))
    missing = state_shortfall(engine, layer.scope, delivered)
    counters = progress.read_counters(engine, layer.scope)
    equal_all = caught_up and all(c.equal for c in comparisons.values())
    rows = sum(c.rows_expected for c in comparisons.values())
    detail = (f"{'yes' if equal_all else 'NO'}: {len(comparisons)} view(s), {rows:,} rows"
              + ("" if caught_up else "; NOT caught up with the log"))
    return Verdict(equal_all, detail, len(missing), counted.undercount, counted.overcount,
                   counters[progress.PROCESSED] + counters[progress.DEAD_LETTERED],
                   {**evidence, "caught_up": caught_up, "views": {name: str(c) for name, c in comparisons.items()},
                    "state_missing_sample": missing[:10], "count_gaps": asdict(counted), "counters": counters})


def drop(rows: dict, keys: set) -> dict:
    return {k: v for k, v in rows.items() if k not in keys}


def judge_speed(engine: Engine, settings: Settings, layer: Layer, delivered: list[Event], caught_up: bool) -> Verdict:
    """Every speed view on the windows it did not leave to batch; each window it left must be final."""
    final_through = speed.status(settings).final_through
    compared, left_by_view, not_final = {}, {}, []
    for name, spec in views.SPEED_LAYER.items():
        left = set(read_late_windows(engine, name))
        not_final += [(name, key) for key in left if not spec.is_final(key[1], final_through)]
        left_by_view[name] = left
        compared[name] = (drop(keyed(read_view(engine, name)), left), drop(oracle.for_view(name, delivered), left))
    verdict = judge(engine, layer, delivered, compared, VIEW, left_by_view[VIEW], caught_up,
                    {"final_through": final_through.isoformat() if final_through else None,
                     "windows_left_to_batch": {name: len(left) for name, left in left_by_view.items()},
                     "left_to_batch_but_open": [f"{name} {entity} {w.isoformat()}" for name, (entity, w) in not_final][:10]})
    if not_final:
        verdict.views_equal = False
        verdict.detail += f"; {len(not_final)} open window(s) left to batch"
    return verdict


def judge_kappa(engine: Engine, layer: Layer, delivered: list[Event], caught_up: bool) -> Verdict:
    target = output_name(VIEW, VERSION)
    served = keyed(read_output(engine, VIEW, target))
    return judge(engine, layer, delivered, {target: (served, oracle.for_view(VIEW, delivered))}, target, set(), caught_up, {})


# ---- the run ------------------------------------------------------------------------------------

def describe(stream: LiveStream, settings: Settings) -> dict:
    """What the produced stream held: duplicates, corrections (those that moved an event to
    another minute or city), and deliveries later than the allowed lateness."""
    delivered = stream.timeline.events
    windows: dict[str, set] = {}
    seen, duplicates = set(), 0
    for event in delivered:
        duplicates += (event.event_id, event.event_version) in seen
        seen.add((event.event_id, event.event_version))
        windows.setdefault(event.event_id, set()).add(frozenset(oracle.for_view(VIEW, [event])))
    versions = Counter(eid for eid, _ in seen)
    late = sum(s > settings.allowed_lateness_s for s in stream.workload.lateness_s()[:len(delivered)])  # deliveries are in arrival order
    return {"events_acknowledged": len(delivered), "event_ids": len(versions), "duplicate_deliveries": duplicates,
            "corrected_events": sum(n > 1 for n in versions.values()),
            "window_moving_corrections": sum(len(w - {frozenset()}) > 1 for w in windows.values()),
            "deliveries_later_than_allowed_lateness": late, "allowed_lateness_s": settings.allowed_lateness_s}


def run_stream_crashes(ctx: ChaosContext) -> CheckResult:
    plan = PLANS[ctx.size]
    settings = drill_settings(ctx.settings)  # the drills' live settings: Kappa checkpoints every 0.25 s, small speed batches
    by_name = layers(settings)
    with ExitStack() as stack:
        engine = make_engine(settings)
        stack.callback(engine.dispose)
        stream = start_live(ctx, settings, plan, by_name, stack)
        kills = kill_both(ctx, settings, plan, by_name, stream)
        ran_out = not stream.running
        stream.stop()
        facts = {**describe(stream, settings), "stream_stopped_at_s": round(time.monotonic() - ctx.began, 1),
                 "stream_ran_out": ran_out, "speedup": plan.shape.speedup, "rides_per_minute": plan.shape.rides_per_minute}
        verdicts = judge_after_catch_up(ctx, engine, settings, by_name, list(stream.timeline.events))
    if not facts["window_moving_corrections"]:
        raise ChaosError("the stream held no correction that moved an event to another window: nothing tested them")
    return ctx.result(fault=f"kill -9 of the Faust speed worker and of the live Kappa job {output_name(VIEW, VERSION)}, "
                            "at random instants under a paced stream; restarted at once",
                      trials=sum(len(k) for k in kills.values()),
                      figures=figures(plan, kills, verdicts, facts["events_acknowledged"]),
                      evidence={"workload": facts,
                                "kills": sorted(({**asdict(k), "uncommitted": k.uncommitted} for mine in kills.values() for k in mine),
                                                key=lambda k: k["t"]),
                                "layers": {name: {**v.evidence, "lost_from_state": v.lost_from_state,
                                                  "lost_from_counts": v.lost_from_counts} for name, v in verdicts.items()}})


def start_live(ctx: ChaosContext, settings: Settings, plan: Plan, by_name: dict[str, Layer], stack: ExitStack) -> LiveStream:
    """The backlog produced, both layers started on it, the paced live stream running; `stack` stops them all."""
    kafka_io.run(kafka_io.ensure_topics(settings))
    stream = LiveStream(settings, workload_for(plan.shape, ctx.seed, WORKLOAD_START), plan.shape, ctx.began)
    stack.callback(stream.stop)
    ctx.say(f"backlog: {stream.produce_backlog():,} events; starting the speed worker and {output_name(VIEW, VERSION)}")
    stack.callback(in_parallel, [layer.stop for layer in by_name.values()])
    in_parallel([layer.start for layer in by_name.values()])
    stream.start()
    ctx.say(f"live stream at {plan.shape.speedup:g}x; {plan.kills} kill -9s of each layer")
    return stream


def in_parallel(calls: list[Callable[[], object]]) -> None:
    """Run the calls at once and wait for all (the first failure is raised)."""
    with ThreadPoolExecutor(len(calls), thread_name_prefix="chaos-stream") as pool:
        for future in [pool.submit(call) for call in calls]:
            future.result()


def kill_both(ctx: ChaosContext, settings: Settings, plan: Plan, by_name: dict[str, Layer], stream: LiveStream) -> dict[str, list[Kill]]:
    """Both layers' kill loops side by side, each on its own draws from the seed."""
    rng = random.Random(ctx.seed)
    draws = {name: random.Random(rng.random()) for name in by_name}
    stop = threading.Event()
    with ThreadPoolExecutor(len(by_name), thread_name_prefix="chaos-kill") as killing:
        loops = {name: killing.submit(kill_loop, ctx, settings, layer, plan, draws[name], stream, stop)
                 for name, layer in by_name.items()}
        wait(loops.values(), return_when=FIRST_EXCEPTION)
        stop.set()  # a loop that failed stops the other at its next wait
        return {name: loop.result() for name, loop in loops.items()}


def judge_after_catch_up(ctx: ChaosContext, engine: Engine, settings: Settings, by_name: dict[str, Layer],
                         delivered: list[Event]) -> dict[str, Verdict]:
    """Each layer, once it has committed progress past the log's end (or CATCH_UP_S passed), against the oracle."""
    end = kafka_io.run(kafka_io.end_offsets(settings))
    ctx.say(f"stream stopped: {len(delivered):,} events acknowledged; waiting for both layers to pass the log's end")
    caught_up = {name: wait_passed(engine, settings, layer, end, CATCH_UP_S) for name, layer in by_name.items()}
    verdicts = {SPEED: judge_speed(engine, settings, by_name[SPEED], delivered, caught_up[SPEED]),
                KAPPA: judge_kappa(engine, by_name[KAPPA], delivered, caught_up[KAPPA])}
    ctx.say("; ".join(f"{name}: {v.detail}, {v.lost} lost, {v.double_counted} double-counted" for name, v in verdicts.items()))
    return verdicts


def figures(plan: Plan, kills: dict[str, list[Kill]], verdicts: dict[str, Verdict], acknowledged: int) -> list[Figure]:
    out: list[Figure] = []
    for name, label in ((SPEED, "speed layer"), (KAPPA, f"Kappa {output_name(VIEW, VERSION)}")):
        v, mine = verdicts[name], kills[name]
        recoveries = [k.recovery_s for k in mine]
        longest = None if not recoveries or None in recoveries else max(recoveries)
        out += [
            holds(f"{label}: served views equal the oracle after catch-up", v.views_equal, v.detail),
            zero(f"{label}: events lost (not in its per-event state, or short in their minute's count)", v.lost, "events"),
            zero(f"{label}: events double-counted (extra in their minute's count)", v.double_counted, "events"),
            zero(f"{label}: records applied other than once (|applied - acknowledged|)", abs(v.applied - acknowledged), "records"),
            equal(f"{label}: kills while records flowed", sum(k.stream_live for k in mine), plan.kills),
            at_most(f"{label}: longest recovery (kill -> committed past the log end at the kill)", longest, plan.recovery_bound_s),
        ]
    return out


register(Check(
    name="stream-crashes",
    title="exactly-once (idempotent sinks, offsets committed with results) holds through kill -9s of the stream processors",
    promise=("Flink: checkpointed exactly-once (operator state and source offsets in one consistent checkpoint; a failure "
             "rewinds both), end to end only with a transactional or idempotent sink; Kafka Streams exactly_once_v2: "
             "consumed offsets, state changes and output committed in one Kafka transaction"),
    scope=("lklab's speed layer (each batch) and Kappa jobs (each checkpoint) write view deltas, per-event state, counters "
           "and the consumed offsets in ONE serving-store transaction and skip records below the stored offsets; the "
           "per-event state (event_id -> version and contribution) applies a record only if its version is newer, "
           "retracting what the older one added. So a kill -9 anywhere loses at most uncommitted work, which is read "
           "again, and a re-delivered record changes nothing. Faust's own Kafka offset commits are at-least-once (acked "
           "after the sink commits); a Kappa job seeks to the store's offsets. Narrower than the promise: exactly-once "
           "covers the serving-store views of one topic (compared here as stored, what the API reads), not the "
           "dead-letter topic (a dead letter can be sent again after a crash) nor anything reading Faust's consumer-group "
           "offsets; the speed layer leaves windows already final (watermark minus allowed lateness) to the batch layer, "
           "so those windows are not compared; measured with one speed worker and the SQLite store"),
    run=run_stream_crashes,
))
