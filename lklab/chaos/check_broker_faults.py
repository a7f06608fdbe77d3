"""`broker-faults`: the event log loses a broker, and no acknowledged event is lost or counted twice.

Part A, one broker: the check starts its own single-node broker (never the one it was given) and
SIGKILLs it in the middle of an import, at a random acknowledged batch (random.Random(seed));
restarts it on the same data directory; the import goes on (the producer retries through the
restart, or a fresh import sends a refused batch again, as a user re-runs `lklab produce`).

Part B, a 3-broker KRaft cluster (replication factor 3, min.insync.replicas 2, acks=all):
(1) during produce: the leader of a random partition is SIGKILLed mid-import; the import goes on
against the new leader; the log is read back while the node is still down (the surviving
replicas must hold every acknowledged event); the node is restarted and back in every in-sync
replica set before the next kill. (2) during consumption: the Faust speed worker and the live
Kappa job consume the paced import; the leader of partition 0, or the broker coordinating the
speed layer's consumer group, is SIGKILLed mid-stream; both consumers must go on without a
restart, catch up with the log while the node is down, and serve what the oracle computes.

Ground truth: an event is acknowledged when the import path of `lklab produce` (ProducerSession:
the same validation and acks=all idempotent producer) reports its batch accepted; the log is
read back from earliest; the views are compared with lklab.core.oracle over the acknowledged
events (the speed and Kappa verdicts of the `stream-crashes` check: per-event state, per-minute
event counts, every speed view).

Definitions:
- acknowledged events lost: per (event_id, event_version), acknowledged copies minus the copies
  the log holds, where positive, at any read-back (after the single broker's restart; with the
  killed cluster node still down).
- records duplicated in the log: copies the log holds beyond the times the check handed the
  event to a send; a retry inside one producer session that wrote twice shows here. A batch sent
  again by a new import after a refusal may legitimately be written twice (reported apart).
- longest produce stall: the longest wait for one batch's acknowledgement on the cluster.
"""
from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

from sqlalchemy import Engine

from lklab.chaos.check_stream_crashes import KAPPA, SPEED, Layer, Verdict, judge_kappa, judge_speed, layers, wait_passed
from lklab.chaos.registry import ChaosContext, ChaosError, Check, register
from lklab.chaos.result import CheckResult, Figure, at_most, equal, holds, zero
from lklab.core.config import Settings
from lklab.core.events import Event, parse_event
from lklab.core.processes import free_port, free_port_range
from lklab.drills.lab import drill_settings
from lklab.kappa.names import output_name
from lklab.log import broker as kafka_runtime
from lklab.log import kafka_io
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import ProducerSession
from lklab.serving.store import make_engine

BROKERS = 3
Key = tuple[str, int]  # (event_id, event_version): one delivery; the workload delivers some twice on purpose
MAX_REFUSALS = 5  # batches an import may have refused (each sent again by a new import) before the check gives up
IMPORT_S = 120.0  # an import must finish this long after its kill (a producer gives up on a batch after 40 s)
CATCH_UP_S = 90.0  # after a kill, how long each consumer gets to commit progress past the log's end
ISR_S = 60.0  # a restarted node must be back in every in-sync replica set within this
STALL_BOUND_S = 30.0


@dataclass(frozen=True)
class Plan:
    single_kills: int
    produce_kills: int
    consume_kills: int
    events_per_trial: int
    batch: int  # events per acknowledged batch
    pause_s: float  # between batches: the import is paced, so the kill lands with batches still to send


PLANS = {
    "small": Plan(single_kills=1, produce_kills=1, consume_kills=1, events_per_trial=300, batch=15, pause_s=0.1),
    "full": Plan(single_kills=3, produce_kills=3, consume_kills=3, events_per_trial=1500, batch=25, pause_s=0.05),
}


def key(event: Event) -> Key:
    return event.event_id, event.event_version


# ---- the import under the kill ------------------------------------------------------------------

