"""The `sink` drill: what happens if your sink is not idempotent?

One workload on the real broker, one at-least-once consumer loop (lklab.drills.sink_consumer) and
three sinks of revenue_per_minute, each consuming the same offsets with its own consumer group:
naive (add each event), insert-or-ignore (store each event_id once) and lklab's versioned,
offset-fenced upsert (lklab.engine.sink). The harness `kill -9`s each consumer every K records
(K drawn around a size-dependent mean from the seed; the same draws for every sink) and restarts
it until the log is consumed, then scores each sink's totals against the oracle.

Two references per sink separate the two ways a sink goes wrong:
- the oracle (lklab.core.oracle over the workload's truth): overcount, undercount, wrong windows;
- the sink's own logic fed every record exactly once (no crash): what it gets wrong beyond that
  is the damage of re-delivery alone (`redelivery_overcount_cents`).
"""
from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lklab.core import oracle, processes
from lklab.core.config import Settings
from lklab.core.events import Event, EventError, PAYMENT_TYPES, parse_event
from lklab.core.provenance import git_sha
from lklab.drills.registry import Drill, DrillContext, DrillError, register
from lklab.drills.result import Action, ArchRun, DrillResult, Fault, Figures
from lklab.drills.sink_consumer import IGNORE, LKLAB, NAIVE, SINKS, VIEW, SinkState, Totals, open_sink
from lklab.log import kafka_io
from lklab.log.generator import GeneratorConfig, Workload, bad_lines, generate
from lklab.log.kafka_io import Offsets
from lklab.log.produce import produce_events

QUESTION = "What happens if your sink is not idempotent? (A: nothing, Kafka prevents duplicates; B: revenue is overcounted; C: the job will not restart)"
SUMMARY = ("one at-least-once consumer, three sinks of revenue_per_minute (naive add, INSERT OR IGNORE, lklab's "
           "versioned offset-fenced upsert), kill -9 every K records; each sink's totals against the oracle")
LABELS = {NAIVE: "naive (add each event)", IGNORE: "INSERT OR IGNORE by event_id", LKLAB: "lklab versioned, offset-fenced upsert"}
_ROOT = Path(__file__).resolve().parents[2]
MAX_INCARNATIONS = 200  # a consumer that never gets past its kills is a bug, not a long drill


@dataclass(frozen=True)
class Shape:
    rides_per_minute: int  # over the generator's 10 minutes: ~5 deliveries a ride
    batch: int  # records per sink transaction
    kill_mean: int  # records a consumer applies between kills, on average

    @property
    def commit_every(self) -> int:
        """Records between Kafka offset commits: well under the shortest run between kills, so
        every incarnation commits some progress."""
        return self.kill_mean // 4


SHAPES = {"small": Shape(rides_per_minute=60, batch=50, kill_mean=400),  # ~3.1k deliveries, ~7 kills
          "default": Shape(rides_per_minute=1000, batch=500, kill_mean=8000)}  # ~52k deliveries, ~7 kills


# --- the log slice the drill consumed ----------------------------------------------------------

@dataclass
class LogSlice:
    """The drill's records, [start, end) per partition, as events (None: the record does not parse)."""

    start: Offsets
    end: Offsets
    events: dict[int, list[Event | None]]  # per partition, index = offset - start

    @classmethod
    def read(cls, settings: Settings, start: Offsets, end: Offsets) -> LogSlice:
        events: dict[int, list[Event | None]] = {p: [] for p in end}
        for record in kafka_io.run(kafka_io.read_range(settings, start, end)):
            try:
                events[record.partition].append(parse_event(record.value))
            except EventError:
                events[record.partition].append(None)
        return cls(start, end, events)

    def prefix(self, next_offsets: Offsets) -> list[Event]:
        """The events below next_offsets (every record a sink has applied at least once)."""
        return [e for p, found in self.events.items()
                for e in found[:max(0, next_offsets.get(p, 0) - self.start.get(p, 0))] if e is not None]

    def everything(self) -> list[Event]:
        return self.prefix(self.end)

    def first_versions(self) -> list[Event]:
        """Each event_id's first delivered version (all of an event's versions share its partition: key = ride_id)."""
        seen: dict[str, Event] = {}
        for event in self.everything():
            seen.setdefault(event.event_id, event)
        return list(seen.values())


def once_through(sink: str, log: LogSlice) -> Totals:
    """The sink's own logic fed every record exactly once: what it would hold had nothing crashed."""
    if sink == NAIVE:
        return VIEW.measure.evaluate(VIEW, log.everything())  # every delivery added, no dedup
    if sink == IGNORE:
        return VIEW.measure.evaluate(VIEW, log.first_versions())
    return oracle.revenue_per_minute(log.everything())