@dataclass
class Ledger:
    """Per delivery: how often the workload delivers it, how often it was handed to a send (a
    refused batch is sent again) and how often Kafka acknowledged it; the acknowledged events in
    order (the oracle's input)."""

    planned: Counter[Key] = field(default_factory=Counter)
    sent: Counter[Key] = field(default_factory=Counter)
    acked: Counter[Key] = field(default_factory=Counter)
    acknowledged: list[Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def handed(self, batch: list[Event]) -> None:
        with self.lock:
            self.sent.update(map(key, batch))

    def ack(self, batch: list[Event]) -> None:
        with self.lock:
            self.acked.update(map(key, batch))
            self.acknowledged.extend(batch)


class PacedImport(threading.Thread):
    """Batches sent one after another, `pause_s` apart, through the import path of `lklab produce`
    (ProducerSession). A batch counts as acknowledged once its report accepts every event. A batch
    the producer gives up on is sent again by a new import, as a user re-runs `lklab produce`."""

    def __init__(self, settings: Settings, ledger: Ledger, batches: list[list[Event]], pause_s: float, kill_after: int) -> None:
        super().__init__(name="chaos-import", daemon=True)
        self.settings, self.ledger, self.batches, self.pause_s, self.kill_after = settings, ledger, batches, pause_s, kill_after
        self.kill_point = threading.Event()  # set once kill_after batches are acknowledged (or the import ended)
        self.acked_batches = 0
        self.stalls: list[float] = []  # seconds each acknowledged batch waited for its acknowledgement
        self.refusals: list[str] = []
        self.imports = 0
        self.error: BaseException | None = None
        for batch in batches:
            ledger.planned.update(map(key, batch))

    def run(self) -> None:
        try:
            pending = deque(self.batches)
            while pending:
                self._one_import(pending)
        except BaseException as exc:  # noqa: BLE001 - re-raised by finish() in the check's thread
            self.error = exc
        finally:
            self.kill_point.set()

    def _one_import(self, pending: deque[list[Event]]) -> None:
        with self._session() as session:
            while pending:
                if not self._send(session, pending[0]):
                    return  # this import stopped; the next sends the batch again
                pending.popleft()
                time.sleep(self.pause_s)

    @contextmanager
    def _session(self) -> Iterator[ProducerSession]:
        """A new import: opening it waits out a broker that is still down (up to IMPORT_S)."""
        deadline = time.monotonic() + IMPORT_S
        while True:
            session = ProducerSession(self.settings, source=f"chaos-import-{self.imports + 1}")
            try:
                session.__enter__()
                break
            except Exception as exc:  # noqa: BLE001 - Kafka not reachable yet: try again until the deadline
                if time.monotonic() > deadline:
                    raise ChaosError(f"a new import could not reach Kafka at {self.settings.bootstrap} for "
                                     f"{IMPORT_S:.0f}s: {type(exc).__name__}: {exc}") from None
                time.sleep(1.0)
        self.imports += 1
        try:
            yield session
        finally:
            try:
                session.__exit__(None, None, None)
            except Exception:  # noqa: BLE001 - closing a producer whose batch was refused may complain; the batch is re-sent
                pass

    def _send(self, session: ProducerSession, batch: list[Event]) -> bool:
        self.ledger.handed(batch)
        began = time.monotonic()
        try:
            report = session.send(batch)
        except Exception as exc:  # noqa: BLE001 - ProduceError, or a Kafka error before the records were sent
            self.refusals.append(f"{type(exc).__name__}: {str(exc)[:200]}")
            if len(self.refusals) > MAX_REFUSALS:
                raise ChaosError(f"the import had {len(self.refusals)} batches refused; the last: {self.refusals[-1]}") from None
            return False
        self.stalls.append(time.monotonic() - began)
        if report.accepted != len(batch):
            raise ChaosError(f"the import dead-lettered {report.dead_lettered} generated events: {report.reasons[:1]}")
        self.ledger.ack(batch)
        self.acked_batches += 1
        if self.acked_batches == self.kill_after:
            self.kill_point.set()
        return True

    def wait_kill_point(self) -> int:
        """Until kill_after batches are acknowledged; returns the batches still to send (0: the kill would miss)."""
        if not self.kill_point.wait(IMPORT_S):
            raise ChaosError(f"the import acknowledged {self.acked_batches} batches in {IMPORT_S:.0f}s, not {self.kill_after}")
        if self.error is not None:
            self.finish()
        return len(self.batches) - self.acked_batches

    def finish(self) -> None:
        self.join(IMPORT_S)
        if self.is_alive():
            raise ChaosError(f"the import did not finish within {IMPORT_S:.0f}s of the kill "
                             f"({self.acked_batches}/{len(self.batches)} batches acknowledged)")
        if isinstance(self.error, ChaosError):
            raise self.error
        if self.error is not None:
            raise ChaosError(f"the import failed: {type(self.error).__name__}: {self.error}") from self.error


def batches_of(events: list[Event], size: int) -> list[list[Event]]:
    return [events[i:i + size] for i in range(0, len(events), size)]


def segments(plan: Plan, trials: int, seed: int) -> list[list[list[Event]]]:
    """One generated workload (late events, duplicate deliveries, corrections) cut into one import
    per trial: a cluster's trials share a topic, so their event ids must not collide."""
    rides = -(-plan.events_per_trial * trials // 5)  # a ride delivers about 5 events
    events = generate(GeneratorConfig(seed=seed, duration_s=max(60, rides), rides_per_minute=60)).deliveries
    per = -(-len(events) // trials)
    return [batches_of(events[i * per:(i + 1) * per], plan.batch) for i in range(trials)]


def kill_after(rng: random.Random, batches: int) -> int:
    """The acknowledged batch after which the kill lands: in the import's first half, never before the second."""
    return rng.randint(2, max(2, batches // 2))


# ---- the log, read back -------------------------------------------------------------------------

def logged(settings: Settings) -> Counter[Key]:
    end = kafka_io.run(kafka_io.end_offsets(settings))
    return Counter(key(parse_event(r.value)) for r in kafka_io.run(kafka_io.read_range(settings, {}, end)))


@dataclass
class LogAudit:
    lost: set[Key] = field(default_factory=set)  # acknowledged, and missing at some read-back
    by_retry: int = 0  # copies beyond the sends: a retry within one producer session written twice
    by_rerun: int = 0  # copies beyond the workload's deliveries, within the sends: a refused batch sent again
    records: int = 0

    def read_back(self, settings: Settings, ledger: Ledger) -> Counter[Key]:
        held = logged(settings)
        with ledger.lock:
            self.lost |= {k for k, n in ledger.acked.items() if held[k] < n}
        return held

    def final(self, settings: Settings, ledger: Ledger) -> None:
        held = self.read_back(settings, ledger)
        self.records = sum(held.values())
        self.by_retry = sum(max(0, n - ledger.sent[k]) for k, n in held.items())
        self.by_rerun = sum(max(0, min(n, ledger.sent[k]) - ledger.planned[k]) for k, n in held.items())


@dataclass
class Part:
    """One part's imports (one topic): its ledger, the log read back, each trial's record."""

    ledger: Ledger = field(default_factory=Ledger)
    audit: LogAudit = field(default_factory=LogAudit)
    trials: list[dict] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    kills_mid_import: int = 0

    def imported(self, imp: PacedImport) -> None:
        self.stalls += imp.stalls
        self.refusals += imp.refusals


# ---- part A: one broker, kill -9 and restart ----------------------------------------------------

def single_settings(ctx: ChaosContext) -> Settings:
    return ctx.settings.model_copy(update={"home": ctx.settings.home / "single", "kafka_port": free_port(),
                                           "kafka_controller_port": free_port(), "kafka_brokers": 1,
                                           "replication_factor": None, "min_insync_replicas": None})


def single_broker(ctx: ChaosContext, plan: Plan, rng: random.Random) -> Part:
    settings, part = single_settings(ctx), Part()
    with ExitStack() as stack:
        ctx.say(f"part A: own single broker on {settings.bootstrap}")
        kafka_runtime.start(settings)
        stack.callback(kafka_runtime.stop, settings)
        for n, batches in enumerate(segments(plan, plan.single_kills, ctx.seed + 1), start=1):
            imp = PacedImport(settings, part.ledger, batches, plan.pause_s, kill_after(rng, len(batches)))
            imp.start()
            left = imp.wait_kill_point()
            began = time.monotonic()
            kafka_runtime.kill_node(settings, 1, signal.SIGKILL)
            part.kills_mid_import += left > 0
            kafka_runtime.start(settings)  # the same home: its data directory survived the kill
            restart_s = time.monotonic() - began
            imp.finish()
            part.imported(imp)
            part.audit.read_back(settings, part.ledger)
            trial = {"trial": n, "batches": len(batches), "killed_after_batch": imp.kill_after, "batches_left_at_kill": left,
                     "restart_s": round(restart_s, 1), "longest_stall_s": round(max(imp.stalls, default=0.0), 1),
                     "imports": imp.imports, "refused": imp.refusals}
            part.trials.append(trial)
            ctx.say(f"part A trial {n}: kill -9 after batch {imp.kill_after}/{len(batches)}; restarted in {restart_s:.1f}s; "
                    f"longest batch {trial['longest_stall_s']}s; {imp.imports} import(s)")
        part.audit.final(settings, part.ledger)
    return part


# ---- part B: a 3-broker cluster, the leader killed ----------------------------------------------

def cluster_settings(ctx: ChaosContext) -> Settings:
    brokers = free_port_range(BROKERS)
    controllers = free_port_range(BROKERS, avoid=range(brokers, brokers + BROKERS))
    return drill_settings(ctx.settings, home=ctx.settings.home / "cluster", kafka_port=brokers, kafka_controller_port=controllers,
                          kafka_brokers=BROKERS, replication_factor=None, min_insync_replicas=None, speed_web_port=free_port())


def roles(settings: Settings, broker: int, consumed: bool) -> list[str]:
    """What `broker` does for the check's clients now: the partitions it leads and, once the
    consumers run (`consumed`), whether it coordinates the speed layer's consumer group."""
    led = [f"leader of partition {p}" for p in range(settings.partitions)
           if kafka_io.run(kafka_io.partition_leader(settings, p)) == broker]
    coordinates = consumed and kafka_io.run(kafka_io.group_coordinator(settings, settings.speed_group)) == broker
    return led + (["coordinator of the speed layer's group"] if coordinates else [])


def wait_in_sync(settings: Settings, wait_s: float = ISR_S) -> float:
    """Until every partition of the topic has all brokers in sync again: the next kill must leave
    min.insync.replicas, or the trials would not be independent. Returns the wait."""
    began, everyone = time.monotonic(), set(range(1, BROKERS + 1))
    while True:
        try:
            isr = kafka_io.run(kafka_io.in_sync_replicas(settings))
        except Exception:  # noqa: BLE001 - a broker still catching up on metadata: ask again
            isr = {}
        if isr and all(replicas == everyone for replicas in isr.values()):
            return time.monotonic() - began
        if time.monotonic() - began > wait_s:
            raise ChaosError(f"the restarted broker is not back in every in-sync replica set within {wait_s:.0f}s: {isr}")
        time.sleep(0.3)


def kill_and_import(settings: Settings, part: Part, batches: list[list[Event]], victim: int, pause_s: float,
                    rng: random.Random, consumed: bool = False) -> tuple[PacedImport, dict]:
    """Import `batches` and SIGKILL broker `victim` mid-import; returns once the import finished."""
    held = roles(settings, victim, consumed)
    imp = PacedImport(settings, part.ledger, batches, pause_s, kill_after(rng, len(batches)))
    imp.start()
    left = imp.wait_kill_point()
    killed = time.monotonic()
    kafka_runtime.kill_node(settings, victim, signal.SIGKILL)
    part.kills_mid_import += left > 0
    imp.finish()
    part.imported(imp)
    return imp, {"victim": victim, "roles": held, "batches": len(batches), "killed_after_batch": imp.kill_after,
                 "batches_left_at_kill": left, "longest_stall_s": round(max(imp.stalls, default=0.0), 2),
                 "imports": imp.imports, "refused": imp.refusals, "import_after_kill_s": round(time.monotonic() - killed, 1)}


def restart(settings: Settings, victim: int) -> dict:
    began = time.monotonic()
    kafka_runtime.start_node(settings, victim)
    restart_s = time.monotonic() - began
    return {"restart_s": round(restart_s, 1), "back_in_sync_s": round(wait_in_sync(settings), 1)}


def produce_trial(ctx: ChaosContext, settings: Settings, part: Part, batches: list[list[Event]], plan: Plan,
                  rng: random.Random) -> dict:
    partition = rng.randrange(settings.partitions)
    victim = kafka_io.wait_for_leader(settings, partition)
    imp, trial = kill_and_import(settings, part, batches, victim, plan.pause_s, rng)
    trial["new_leader"] = kafka_io.wait_for_leader(settings, partition, not_on=victim)
    part.audit.read_back(settings, part.ledger)  # with the victim still down: the survivors hold every acknowledged event
    trial |= restart(settings, victim)
    ctx.say(f"part B produce: kill -9 broker {victim} ({', '.join(trial['roles'])}) after batch {imp.kill_after}/{len(batches)}; "
            f"partition {partition} now led by {trial['new_leader']}; longest batch {trial['longest_stall_s']}s; "
            f"restarted and in sync in {trial['restart_s'] + trial['back_in_sync_s']:.1f}s")
    return trial


@dataclass
class Consumers:
    """The speed worker and the live Kappa job on the cluster, and how each trial went for them."""

    engine: Engine
    layers: dict[str, Layer]
    trials: list[dict] = field(default_factory=list)
    verdicts: list[dict[str, Verdict]] = field(default_factory=list)
    failovers: int = 0  # (consumer, trial): went on without a restart and caught up with the log

    def pids(self) -> dict[str, int | None]:
        return {name: layer.pid() for name, layer in self.layers.items()}


def in_parallel(calls: list[Callable[[], object]]) -> list[object]:
    with ThreadPoolExecutor(len(calls), thread_name_prefix="chaos-consumers") as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def start_consumers(ctx: ChaosContext, settings: Settings, stack: ExitStack) -> Consumers:
    engine = make_engine(settings)
    stack.callback(engine.dispose)
    consumers = Consumers(engine, layers(settings))
    stack.callback(in_parallel, [layer.stop for layer in consumers.layers.values()])
    try:
        in_parallel([layer.start for layer in consumers.layers.values()])
    except Exception as exc:  # noqa: BLE001 - SpeedError / JobError: one line
        raise ChaosError(f"a consumer did not start on the cluster: {exc}") from None
    ctx.say(f"part B consumption: the speed worker and {output_name('revenue_per_minute', 1)} consume the cluster")
    return consumers


def consume_trial(ctx: ChaosContext, settings: Settings, part: Part, consumers: Consumers, batches: list[list[Event]],
                  plan: Plan, rng: random.Random, n: int, last: bool) -> dict:
    """Kill a broker the consumers depend on while they consume a live import; they must go on
    without a restart, catch up while it is down, and serve what the oracle computes. The
    victim is restarted for the next trial (after the last one the cluster is thrown away)."""
    before = consumers.pids()
    victim = (kafka_io.wait_for_leader(settings, 0) if n % 2 == 0
              else kafka_io.run(kafka_io.group_coordinator(settings, settings.speed_group)))
    imp, trial = kill_and_import(settings, part, batches, victim, plan.pause_s, rng, consumed=True)
    began = time.monotonic()
    end = kafka_io.run(kafka_io.end_offsets(settings))
    caught = {name: wait_passed(consumers.engine, settings, layer, end, CATCH_UP_S) for name, layer in consumers.layers.items()}
    after = consumers.pids()
    kept = {name: caught[name] and before[name] is not None and after[name] == before[name] for name in before}
    consumers.failovers += sum(kept.values())
    acknowledged = list(part.ledger.acknowledged)
    verdicts = {SPEED: judge_speed(consumers.engine, settings, consumers.layers[SPEED], acknowledged, caught[SPEED]),
                KAPPA: judge_kappa(consumers.engine, consumers.layers[KAPPA], acknowledged, caught[KAPPA])}
    consumers.verdicts.append(verdicts)
    part.audit.read_back(settings, part.ledger)
    trial |= {"caught_up_after_import_s": round(time.monotonic() - began, 1), "pids_before": before, "pids_after": after,
              "went_on_without_restart": kept,
              "records_applied_minus_logged": {name: v.applied - sum(end.values()) for name, v in verdicts.items()},
              "verdicts": {name: {"equal": v.views_equal, "detail": v.detail, "lost": v.lost, "double_counted": v.double_counted}
                           for name, v in verdicts.items()}}
    trial |= {"restart_s": None} if last else restart(settings, victim)
    ctx.say(f"part B consumption: kill -9 broker {victim} ({', '.join(trial['roles'])}) mid-stream; "
            + "; ".join(f"{name}: {'went on' if kept[name] else 'DID NOT go on'}, {verdicts[name].detail}" for name in verdicts))
    return trial


def cluster(ctx: ChaosContext, plan: Plan, rng: random.Random, once_up: Callable[[], object]) -> tuple[Part, list[dict], Consumers]:
    """Part B; `once_up` is called as soon as the cluster runs."""
    settings, part = cluster_settings(ctx), Part()
    trials = plan.produce_kills + plan.consume_kills
    cut = segments(plan, trials, ctx.seed + 2)  # one workload: both halves write the same topic
    with ExitStack() as stack:
        ctx.say(f"part B: own {BROKERS}-broker cluster on {settings.bootstrap} (RF {settings.topic_replication_factor}, "
                f"min ISR {settings.topic_min_insync_replicas}, acks=all)")
        kafka_runtime.start(settings)
        stack.callback(kafka_runtime.stop, settings, 2.0)  # thrown away: no need to wait out a controlled shutdown
        kafka_io.run(kafka_io.ensure_topics(settings))
        once_up()
        produced = [produce_trial(ctx, settings, part, batches, plan, rng) for batches in cut[:plan.produce_kills]]
        consumers = start_consumers(ctx, settings, stack)
        for n, batches in enumerate(cut[plan.produce_kills:]):
            last = n == plan.consume_kills - 1
            consumers.trials.append(consume_trial(ctx, settings, part, consumers, batches, plan, rng, n, last))
        part.audit.final(settings, part.ledger)
    return part, produced, consumers


# ---- the check ----------------------------------------------------------------------------------

def figures(plan: Plan, single: Part, cluster_part: Part, consumers: Consumers) -> list[Figure]:
    verdicts = [v for by_layer in consumers.verdicts for v in by_layer.values()]
    planned = plan.single_kills + plan.produce_kills + plan.consume_kills
    stall = max(cluster_part.stalls, default=None)
    return [
        zero("acknowledged events lost (single broker kill -9 + restart)", len(single.audit.lost), "events"),
        zero("acknowledged events lost (leader killed during produce, RF 3, min ISR 2, acks=all)", len(cluster_part.audit.lost),
             "events"),
        zero("records duplicated in the log (a producer's retries written twice)",
             single.audit.by_retry + cluster_part.audit.by_retry, "records"),
        zero("events lost in the views (leader killed during consumption)", max((v.lost for v in verdicts), default=0), "events"),
        zero("events double-counted in the views", max((v.double_counted for v in verdicts), default=0), "events"),
        holds("served views equal the oracle after every failover", bool(verdicts) and all(v.views_equal for v in verdicts),
              f"{sum(v.views_equal for v in verdicts)}/{len(verdicts)} (consumer, kill) equal; at the last kill: "
              + "; ".join(f"{name} {v.detail}" for name, v in (consumers.verdicts or [{}])[-1].items())),
        equal("consumer failovers without a restart", consumers.failovers, plan.consume_kills * len(consumers.layers),
              bound=f"= {plan.consume_kills * len(consumers.layers)} ({len(consumers.layers)} consumers x {plan.consume_kills} kills)"),
        zero("batches refused during a cluster failover (the import had to be re-run)", len(cluster_part.refusals), "batches"),
        at_most("longest produce stall during failover", None if stall is None else round(stall, 2), STALL_BOUND_S),
        equal("kills (each with batches still to send)", single.kills_mid_import + cluster_part.kills_mid_import, planned),
    ]


def run_broker_faults(ctx: ChaosContext) -> CheckResult:
    if ctx.settings.bootstrap_servers:
        raise ChaosError("broker-faults kills brokers it starts itself; it does not run against an external cluster "
                         "(LKLAB_BOOTSTRAP_SERVERS)")
    plan, rng = PLANS[ctx.size], random.Random(ctx.seed)
    seeds = rng.random(), rng.random()  # one draw sequence per part: the parts run side by side
    # The two parts share nothing but the machine. Part A is mostly waits (its broker's restart),
    # so it runs beside part B, from the moment the cluster is up: four JVMs starting at once on
    # two cores would slow both starts.
    with ThreadPoolExecutor(1, thread_name_prefix="chaos-single-broker") as pool:
        single_run: list[Future[Part]] = []
        cluster_part, produced, consumers = cluster(
            ctx, plan, random.Random(seeds[1]), lambda: single_run.append(pool.submit(single_broker, ctx, plan, random.Random(seeds[0]))))
        single = single_run[0].result()
    log = {name: {"records": p.audit.records, "acknowledged": len(p.ledger.acknowledged), "imports_refused": p.refusals,
                  "records_written_again_by_a_new_import": p.audit.by_rerun, "lost_sample": sorted(p.audit.lost)[:10]}
           for name, p in (("single", single), ("cluster", cluster_part))}
    return ctx.result(
        fault=(f"kill -9 of the single broker mid-import, restarted ({plan.single_kills}x); of a 3-broker cluster's partition "
               f"leader mid-import ({plan.produce_kills}x) and of the leader of partition 0 or the speed group's coordinator "
               f"while the speed worker and a live Kappa job consume ({plan.consume_kills}x)"),
        trials=plan.single_kills + plan.produce_kills + plan.consume_kills,
        figures=figures(plan, single, cluster_part, consumers),
        evidence={"log": log, "single_broker": single.trials, "leader_killed_during_produce": produced,
                  "leader_killed_during_consumption": consumers.trials, "plan": asdict(plan)})


register(Check(
    name="broker-faults",
    title=("a kill -9 of the single broker, or of a 3-broker cluster's partition leader during produce and during "
           "consumption, loses no acknowledged event and double-counts none; the consumers fail over"),
    promise=("Kafka with acks=all, min.insync.replicas=2, replication factor 3 and unclean.leader.election.enable=false: an "
             "acknowledged write survives the loss of any one broker; the idempotent producer keeps a retried send from being "
             "written twice within a producer session"),
    scope=("lklab's embedded cluster uses exactly those settings (RF 3, min ISR 2, acks=all, idempotent producer, unclean "
           "election off as Kafka defaults). On one broker an acknowledged event survives a process kill (it is in the page "
           "cache) but not a machine crash: there is no fsync per message (log.flush defaults) and no other copy. An import "
           "that stops (a batch refused) and is run again may write a record twice: views dedup by event_id, so it is never "
           "counted twice. The speed layer and Kappa jobs commit their offsets with their results in the serving store, so "
           "a broker failover cannot make them lose or double-count an event. Not covered: two brokers lost at once (writes "
           "stop: min ISR), a lost disk, an external cluster's settings"),
    run=run_broker_faults,
))