@dataclass(frozen=True)
class Diff:
    overcount: int  # cents: sum of (sink - expected) over windows where the sink is higher
    undercount: int
    wrong_windows: int


def diff(actual: Totals, expected: Totals) -> Diff:
    """How a sink's totals differ from the expected ones (a window absent on one side counts as 0)."""
    gaps = [actual.get(k, 0) - expected.get(k, 0) for k in actual.keys() | expected.keys()]
    return Diff(sum(g for g in gaps if g > 0), -sum(g for g in gaps if g < 0), sum(1 for g in gaps if g))


# --- one sink under kill -9 --------------------------------------------------------------------

@dataclass
class SinkRun:
    name: str
    state: SinkState | None = None
    # (records handed, overcount, undercount) against the oracle of what it had consumed: at the
    # start, at each kill (the consumer is dead, so the state is still) and at the end
    timeline: list[tuple[int, int, int]] = field(default_factory=lambda: [(0, 0, 0)])
    kill_at: list[int] = field(default_factory=list)  # records handed when each kill landed
    actions: list[Action] = field(default_factory=list)
    started_s: float = 0.0
    finished_s: float = 0.0


class _Harness:
    """Runs one sink's consumer, kills it with SIGKILL once it has applied K records, restarts it."""

    def __init__(self, ctx: DrillContext, name: str, settings: Settings, log: LogSlice, shape: Shape, clock: float) -> None:
        self.ctx, self.name, self.settings, self.log, self.shape, self.clock = ctx, name, settings, log, shape, clock
        self.group = f"lklab-drill-sink-{uuid.uuid4().hex[:8]}-{name}"
        self.sink = open_sink(name, settings, self.group)  # its schema exists before the consumer starts
        self.kills = random.Random(ctx.seed)  # the same draws for every sink: the same fault
        self.run = SinkRun(name)
        self.log_file = settings.home / f"{name}.log"

    def now(self) -> float:
        return round(time.monotonic() - self.clock, 3)

    def argv(self) -> list[str]:
        return [sys.executable, "-m", "lklab.drills.sink_consumer", "--sink", self.name, "--group", self.group,
                "--start", json.dumps(self.log.start), "--end", json.dumps(self.log.end),
                "--batch", str(self.shape.batch), "--commit-every", str(self.shape.commit_every)]

    def sample(self) -> SinkState:
        state = self.sink.read()
        gap = diff(state.totals, oracle.revenue_per_minute(self.log.prefix(state.next_offsets)))
        self.run.timeline.append((state.handed, gap.overcount, gap.undercount))
        return state

    def execute(self) -> SinkRun:
        self.run.started_s = self.now()
        try:
            for _ in range(MAX_INCARNATIONS):
                if not self._incarnation():
                    break
            else:
                raise DrillError(f"sink {self.name}: still not done after {MAX_INCARNATIONS} restarts; see {self.log_file}")
            self.run.state = self.sample()
        finally:
            self.sink.engine.dispose()
        self.run.finished_s = self.now()
        return self.run

    def _incarnation(self) -> bool:
        """One run of the consumer; True if it was killed (and must be restarted)."""
        kill_after = self.kills.randint(self.shape.kill_mean // 2, self.shape.kill_mean * 3 // 2)
        env = processes.python_env(_ROOT, self.settings.to_env())
        with open(self.log_file, "ab") as err:
            proc = subprocess.Popen(self.argv(), stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                    env=env, text=True)
        try:
            applied, killed = 0, False
            # Nothing else happens while it runs: the kill lands within a batch or two of K.
            for line in proc.stdout:  # one line per committed transaction: its record count
                applied += int(line)
                if not killed and applied >= kill_after:
                    proc.send_signal(signal.SIGKILL)  # kill -9: no shutdown, no last offset commit
                    killed = True
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if code == -signal.SIGKILL:
            state = self.sample()
            self.run.kill_at.append(state.handed)
            self.run.actions.append(Action(t=self.now(), by="harness", what=f"kill -9 {self.name} consumer (pid {proc.pid}) after "
                                                                            f"{applied} records; restart"))
            return True
        if code != 0:
            raise DrillError(f"sink {self.name}: consumer exited with code {code}: {processes.log_tail(self.log_file)}")
        return False


# --- the drill ---------------------------------------------------------------------------------

def _workload(ctx: DrillContext, shape: Shape) -> tuple[Workload, dict]:
    workload = generate(GeneratorConfig(seed=ctx.seed, rides_per_minute=shape.rides_per_minute))
    corrected = [e for e in workload.truth if e.event_version > 1]
    ids = [e.event_id for e in workload.deliveries]
    described = {
        "deliveries": len(workload.deliveries), "events": len(workload.truth),
        "duplicate_deliveries": len(ids) - len(set(ids)) - len(corrected),
        "corrections": len(corrected), "payment_corrections": sum(e.event_type in PAYMENT_TYPES for e in corrected),
        "duration_s": workload.config.duration_s, "rides_per_minute": shape.rides_per_minute,
        "bad_records": len(bad_lines()), "batch": shape.batch, "kill_mean_records": shape.kill_mean,
        "commit_every_records": shape.commit_every,
    }
    return workload, described


async def _produce_unvalidated(settings: Settings, values: list[bytes]) -> None:
    """Records straight onto the topic, past the import's validation: a producer that does not validate."""
    async with kafka_io.producer(settings) as producer:
        for value in values:
            await producer.send_and_wait(settings.topic, key=b"drill-sink-bad-input", value=value)


def _produce(ctx: DrillContext, workload: Workload) -> tuple[Offsets, Offsets]:
    """The workload onto the drill's topic, then a few records that break the event contract
    (no consumer may crash on them); the offsets they occupy, [start, end) per partition."""
    kafka_io.run(kafka_io.ensure_topics(ctx.settings))
    start = kafka_io.run(kafka_io.end_offsets(ctx.settings))
    report = produce_events(ctx.settings, workload.deliveries)
    if report.dead_lettered:
        raise DrillError(f"{report.dead_lettered} generated events were dead-lettered: {report.reasons[:1]}")
    kafka_io.run(_produce_unvalidated(ctx.settings, [line.encode() for line, _ in bad_lines()]))
    return start, kafka_io.run(kafka_io.end_offsets(ctx.settings))


def corrections_lost(truth: list[Event], held: dict[str, int] | None) -> int | None:
    """Corrected payment events (final version > 1) whose final version the sink does not hold;
    None for a sink that holds no versions (naive adds every version it is handed)."""
    if held is None:
        return None
    return sum(1 for e in truth if e.event_version > 1 and e.event_type in PAYMENT_TYPES and held.get(e.event_id) != e.event_version)


def _arch_run(run: SinkRun, expected: Totals, log: LogSlice, truth: list[Event]) -> ArchRun:
    state = run.state
    assert state is not None
    wrong = diff(state.totals, expected)
    redelivery = diff(state.totals, once_through(run.name, log))
    lost = corrections_lost(truth, state.held_versions)
    payment_ids = {e.event_id for e in log.everything() if VIEW.contribution(e) is not None}
    evidence = {
        "overcount_cents": wrong.overcount, "undercount_cents": wrong.undercount, "wrong_windows": wrong.wrong_windows,
        "windows": len(expected.keys() | state.totals.keys()),
        "corrections_lost": lost, "kills": len(run.kill_at), "records_consumed": state.handed,
        "records_reprocessed": state.reprocessed,
        "redelivery_overcount_cents": redelivery.overcount, "redelivery_undercount_cents": redelivery.undercount,
        "counters": state.counters, "kill_at_records": run.kill_at,
        "timeline": [list(point) for point in run.timeline],
    }
    figures = Figures(events_reprocessed=state.reprocessed, max_error=wrong.overcount + wrong.undercount)
    if run.name == NAIVE:
        figures.events_double_counted = state.counters["payments_added"] - len(payment_ids)
    else:
        figures.events_lost = lost
    return ArchRun(arch=run.name, label=LABELS[run.name], actions=run.actions, figures=figures, evidence=evidence)


def _lessons(runs: dict[str, ArchRun]) -> list[str]:
    naive, ignore, lklab = (runs[s].evidence for s in SINKS)
    return [
        f"naive: overcounts {naive['overcount_cents']:,} cents after {naive['kills']} kills, {naive['redelivery_overcount_cents']:,} of "
        f"them from {naive['records_reprocessed']:,} re-delivered records alone: Kafka does not prevent duplicates "
        "(at-least-once re-delivers what was written but not yet committed); the rest are duplicates and corrections added on top",
        f"INSERT OR IGNORE: {ignore['redelivery_overcount_cents']:,} cents overcounted from {ignore['records_reprocessed']:,} "
        f"re-delivered records, but {ignore['corrections_lost']} corrections lost ({ignore['overcount_cents']:,} cents over, "
        f"{ignore['undercount_cents']:,} under, {ignore['wrong_windows']} windows wrong): dedup by event_id also drops "
        "legitimate corrections",
        f"lklab: overcount {lklab['overcount_cents']:,}, undercount {lklab['undercount_cents']:,}, "
        f"{lklab['corrections_lost']} corrections lost after {lklab['kills']} kills "
        f"({lklab['records_reprocessed']:,} re-delivered records fenced by the offsets committed with the results)",
    ]


def _json_offsets(offsets: Offsets) -> dict[str, int]:
    return {str(p): o for p, o in sorted(offsets.items())}  # as JSON keeps them: a result reads back equal


def run_sink(ctx: DrillContext) -> DrillResult:
    began, clock = datetime.now(timezone.utc), time.monotonic()
    shape = SHAPES[ctx.size]
    workload, described = _workload(ctx, shape)
    ctx.say(f"producing {described['deliveries']:,} deliveries ({described['payment_corrections']} payment corrections)")
    start, end = _produce(ctx, workload)
    log = LogSlice.read(ctx.settings, start, end)
    expected = oracle.revenue_per_minute(workload.truth)
    if oracle.revenue_per_minute(log.everything()) != expected:
        raise DrillError(f"topic {ctx.settings.topic} does not hold the workload between offsets {start} and {end}")
    home = ctx.settings.home / "drills" / "sink"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    runs: dict[str, ArchRun] = {}
    fault_start = fault_end = 0.0
    for name in SINKS:
        settings = ctx.settings.model_copy(update={"home": home, "serving_url": f"sqlite:///{home / name}.db"})
        ctx.say(f"{name}: consuming with kill -9 every ~{shape.kill_mean:,} records")
        run = _Harness(ctx, name, settings, log, shape, clock).execute()
        runs[name] = _arch_run(run, expected, log, workload.truth)
        ctx.say(f"{name}: {len(run.kill_at)} kills; {runs[name].evidence['overcount_cents']:,} cents over, "
                f"{runs[name].evidence['undercount_cents']:,} under")
        fault_start, fault_end = fault_start or run.started_s, run.finished_s
    return DrillResult(
        drill="sink", question=QUESTION, size=ctx.size, seed=ctx.seed, started_at=began,
        wall_s=round(time.monotonic() - clock, 3), git_sha=git_sha(), versions=ctx.versions(), workload=described,
        fault=Fault(name="kill -9 every K records",
                    description=f"each sink's consumer is SIGKILLed after K records (K uniform in [{shape.kill_mean // 2:,}, "
                                f"{shape.kill_mean * 3 // 2:,}], seed {ctx.seed}, the same draws for every sink) and restarted from "
                                f"its committed Kafka offsets (committed after the write, every {shape.commit_every:,} records) "
                                "until the log is consumed",
                    start_s=fault_start, end_s=fault_end),
        runs=list(runs.values()), lessons=_lessons(runs),
        evidence={"oracle_windows": len(expected), "oracle_cents": sum(expected.values()), "start_offsets": _json_offsets(start),
                  "end_offsets": _json_offsets(end)},
    )


def plot_sink(result: DrillResult, path: Path) -> Path:
    """Per sink: overcount and undercount (cents, against the oracle of what it had consumed) as
    records were consumed, each kill a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(len(result.runs), 1, figsize=(9, 2.6 * len(result.runs)), sharex=True, squeeze=False)
    for ax, run in zip(axes[:, 0], result.runs):
        points = sorted(run.evidence["timeline"])
        xs = [p[0] for p in points]
        ax.plot(xs, [p[1] for p in points], marker=".", color="tab:red", label="overcount")
        ax.plot(xs, [p[2] for p in points], marker=".", color="tab:blue", label="undercount")
        for at in run.evidence["kill_at_records"]:
            ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(f"{run.label}: {run.evidence['overcount_cents']:,} ¢ over, {run.evidence['undercount_cents']:,} ¢ under, "
                     f"{run.evidence['kills']} kills (dashed)", fontsize=9)
        ax.set_ylabel("cents")
        ax.legend(loc="upper left", fontsize=8)
    axes[-1, 0].set_xlabel("records consumed (re-deliveries included)")
    fig.suptitle(f"sink drill ({result.size}, seed {result.seed}): {result.question.split('?')[0]}?", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


register(Drill(name="sink", question=QUESTION, summary=SUMMARY, run=run_sink, plot=plot_sink))
