"""Benchmarks, not tests: every layer against its limit and its peer, on the same machine, in the
same run, on the same data. `make bench` runs it and writes bench/RESULTS.md and bench/results.json.

Hermetic: its own broker under .lklab/bench on free loopback ports; it stops what it starts.
Each figure is the median of --runs runs, with min and max. Sizes are flags; see RESULTS.md for
the sizes of the recorded run and what bounds the figures that miss their targets.
"""
from __future__ import annotations

import argparse
import bisect
import dataclasses
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cpu_window  # bench/: the suite runs as a script
import pyspy
from lklab.log import kafka_io
from lklab.log import broker as kafka_runtime
from lklab import kappa
from lklab.kappa import jobs
from lklab.lake import tables as lake
from lklab.engine import snapshots
from lklab.lambda_arch import speed
from lklab import views
from lklab.core.config import Settings
from lklab.scenarios.demo import demo_settings
from lklab.log.generator import GeneratorConfig, generate
from lklab.serving import progress
from lklab.serving.store import make_engine

ROOT = Path(__file__).resolve().parent
START = datetime(2026, 10, 1, tzinfo=timezone.utc)
HISTORY_TOPIC = "bench.history"
LIVE_SHARES = (0.5, 0.9)  # event → visible is measured at these fractions of each layer's sustained rate
# the 90 % share (the target's) in every round, the 50 % share in the first only: the bench's 30 minutes
TARGET_SHARE_ONLY_AFTER_FIRST_ROUND = True
KAPPA_LIVE_VIEW = "revenue_per_minute"  # the view the replay figures use too
HYDRATE_SHARE = 0.1  # the live Kappa job hydrates on this first part of the workload, then follows the rest
PROBE_EVERY = 10  # event → visible is timed on every 10th record sent (see _paced)
QUICK = {"events": 200_000, "speed_events": 50_000, "kappa_live_events": 500_000, "history_events": 100_000,
         "history_events_per_day": 1_000, "runs": 2, "latency_s": 5.0}
QUICK_OUT = Path.cwd() / ".lklab" / "bench-quick"
QUICK_FLAGS = ", ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in QUICK.items())
LIVE_DEFINITIONS = [
    "Sustained rate of a live layer (`speed_eps`, `kappa_live_eps`): records committed while it drains a backlog ÷ the "
    "time until its committed offsets reach the log's end (lag 0); both sinks commit the offsets in the same "
    "transaction as the rows. The speed layer is a fresh speed worker (whole Kafka fetches) from earliest over `--speed-events` deliveries; its "
    "clock starts at its first commit, whose records are not counted (start-up and group join excluded). The live "
    f"Kappa job hydrates on the first {HYDRATE_SHARE:.0%} of `--kappa-live-events` deliveries (the bounded replay, "
    "measured as `replay_eps`) and follows the log at lag 0; it is then frozen (SIGSTOP), the other "
    f"{1 - HYDRATE_SHARE:.0%} are appended to the log, and it is resumed (SIGCONT); its clock starts at the resume. So "
    "the figure is the follow loop's (consume, fold, a checkpoint at least every `kappa_checkpoint_interval_s`) on a "
    "backlog, with hydrated state, not the hydration's. Its backlog is larger because it drains several times faster, "
    "and a drain of a few commits would make a coarse clock (the commits per drain are in results.json, `live.drains`).",
    "Event → visible: a librdkafka producer sends at a steady rate (2 ms ticks) to a fresh topic the layer follows from "
    "its start; a record is visible when the layer's committed offset (written in the same transaction as the rows) "
    f"passes it, polled every 10 ms: p50/p99 of (visible − sent) over every {PROBE_EVERY}th record of the window (the "
    "probes: only they ask for a delivery report, whose cost took CPU from the layer measured; the end offsets check "
    "that nothing else was lost). Each layer is paced at "
    "50 % and 90 % of its own sustained rate in the same run: 90 % (the target's) in every round, 50 % in the first "
    "round only. The speed layer serves three views in one worker, the "
    "Kappa job one view (one job per view).",
    "CPU in a latency window (bench/cpu_window.py, the kernel's scheduler accounting, from the window's first send "
    "until the layer has committed its last record): per process, cores on a CPU (user + system time, `/proc/<pid>/stat`) "
    "and cores' worth of time runnable but waiting for one (`/proc/<pid>/task/*/schedstat`, summed over threads); `layer` is the worker(s) measured, "
    "`broker` the bench's Kafka broker, `bench` this process (the paced librdkafka producer and the 10 ms probe); the "
    "machine's busy cores from /proc/stat. A layer near one core on a CPU is at its GIL's ceiling; a machine near all "
    "its cores busy, with waiting time, has no CPU to spare.",
]


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    values: list[float] = field(default_factory=list)
    peak_rss: dict[str, int] = field(default_factory=dict)  # process -> its highest peak RSS over the runs, bytes
    state: list[tuple[int, int]] = field(default_factory=list)  # (bytes, rows) of the consumer's held state, per run

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    def rss(self, process: str, found: int | None) -> None:
        if found is not None:
            self.peak_rss[process] = max(found, self.peak_rss.get(process, 0))


# --- memory and state ---------------------------------------------------------------------------

def _proc_status_bytes(pid: int, key: str) -> int | None:
    """A /proc/<pid>/status figure (VmRSS, VmHWM) in bytes; None when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def peak_rss(pid: int | None) -> int | None:
    """The process's peak resident set since it started or since reset_peak (VmHWM)."""
    return None if pid is None else _proc_status_bytes(pid, "VmHWM")


def reset_peak(pid: int) -> None:
    """Start the process's peak RSS again from what it holds now (Linux: clear_refs 5), so that a
    figure measured inside the long-lived bench process gets its own peak."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def held_state(run: Settings, scope: str, view_names: list[str]) -> tuple[int, int]:
    """(bytes, rows) of a consumer's dedup and contribution state in its SQLite serving store."""
    from lklab.drills.late_storm import state_bytes

    engine = make_engine(run)
    try:
        return state_bytes(engine, scope, view_names)
    finally:
        engine.dispose()


# --- data -----------------------------------------------------------------------------------

def workload(events: int, seed: int, days: float = 1.0):
    """A generated workload of about `events` deliveries spread over `days` of event time."""
    rides_per_minute = max(1, round(events / 5.2 / (days * 1440)))
    return generate(GeneratorConfig(seed=seed, start=START, duration_s=int(days * 86400), rides_per_minute=rides_per_minute,
                                    users=20_000, drivers=2_000))


def _producer(settings: Settings, linger_ms: int):
    """confluent-kafka (librdkafka) for the bench's own traffic: aiokafka's per-send cost made
    loading 5M events take minutes, and a Python-paced producer took CPU from the worker it
    measures. acks=all, idempotent, murmur2 partitioning as the Java client and aiokafka."""
    from confluent_kafka import Producer

    return Producer({"bootstrap.servers": settings.bootstrap, "acks": "all", "enable.idempotence": True,
                     "partitioner": "murmur2_random", "linger.ms": linger_ms, "batch.size": 1_000_000,
                     "queue.buffering.max.messages": 500_000, "queue.buffering.max.kbytes": 512 * 1024})


def _produce(producer, topic: str, key: bytes, value: bytes, on_delivery) -> None:
    while True:
        try:
            producer.produce(topic, value, key, on_delivery=on_delivery)
            return
        except BufferError:  # the local queue is full: let librdkafka drain it
            producer.poll(0.05)


def load(settings: Settings, deliveries, topic: str | None = None) -> None:
    """Bench set-up: already valid events straight to the topic, keyed by ride_id; every delivery
    report is checked."""
    target = topic or settings.topic
    kafka_io.run(kafka_io.ensure_topics(settings.model_copy(update={"topic": target})))
    producer, failed = _producer(settings, linger_ms=20), []

    def report(err, msg) -> None:
        if err is not None:
            failed.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    for event in deliveries:
        _produce(producer, target, event.ride_id.encode(), event.to_json().encode(), report)
        producer.poll(0)
    if producer.flush(120) or failed:
        raise RuntimeError(f"bench load into {target}: {len(failed)} deliveries failed, first: {failed[:1]}")


# --- 1. raw limit -----------------------------------------------------------------------------

async def _raw(settings: Settings) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    end = await kafka_io.end_offsets(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, enable_auto_commit=False, max_poll_records=10_000,
                                fetch_max_bytes=64 * 1024 * 1024, max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    try:
        parts = [TopicPartition(settings.topic, p) for p in end]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, 0)
        done, total, clock = 0, sum(end.values()), time.monotonic()
        while done < total:
            for messages in (await consumer.getmany(timeout_ms=1000, max_records=10_000)).values():
                for m in messages:
                    json.loads(m.value)
                done += len(messages)
        return total / (time.monotonic() - clock)
    finally:
        await consumer.stop()


def raw_eps(settings: Settings) -> float:
    """A bare aiokafka consume + JSON decode loop: what one Python process can read at most."""
    return kafka_io.run(_raw(settings))


def raw_librdkafka_eps(settings: Settings) -> float:
    """The same loop with confluent-kafka (librdkafka, C): the ceiling of the client library."""
    from confluent_kafka import Consumer, TopicPartition as CkPartition

    end = kafka_io.run(kafka_io.end_offsets(settings))
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "bench-raw-librdkafka",
                         "enable.auto.commit": False, "fetch.max.bytes": 64 * 1024 * 1024})
    try:
        consumer.assign([CkPartition(settings.topic, p, 0) for p in end])
        done, total, clock = 0, sum(end.values()), time.monotonic()
        while done < total:
            for m in consumer.consume(num_messages=10_000, timeout=1.0):
                if m.error() is None:
                    json.loads(m.value())
                    done += 1
        return total / (time.monotonic() - clock)
    finally:
        consumer.close()


# --- 2. live layers: the Faust speed layer and the live Kappa job -----------------------------

@dataclass(frozen=True)
class LiveLayer:
    """A live architecture under test, as the bench drives it: start and stop it on a run's
    settings, its pid (None when not running), and the progress scope its sink commits offsets
    under. Both sinks commit the offsets in the same transaction as the rows, which is what makes
    the committed offsets a visibility probe (_watch) and a throughput probe (drain)."""

    key: str
    label: str
    start: Callable[[Settings], object]
    stop: Callable[[Settings], object]
    pid: Callable[[Settings], int | None]
    scope: Callable[[Settings], str]
    pids: Callable[[Settings], list[int]]  # every process of the layer (the speed layer may run several workers)


SPEED = LiveLayer("speed", f"speed layer (one worker, whole Kafka fetches, {len(views.SPEED_LAYER)} views)", speed.start, speed.stop,
                  speed.read_pid, lambda run: run.speed_group, speed.read_pids)


def kappa_live(view: str, version: int = 1) -> LiveLayer:
    """The live Kappa job of `<view>__v<version>` (python -m lklab.kappa.worker, in the background)."""
    def pid(run: Settings) -> int | None:
        return jobs.job_status(run, view, version).pid

    return LiveLayer("kappa_live", f"live Kappa job ({view})", lambda run: jobs.start(run, view, version),
                     lambda run: jobs.stop(run, view, version), pid, lambda run: kappa.replay_scope(view, version),
                     lambda run: [found] if (found := pid(run)) is not None else [])


KAPPA_LIVE = kappa_live(KAPPA_LIVE_VIEW)


def _fresh(settings: Settings, tag: str) -> Settings:
    return settings.model_copy(update={"serving_url": f"sqlite:///{settings.home / f'{tag}.db'}", "speed_group": f"bench-{tag}"})


def _committed(run: Settings, layer: LiveLayer, engine) -> int:
    """Records the layer has committed (with their effect) over every partition of the run's topic."""
    with engine.connect() as conn:
        return sum(progress.next_offsets(conn, layer.scope(run), run.topic).values())


def _log_end(run: Settings) -> int:
    """Records in the run's topic: the sum of its end offsets (the bench's producers write no
    transaction markers, so offsets count records)."""
    return sum(kafka_io.run(kafka_io.end_offsets(run)).values())


@dataclass(frozen=True)
class Drain:
    """A layer draining a backlog: records committed, over how long, in how many commits (few
    commits make a coarse clock: the last one can come up to a commit interval after the work)."""

    records: int
    seconds: float
    commits: int
    peak_rss: int | None = None  # the layer's process, bytes
    state: tuple[int, int] | None = None  # (bytes, rows) held when it had drained
    cpu: dict[str, dict[str, float]] | None = None  # where the CPU went while it drained (cpu_window.Window)

    @property
    def eps(self) -> float:
        return self.records / self.seconds


def drain(run: Settings, layer: LiveLayer, since: int, end: int, released_at: float | None = None,
          timeout_s: float = 3600.0) -> Drain:
    """A running layer drains the backlog (since, end] of its topic: `since` is what it had
    committed before the backlog, `end` the log's end, sampled by the caller before the layer
    could start on the backlog (sampled here, it took long enough on a busy machine for the layer
    to drain a small backlog first). The clock stops when its committed offsets reach `end`. It
    starts at `released_at` when the caller released an already running layer onto the backlog
    (everything after is the layer's work); otherwise at the layer's first commit past `since`,
    whose records are then not counted (start-up and group join are not its steady work)."""
    engine = make_engine(run)
    deadline, checked, commits, last = time.monotonic() + timeout_s, time.monotonic(), 0, since

    def wait_until(done: Callable[[int], bool]) -> int:
        nonlocal checked, commits, last
        while True:
            committed = _committed(run, layer, engine)
            commits, last = commits + (committed != last), committed
            if done(committed):
                return committed
            if time.monotonic() - checked >= 1.0:  # a dead worker would never drain: say so
                checked = time.monotonic()
                if layer.pid(run) is None:
                    raise RuntimeError(f"{layer.label} stopped while draining {run.topic} ({committed:,} of {end:,} committed)")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{layer.label} did not drain {run.topic} in {timeout_s:.0f}s ({committed:,} of {end:,})")
            time.sleep(0.02)

    cpu = cpu_window_of(run, layer)
    try:
        first = since if released_at is not None else wait_until(lambda committed: committed > since)
        clock = released_at if released_at is not None else time.monotonic()
        cpu.start()
        wait_until(lambda committed: committed >= end)
        elapsed, used = time.monotonic() - clock, cpu.stop()
    finally:
        engine.dispose()
    if first >= end:
        raise RuntimeError(f"{layer.label} drained {end - since:,} records of {run.topic} in one commit: too few to time; "
                           "pass a larger backlog")
    return Drain(end - first, elapsed, commits, cpu=used)


def cpu_window_of(run: Settings, layer: LiveLayer) -> cpu_window.Window:
    """Scheduler accounting of the layer's processes, the bench's broker and the bench process
    itself (the load generator and the probes, where they run)."""
    broker = kafka_runtime.read_pid(run)
    return cpu_window.Window({"layer": layer.pids(run), "broker": [broker] if broker is not None else [], "bench": [os.getpid()]})


def speed_sustained(settings: Settings, tag: str) -> Drain:
    """One speed worker from earliest over the whole topic: records/s from its first committed
    batch until its lag is 0 (worker start-up and group join excluded)."""
    run = _fresh(settings, tag)
    end = _log_end(run)
    SPEED.start(run)
    try:
        found = drain(run, SPEED, since=0, end=end)
        return dataclasses.replace(found, peak_rss=peak_rss(SPEED.pid(run)),
                                   state=held_state(run, SPEED.scope(run), list(views.SPEED_LAYER)))
    finally:
        SPEED.stop(run)


def kappa_live_sustained(settings: Settings, tag: str, deliveries, layer: LiveLayer = KAPPA_LIVE) -> Drain:
    """The live Kappa job's follow loop on a backlog (not its hydration, which is the replay and
    replay_eps): the job hydrates on the first HYDRATE_SHARE of `deliveries` and reaches lag 0;
    it is then frozen (SIGSTOP), the rest is appended to the log, and it is resumed (SIGCONT):
    records/s from the resume until its lag is 0. The job is already following when it is
    resumed, so there is no start-up to leave out and the clock starts at the resume (from its
    first commit instead, a 0.5 s checkpoint interval left out most of a small backlog's work).
    A fresh topic and serving store per call."""
    run = _fresh(settings, tag).model_copy(update={"topic": f"bench.kappa-live.{tag}"})
    cut = int(len(deliveries) * HYDRATE_SHARE)
    load(run, deliveries[:cut])
    layer.start(run)
    engine = make_engine(run)
    try:
        hydrated = _wait_committed(run, layer, engine, cut)
        if (pid := layer.pid(run)) is None:
            raise RuntimeError(f"{layer.label} exited after hydrating {run.topic}")
        os.kill(pid, signal.SIGSTOP)
        try:
            load(run, deliveries[cut:])
            end = _log_end(run)
        finally:
            released_at = time.monotonic()
            os.kill(pid, signal.SIGCONT)
        found = drain(run, layer, since=hydrated, end=end, released_at=released_at)
        return dataclasses.replace(found, peak_rss=peak_rss(layer.pid(run)),
                                   state=held_state(run, layer.scope(run), [kappa.output_name(KAPPA_LIVE_VIEW, 1)]))
    finally:
        engine.dispose()
        layer.stop(run)


def _wait_committed(run: Settings, layer: LiveLayer, engine, records: int, timeout_s: float = 300.0) -> int:
    """Wait until the layer has committed at least `records` records of the run's topic; returns how many."""
    deadline = time.monotonic() + timeout_s
    while (committed := _committed(run, layer, engine)) < records:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{layer.label} committed {committed:,} of {records:,} records of {run.topic} in {timeout_s:.0f}s")
        time.sleep(0.05)
    return committed


def faust_ceiling_eps(settings: Settings, tag: str, total: int) -> float:
    """bench/faust_ceiling.py: a Faust worker with the speed layer's settings and a no-op agent."""
    run = _fresh(settings, tag)
    out = run.home / f"{tag}.json"
    env = {**os.environ, **run.to_env(), "BENCH_TOTAL": str(total), "BENCH_OUT": str(out)}
    (run.home / tag).mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(ROOT / "faust_ceiling.py")], env=env, cwd=run.home / tag,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=True)
    return json.loads(out.read_text())["eps"]


def _released(run: Settings, pids: list[int], ready: Callable[[], bool], deliveries, what: str) -> float:
    """Workers already in their group with a stable assignment (`ready`) on the run's empty topic
    are frozen (SIGSTOP), the backlog is loaded, and they are released (SIGCONT) at the returned
    time: no start-up and no rebalance inside the clock, for one worker or several alike."""
    deadline = time.monotonic() + 120
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: no stable assignment of {run.topic} within 120 s")
        time.sleep(0.2)
    time.sleep(1.0)  # a last rebalance settles
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        load(run, deliveries)
    finally:
        released_at = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    return released_at


def faust_ceiling_released(settings: Settings, tag: str, deliveries, variant: dict[str, str], processes_: int) -> float:
    """bench/faust_ceiling.py as `processes_` workers of one group, under `variant` (an
    environment: FAUST_VARIANTS), released onto a backlog (_released): records/s of all of them,
    from the release until the last has counted its share (each counts the records of its own
    partitions, past its first batch)."""
    run = _fresh(settings, tag).model_copy(update={"topic": f"bench.faust-ab.{tag}"})
    kafka_io.run(kafka_io.ensure_topics(run))
    (run.home / tag).mkdir(parents=True, exist_ok=True)
    share = int(len(deliveries) * 0.9) // processes_
    files = [(run.home / f"{tag}-{i}.json", run.home / f"{tag}-{i}.ready") for i in range(processes_)]
    env = {**os.environ, **run.to_env(), **variant, "BENCH_TOTAL": str(share), "BENCH_GROUP": f"bench-{tag}"}
    started = [subprocess.Popen([sys.executable, str(ROOT / "faust_ceiling.py")], cwd=run.home / tag,
                                env={**env, "BENCH_OUT": str(out), "BENCH_READY": str(ready)},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for out, ready in files]

    def assigned() -> bool:
        try:
            owned = [json.loads(ready.read_text()) for _, ready in files]
        except (FileNotFoundError, ValueError):
            return False
        return all(owned) and sum(map(len, owned)) == run.partitions

    try:
        released_at = _released(run, [p.pid for p in started], assigned, deliveries, f"Faust ceiling {tag}")
        for process in started:
            if process.wait(timeout=300):
                raise RuntimeError(f"Faust ceiling {tag} exited with code {process.returncode}")
    finally:
        for process in started:
            process.kill()
    finished = max(out.stat().st_mtime for out, _ in files)
    counted = sum(json.loads(out.read_text())["records"] for out, _ in files)
    return counted / (finished - (time.time() - (time.monotonic() - released_at)))


AB_RUNS = 1  # rounds of each A/B of the live path (issue 18, part 3). One: the A/Bs decided the live path in earlier
# records (differences of 2-3x, not percents), and two rounds cost 6 of the bench's minutes against its 30-minute budget
FAUST_NEWER = "0.15.3"  # faust-streaming with the rebalance fix (#686); the bench installs it beside the pinned one
FAUST_VARIANTS = {  # issue 18, part 3: what might lift one Faust worker; bench/faust_ceiling.py reads these
    "the speed worker's (faust-streaming 0.11.3, uvloop, Cython iterator, Faust's Monitor)": {},
    "asyncio's loop (before uvloop)": {"LKLAB_SPEED_EVENT_LOOP": "asyncio"},
    "NO_CYTHON=1": {"NO_CYTHON": "1"},
    "no-op Monitor": {"BENCH_MONITOR": "none"},
    f"faust-streaming {FAUST_NEWER}": {"PYTHONPATH": "{newer}"},
    f"faust-streaming {FAUST_NEWER}, NO_CYTHON=1, no-op Monitor": {"PYTHONPATH": "{newer}", "NO_CYTHON": "1", "BENCH_MONITOR": "none"},
}


def newer_faust(settings: Settings) -> Path:
    """faust-streaming FAUST_NEWER installed into its own directory (put first on PYTHONPATH by a variant)."""
    target = settings.home / f"faust-streaming-{FAUST_NEWER}"
    if not (target / "faust").exists():
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        f"faust-streaming=={FAUST_NEWER}"], check=True, timeout=600)
    return target


def faust_ab(settings: Settings, deliveries, runs: int, say: Callable[[str], None]) -> dict:
    """The Faust ceiling under each of FAUST_VARIANTS and as two processes, released onto the same
    backlog (faust_ceiling_released), rounds interleaved (a noisy neighbour falls on all); a variant
    that fails or hangs is recorded as such."""
    newer = str(newer_faust(settings))
    cases = {name: ({k: v.replace("{newer}", newer) for k, v in env.items()}, 1) for name, env in FAUST_VARIANTS.items()}
    cases["two processes, one group"] = ({}, 2)
    found: dict[str, list] = {name: [] for name in cases}
    for i in range(runs):
        for n, (name, (env, processes_)) in enumerate(cases.items()):
            if any(isinstance(v, str) for v in found[name]):
                continue  # failed in an earlier round: not retried
            try:
                eps = faust_ceiling_released(settings, f"faust-ab-{n}-{i}", deliveries, env, processes_)
            except (RuntimeError, TimeoutError, subprocess.TimeoutExpired) as exc:
                eps = f"failed: {str(exc).splitlines()[0][:160]}"
            found[name].append(eps)
            say(f"Faust ceiling, {name}: {eps if isinstance(eps, str) else f'{eps:,.0f} ev/s'}")
    return found


def speed_released(settings: Settings, tag: str, deliveries) -> Drain:
    """The speed layer (`speed_workers` processes) released onto a backlog on its own topic (_released)."""
    run = _fresh(settings, tag).model_copy(update={"topic": f"bench.speed-ab.{tag}"})
    kafka_io.run(kafka_io.ensure_topics(run))
    SPEED.start(run)
    try:
        def assigned() -> bool:
            try:
                owned = [json.loads(speed.assignment_file(run, i).read_text())["partitions"] for i in range(run.speed_workers)]
            except (FileNotFoundError, ValueError, KeyError):
                return False
            return all(owned) and sum(map(len, owned)) == run.partitions

        released_at = _released(run, speed.read_pids(run), assigned, deliveries, SPEED.label)
        return drain(run, SPEED, since=0, end=_log_end(run), released_at=released_at)
    finally:
        SPEED.stop(run)


def speed_ab(settings: Settings, deliveries, runs: int, latency_s: float, say: Callable[[str], None]) -> dict:
    """The speed layer with its defaults (whole Kafka fetches, streaming.batches), as a Faust agent
    event by event, with its held state looked up per batch, and as two workers (whose state is
    always looked up: see lklab.engine.sink.OwnedState):
    sustained (speed_released), then p50/p99 at 90 % of each one's own sustained rate."""
    cases = {"one worker, whole Kafka fetches, held state in memory (the defaults)": {},
             "one worker, a Faust agent event by event (LKLAB_SPEED_SOURCE=stream)": {"speed_source": "stream"},
             "one worker, whole fetches, held state looked up per batch": {"speed_state_in_memory": False},
             "two workers, whole fetches (LKLAB_SPEED_WORKERS=2: looked up per batch)": {"speed_workers": 2}}
    found: dict[str, dict] = {name: {"eps": []} for name in cases}
    for i in range(runs):
        for n, (name, update) in enumerate(cases.items()):
            drained = speed_released(settings.model_copy(update=update), f"speed-ab-{n}-{i}", deliveries)
            found[name]["eps"].append(round(drained.eps))
            found[name].setdefault("cpu_draining", []).append(drained.cpu)
            say(f"speed layer, {name}: {drained.eps:,.0f} ev/s; CPU {cpu_text(drained.cpu or {})}")
    for n, (name, update) in enumerate(cases.items()):
        rate = statistics.median(found[name]["eps"]) * LIVE_SHARES[-1]
        p50, p99, cpu = latency(settings.model_copy(update=update), SPEED, f"speed-ab-lat{n}", rate, latency_s, seed=3)
        found[name].update(rate_eps=round(rate), p50_ms=round(p50), p99_ms=round(p99), cpu=cpu)
        say(f"speed layer, {name}, at {rate:,.0f} ev/s: p50 {p50:,.0f} ms, p99 {p99:,.0f} ms")
    return found


def _watch(run: Settings, scope: str, commits: dict[int, list[tuple[int, float]]], stop: threading.Event) -> None:
    """Each committed next_offset per partition, with when it was first seen (polled every 10 ms).
    The sink commits offsets with the rows, so a committed next_offset past an offset means that
    record's effect is readable."""
    engine = make_engine(run)
    while not stop.is_set():
        now = time.monotonic()
        with engine.connect() as conn:
            committed = progress.next_offsets(conn, scope, run.topic)
        for partition, next_offset in committed.items():
            seen = commits.setdefault(partition, [])
            if not seen or seen[-1][0] != next_offset:
                seen.append((next_offset, now))
        time.sleep(0.01)


def _visible_at(commits: dict[int, list[tuple[int, float]]], partition: int, offset: int) -> float | None:
    """When the record at `offset` became visible: the first commit seen past it (None: not yet)."""
    seen = commits.get(partition, [])
    i = bisect.bisect_right([next_offset for next_offset, _ in seen], offset)
    return seen[i][1] if i < len(seen) else None


def _paced(run: Settings, deliveries, rate: float) -> list[tuple[int, int, float]]:
    """Send at a steady rate (in 2 ms ticks); returns (partition, offset, sent at) of every
    PROBE_EVERY-th record, the probes. Only the probes ask for a delivery report: one per record
    cost the bench about 9 µs of CPU each (more than the send), which at the live Kappa job's
    rates took most of a core from the job it measures on a 2-core machine. That nothing else was
    lost is checked on the topic's end offsets (nothing else writes to the topic). The first
    record is sent and flushed before the window opens: the producer's connection and idempotence
    handshake held the first records of a window for up to a second, which was most of the p99
    of a 10 s window."""
    payloads, before = [(e.ride_id.encode(), e.to_json().encode()) for e in deliveries], _log_end(run)
    producer, sent_at, landed = _producer(run, linger_ms=1), [], []

    def report(probe: int):
        return lambda err, msg: landed.__setitem__(probe, (msg.partition(), msg.offset()) if err is None else err)

    _produce(producer, run.topic, *payloads[0], None)
    if producer.flush(60):
        raise RuntimeError(f"paced send to {run.topic}: the first record was not delivered in 60 s")
    clock, i = time.monotonic(), 1
    while i < len(payloads):
        due = min(len(payloads), 1 + int((time.monotonic() - clock) * rate) + 1)
        for i in range(i, due):
            if i % PROBE_EVERY:
                _produce(producer, run.topic, *payloads[i], None)
            else:
                sent_at.append(time.monotonic())
                landed.append(None)
                _produce(producer, run.topic, *payloads[i], report(len(landed) - 1))
        i = due
        producer.poll(0)
        time.sleep(0.002)
    unsent = producer.flush(60)
    failed, in_log = sum(not isinstance(x, tuple) for x in landed), _log_end(run) - before
    if unsent or failed or in_log != len(payloads):
        raise RuntimeError(f"paced send to {run.topic}: {unsent} records unsent, {failed} probes failed, "
                           f"the log grew by {in_log:,} records of {len(payloads):,}")
    return [(p, o, at) for (p, o), at in zip(landed, sent_at)]


def latency(settings: Settings, layer: LiveLayer, tag: str, rate: float, seconds: float, seed: int,
            replay_rate: float | None = None,
            during: Callable[[list[int]], AbstractContextManager] | None = None) -> tuple[float, float, dict[str, dict[str, float]]]:
    """p50/p99 (ms) from send to visible in serving, at a steady `rate` on a fresh topic that
    `layer` follows from its start, and where the CPU went from the window's first send until
    the layer had committed its last record (cpu_window.Window: the layer, the broker, the bench
    process that sends and probes, the machine); with `replay_rate`, while a Kappa replay of the
    bench topic runs throttled to that rate; `during(the layer's pids)` is entered for the window."""
    run = _fresh(settings, tag).model_copy(update={"topic": f"bench.latency.{tag}"})
    kafka_io.run(kafka_io.ensure_topics(run))
    deliveries = workload(int(rate * seconds), seed).deliveries[: int(rate * seconds)]
    if not deliveries:
        raise ValueError(f"{layer.label}: {rate:g} ev/s for {seconds:g} s sends nothing")
    layer.start(run)
    commits: dict[int, list[tuple[int, float]]] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(run, layer.scope(run), commits, stop), daemon=True)
    watcher.start()
    replay = None
    if replay_rate:  # a separate process, as in production, stopped when the window ends
        replay_run = _fresh(settings, f"{tag}-replay")
        replay = subprocess.Popen([str(Path(sys.executable).parent / "lklab"), "replay", "revenue_per_minute", "--version", "1",
                                   "--until-end", "--max-rate", str(replay_rate)], env={**os.environ, **replay_run.to_env()},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)  # let it get going before the window opens
    cpu = cpu_window_of(run, layer)
    try:
        with during(layer.pids(run)) if during else nullcontext():
            cpu.start()
            sent = _paced(run, deliveries, rate)
            deadline = time.monotonic() + 120
            while sum(seen[-1][0] for seen in list(commits.values())) < len(deliveries) and time.monotonic() < deadline:
                time.sleep(0.1)
            used = cpu.stop()
    finally:
        stop.set()
        watcher.join(timeout=10)
        layer.stop(run)
        if replay is not None:
            replay.terminate()
            replay.wait(timeout=30)
    visible = [(_visible_at(commits, p, o), at) for p, o, at in sent]
    ms = sorted((shown - at) * 1000 for shown, at in visible if shown is not None)
    if len(ms) < len(sent):
        raise RuntimeError(f"{layer.label}: {len(sent) - len(ms)} of {len(sent)} probes never became visible within 120 s")
    return ms[len(ms) // 2], ms[min(len(ms) - 1, int(len(ms) * 0.99))], used


def cpu_text(cpu: dict[str, dict[str, float]]) -> str:
    """A latency window's CPU (cpu_window.Window) in one line: cores on a CPU / runnable but waiting."""
    shown = [f"{name} {found['on_cpu']:.2f} / {found['waiting']:.2f}" for name, found in cpu.items() if name != "machine"]
    machine = cpu.get("machine", {})
    return "; ".join(shown + [f"machine busy {machine.get('busy', 0):.2f} of {machine.get('cores', 0)} cores"])


def median_p99_cpu(found: dict) -> dict[str, dict[str, float]]:
    """The CPU of the latency run whose p99 is the median (the one the table's p99 is)."""
    runs = sorted(range(len(found["p99_ms_runs"])), key=found["p99_ms_runs"].__getitem__)
    return found["cpu_runs"][runs[len(runs) // 2]]


def latency_profile(settings: Settings, layer: LiveLayer, tag: str, rate: float, seconds: float) -> dict:
    """py-spy of the layer's (first) process, and its threads' scheduler states and wait channels
    (cpu_window.ThreadStates), over one more event → visible window at `rate`: not one whose
    figures are recorded, since the profilers' own CPU shares the machine."""
    found: dict = {}

    @contextmanager
    def spied(pids: list[int]) -> Iterator[None]:
        states = cpu_window.ThreadStates(pids)
        with pyspy.recording(pids[0], settings.home / f"{tag}.pyspy") as out:
            states.start()
            try:
                yield
            finally:
                waits = states.stop()
        found.update(pyspy.summary(out), thread_states=waits)

    p50, p99, cpu = latency(settings, layer, tag, rate, seconds, seed=3, during=spied)
    return {**found, "rate_eps": round(rate), "p50_ms": round(p50), "p99_ms": round(p99), "cpu": cpu}


def pyspy_table(title: str, found: dict | None) -> list[str]:
    """A py-spy summary (bench/pyspy.py) as markdown."""
    if not found:
        return []
    lines = ["", f"## {title}", "", f"{found['samples']:,} samples at {found['rate_hz']} Hz (idle threads not sampled); "
             "each sample is put in the phase of its innermost Python frame that bench/pyspy.py names (time in C counts "
             "to the Python frame that called it). Threads: " + ", ".join(f"{t} {v:.0%}" for t, v in found["threads"].items())
             + ".", "", "| phase | share of samples |", "|---|---:|"]
    lines += [f"| {phase} | {share:.0%} |" for phase, share in found["phases"].items()]
    lines += ["", "| hottest Python functions (innermost frame) | share |", "|---|---:|"]
    lines += [f"| `{frame}` | {share:.0%} |" for frame, share in found["hottest"].items()]
    if found.get("thread_states"):
        lines += ["", f"Where its threads were, sampled every 10 ms in the same window at {found['rate_eps']:,} ev/s (p99 "
                  f"{found['p99_ms']:,} ms; CPU {cpu_text(found['cpu'])}): R is on a CPU or runnable, S sleeping on the "
                  "kernel wait channel named (`futex_*`: a lock, a condition or the GIL; `do_epoll_wait`/`ep_poll`: an "
                  "event loop with nothing to read), D a disk wait; threads that were ever R.", "",
                  "| thread (pid/tid) | states, share of samples |", "|---|---|"]
        lines += [f"| {thread} | " + ", ".join(f"{state} {share:.0%}" for state, share in states.items()) + " |"
                  for thread, states in found["thread_states"].items()]
    return lines


# --- 3/4. Kappa replay, full and from a snapshot ----------------------------------------------

REPLAY_SHARES = (0.2, 0.4)  # of --events: the replay's rate and state at 1M and 2M beside 5M (the rate should not fall)


@dataclass
class ReplayRun:
    events: int
    eps: float
    peak_rss: int | None  # the bench process (the replay runs in it), from what it held before
    state: tuple[int, int]  # (bytes, rows) held at the end


def replay_run(settings: Settings, tag: str, share: float = 1.0) -> ReplayRun:
    """A full replay of revenue_per_minute over the first `share` of every partition."""
    run = _fresh(settings, tag)
    end = None if share == 1.0 else {p: int(o * share) for p, o in kafka_io.run(kafka_io.end_offsets(run)).items()}
    reset_peak(os.getpid())
    found = kappa.replay(run, make_engine(run), "revenue_per_minute", 1, end=end)
    peak = peak_rss(os.getpid())
    return ReplayRun(found.events, found.events_per_s, peak,
                     held_state(run, kappa.replay_scope("revenue_per_minute", 1), [found.output]))


def history_topic(days: int, events_per_day: int) -> str:
    return f"{HISTORY_TOPIC}.{days}d.{events_per_day}"


HISTORY_DAYS = (10, 30, 90)  # the snapshot's advantage as history grows; 30 days is the target's
HISTORY_CURVE_RUNS = 1  # the curve shows the shape; the 30-day figure of the target has --runs runs
HISTORY_EVENTS_PER_DAY = 10_000
SNAPSHOT_VERSION = max(views.LOGIC_VERSIONS["revenue_per_minute"])  # its newest logic: every later version runs it too


def snapshot_vs_full(settings: Settings, spark, days: int, events_per_day: int, runs: int, seed: int = 4) -> dict:
    """`days` of history with a snapshot at the end of the day before the last: a full replay
    against a replay from that snapshot (its timing includes reading, verifying and installing
    the snapshot; no JVM). Each length has its own topic and store."""
    run = _fresh(settings, f"history{days}d-{events_per_day}").model_copy(update={"topic": history_topic(days, events_per_day)})
    engine = make_engine(run)
    history = workload(days * events_per_day, seed=seed, days=days)
    cut = next(i for i, at in enumerate(history.arrival_times) if at >= START + timedelta(days=days - 1))
    load(run, history.deliveries[:cut])
    # Every version here runs the view's newest logic (kappa.spec_for), the snapshot's too: a
    # snapshot of older logic would add a scan of the history before it (planner._check_new_fields_unset).
    spec = kappa.spec_for("revenue_per_minute", SNAPSHOT_VERSION)
    kappa.replay(run, engine, "revenue_per_minute", SNAPSHOT_VERSION)
    snap = snapshots.take(run, engine, spark, "revenue_per_minute", spec, kappa.replay_scope("revenue_per_minute", SNAPSHOT_VERSION))
    load(run, history.deliveries[cut:], run.topic)
    full, fast, restore, tail, rss = [], [], [], [], {"full": 0, "snapshot": 0}
    for i in range(runs):
        reset_peak(os.getpid())
        full.append(kappa.replay(run, engine, "revenue_per_minute", SNAPSHOT_VERSION + 1 + 2 * i).seconds)
        rss["full"] = max(rss["full"], peak_rss(os.getpid()) or 0)
        reset_peak(os.getpid())
        clock = time.monotonic()
        # its .seconds start after the snapshot is installed: the tail after it, the last checkpoint, the row count
        tail.append(kappa.replay(run, engine, "revenue_per_minute", SNAPSHOT_VERSION + 2 + 2 * i, snapshot="latest").seconds)
        fast.append(time.monotonic() - clock)
        rss["snapshot"] = max(rss["snapshot"], peak_rss(os.getpid()) or 0)
        clock = time.monotonic()
        snapshots.verify(snap, spec)
        restore.append(time.monotonic() - clock)
    return {"days": days, "deliveries": len(history.deliveries), "after_snapshot": len(history.deliveries) - cut,
            "full_s": [round(s, 3) for s in full], "snapshot_s": [round(s, 3) for s in fast],
            "verify_s": [round(s, 3) for s in restore], "tail_s": [round(s, 3) for s in tail], "ratio": round(statistics.median(full) / statistics.median(fast), 2),
            "peak_rss": rss, "state": held_state(run, kappa.replay_scope("revenue_per_minute", SNAPSHOT_VERSION + 2 * runs),
                                                 [kappa.output_name("revenue_per_minute", SNAPSHOT_VERSION + 2 * runs)])}


def _mb(value: int | None) -> str:
    return "-" if not value else f"{value / 2**20:,.0f} MB"


def _state(found) -> str:
    """(bytes, rows) of held state."""
    return "-" if not found else f"{found[1]:,} rows, {found[0] / 2**20:,.1f} MB"


def replay_table(extra: dict) -> list[str]:
    """The replay's rate, memory and held state as the log grows (results.json `replay_curve`)."""
    if not extra.get("replay_curve"):
        return []
    lines = ["", "## Replay as the log grows", "",
             "The same log, replayed over the first part of every partition (one run each, the full size is the "
             "table's median run). Peak RSS is the bench process's, in which the replay runs, from what it held before; "
             "state is the replay's dedup and contribution state in the serving store at the end (its chunks: "
             "entries and payload bytes), bounded by the correction horizon.", "",
             "| events | ev/s | peak RSS | state held |", "|---:|---:|---:|---:|"]
    for point in extra["replay_curve"]:
        lines.append(f"| {point['events']:,} | {point['eps']:,.0f} | {_mb(point['peak_rss'])} | {_state(point['state'])} |")
    return lines


def history_table(extra: dict) -> list[str]:
    """The snapshot's advantage as history grows (results.json `history_curve`)."""
    if not extra.get("history_curve"):
        return []
    per_day = extra["history_curve"][0]["deliveries"] / extra["history_curve"][0]["days"]
    lines = ["", "## Snapshot + replay against a full replay, as history grows", "",
             f"Each length is its own topic, generated at about {per_day:,.0f} deliveries a day (asked: "
             f"{extra['history_events_per_day']:,}; the generator's floor is one ride a minute), with a snapshot "
             "at the end of the day before the last; medians; the last row is the table's 30-day figure. The "
             "snapshot's time is the restore (planning, reading the snapshot with delta-rs, verifying its checksum "
             "(timed again on its own), installing its state and output rows) and then the tail: the deliveries "
             "after the snapshot, the last checkpoint and the output's row count. The tail is the same work a full "
             "replay does per delivery, so full ÷ tail bounds the ratio at this snapshot cadence.", "",
             "| days | deliveries | after the snapshot | full replay | snapshot + replay | restore | of which read + verify "
             "| tail | ratio | full ÷ tail | state held | peak RSS, full / snapshot |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for point in extra["history_curve"] + [extra["history_30d"]] * ("history_30d" in extra):
        full, fast = statistics.median(point["full_s"]), statistics.median(point["snapshot_s"])
        tail = statistics.median(point["tail_s"]) if point.get("tail_s") else None
        split = f"{fast - tail:.2f} s | {statistics.median(point['verify_s']):.2f} s | {tail:.2f} s" if tail else \
            f"- | {statistics.median(point['verify_s']):.2f} s | -"
        lines.append(f"| {point['days']} | {point['deliveries']:,} | {point['after_snapshot']:,} | {full:.2f} s | {fast:.2f} s | "
                     f"{split} | {point['ratio']:.1f}× | {f'{full / tail:.1f}×' if tail else '-'} | {_state(point['state'])} | "
                     f"{_mb(point['peak_rss']['full'])} / {_mb(point['peak_rss']['snapshot'])} |")
    return lines


# --- 5. batch: Spark against DuckDB on the same silver files ---------------------------------

def duckdb_sql(spec: views.ViewSpec, files: list[str]) -> str:
    """The view's one definition (lklab.views.ViewSpec) as DuckDB SQL over silver Parquet files,
    in gold's columns and types (entity, window_start, the value, events for money, event_date)."""
    window = f"to_timestamp(floor(epoch(event_time) / {spec.window_s}) * {spec.window_s})"
    where = [f"{spec.entity} IS NOT NULL"]
    if spec.event_types is not None:
        where.append("event_type IN (" + ", ".join(f"'{t}'" for t in sorted(spec.event_types)) + ")")
    if isinstance(spec.measure, views.MoneySum):
        sign = "CASE event_type " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in views.MONEY_SIGN.items()) + " END"
        measure = f"CAST(sum(amount_cents * {sign}) AS BIGINT) AS {spec.value_column}, CAST(count(*) AS INTEGER) AS events"
        where.append(f"amount_cents * {sign} IS NOT NULL")
    else:
        measure = f"CAST(count(DISTINCT user_id) AS BIGINT) AS {spec.value_column}"
    listing = ", ".join(f"'{f}'" for f in files)
    return (f"SELECT {spec.entity}, {window} AS window_start, {measure}, CAST({window} AS DATE) AS event_date "
            f"FROM read_parquet([{listing}]) WHERE {' AND '.join(where)} GROUP BY ALL")


@dataclass
class BatchRun:
    """One run of the batch comparison, in seconds. Like for like: each engine reads silver (its
    Delta log, then the files), computes the 3 views, writes each as a date-partitioned Delta
    table (a full overwrite) and learns its row count. Engine only: the 3 views computed and
    materialised, nothing written."""

    spark_s: float
    duckdb_s: float
    spark_engine_s: float
    duckdb_engine_s: float
    totals: dict


def _duckdb():
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads = 2")
    con.execute("SET TimeZone = 'UTC'")  # event_date is the UTC date, as Spark's session time zone
    return con


def batch_pair(spark, settings: Settings, out: Path) -> BatchRun:
    """Gold for every view from the same silver, by Spark (lklab.lake.tables.build_gold, the
    batch layer's own path) and by DuckDB writing the same Delta layout through deltalake."""
    from deltalake import DeltaTable, write_deltalake

    specs = list(views.SPEED_LAYER.values())
    clock = time.monotonic()
    rows = {spec.name: lake.build_gold(spark, settings, spec) for spec in specs}
    spark_s = time.monotonic() - clock
    shutil.rmtree(out, ignore_errors=True)
    con = _duckdb()
    clock = time.monotonic()
    files = DeltaTable(lake.path(settings, lake.SILVER)).file_uris()
    for spec in specs:
        table = con.execute(duckdb_sql(spec, files)).to_arrow_table()
        write_deltalake(str(out / spec.name), table, partition_by=["event_date"], mode="overwrite")
        if table.num_rows != rows[spec.name]:
            raise RuntimeError(f"{spec.name}: Spark wrote {rows[spec.name]:,} gold rows, DuckDB {table.num_rows:,}")
    duck_s = time.monotonic() - clock

    clock = time.monotonic()
    silver = spark.read.format("delta").load(lake.path(settings, lake.SILVER))
    for spec in specs:
        lake.view_frame(silver, spec).write.format("noop").mode("overwrite").save()
    spark_engine_s = time.monotonic() - clock
    clock = time.monotonic()
    for spec in specs:
        con.execute(duckdb_sql(spec, files)).to_arrow_table()
    duck_engine_s = time.monotonic() - clock

    totals = {}
    for spec in specs:  # the two engines must agree, or the timing means nothing
        gold = spark.read.format("delta").load(lake.path(settings, lake.gold_table(spec.name)))
        spark_total = gold.agg({spec.value_column: "sum"}).collect()[0][0]
        duck_total = DeltaTable(str(out / spec.name)).to_pyarrow_table().column(spec.value_column).to_numpy().sum()
        totals[spec.name] = (int(spark_total or 0), int(duck_total or 0))
    return BatchRun(spark_s, duck_s, spark_engine_s, duck_engine_s, totals)


def spark_profile(spark, settings: Settings, spark_pid: int) -> dict:
    """One more like-for-like Spark run (build_gold for the 3 views) under a JFR recording of the
    driver (bench/jfr.py): where Spark's time goes, as BOUNDS.md's evidence for the Spark target.
    The same run untraced just before it says what the recording costs."""
    import jfr

    specs = list(views.SPEED_LAYER.values())

    def gold() -> None:
        for spec in specs:
            lake.build_gold(spark, settings, spec)

    clock, cpu = time.monotonic(), jfr.cpu_seconds(spark_pid)
    gold()
    untraced_s, untraced_cpu = time.monotonic() - clock, jfr.cpu_seconds(spark_pid)
    found = jfr.profile(spark_pid, settings.home / "spark-gold.jfr", gold)
    return {**found, "untraced_s": round(untraced_s, 2),
            "untraced_cpu_s": round(untraced_cpu - cpu, 2) if cpu is not None and untraced_cpu is not None else None}


def spark_profile_table(extra: dict) -> list[str]:
    if "spark_profile" not in extra:
        return []
    found = extra["spark_profile"]
    lines = ["", "## Where Spark's like-for-like run goes (JFR of the driver, one more run)", "",
             f"{found['wall_s']} s wall (the same run untraced just before: {found.get('untraced_s', '-')} s, "
             f"{found.get('untraced_cpu_s', '-')} s of CPU), "
             f"{found['cpu_s']} s of the JVM's CPU ({found['cores_busy']} of 2 cores busy), "
             f"GC pauses {found['gc_s']} s, {found['samples']:,} stack samples (each put in the phase of its innermost "
             "frame that bench/jfr.py names).", "", "| phase | share of samples |", "|---|---:|"]
    lines += [f"| {phase} | {share:.0%} |" for phase, share in found["phases"].items()]
    lines += ["", "| hottest methods (self) | share |", "|---|---:|"]
    lines += [f"| `{method}` | {share:.0%} |" for method, share in found["hottest_methods"].items()]
    return lines


# --- 6. cutover swap --------------------------------------------------------------------------

def swap_ms(settings: Settings, spark, history_per_day: int, swaps: int = 50) -> list[float]:
    """Alias swaps between two complete Kappa outputs of the 30-day history topic."""
    from lklab.kappa import cutover

    run = _fresh(settings, "swap").model_copy(update={"topic": history_topic(30, history_per_day)})
    engine = make_engine(run)
    for version in (1, 2):
        kappa.replay(run, engine, "daily_active_users", version)
    snap = cutover.publish_snapshot(run, engine, spark, "daily_active_users", "daily_active_users__v1")
    timings, current = [], None
    for i in range(swaps):
        target = f"daily_active_users__v{1 + i % 2}"
        clock = time.perf_counter()
        cutover._swap(run, engine, "daily_active_users", current, target, "cutover", "bench", "swap latency", [], snap)
        timings.append((time.perf_counter() - clock) * 1000)
        current = target
    return timings


# --- the live side by side ---------------------------------------------------------------------

def live_side_by_side(settings: Settings, args: argparse.Namespace, figures: dict[str, Figure], extra: dict,
                      say: Callable[[str], None]) -> None:
    """The two live architectures in the same run, from the same generator: each one's sustained
    rate on a backlog, then event → visible at LIVE_SHARES of its own sustained rate. Repeats
    alternate between the two, so that a noisy neighbour on the machine falls on both. The Kappa
    job's backlog is larger: it drains several times faster, and a drain of a few checkpoint
    intervals would make a coarse clock."""
    layers = (SPEED, KAPPA_LIVE)
    speed_backlog = workload(args.speed_events, seed=2).deliveries[: args.speed_events]
    speed_topic = settings.model_copy(update={"topic": "bench.speed"})
    load(speed_topic, speed_backlog)
    kappa_backlog = workload(args.kappa_live_events, seed=2).deliveries[: args.kappa_live_events]
    drains: dict[str, list[Drain]] = {layer.key: [] for layer in layers}

    def measured(layer: LiveLayer, found: Drain) -> None:
        drains[layer.key].append(found)
        figures[f"{layer.key}_eps"].values.append(found.eps)
        figures[f"{layer.key}_eps"].rss(layer.key, found.peak_rss)
        if found.state is not None:
            figures[f"{layer.key}_eps"].state.append(found.state)
        say(f"{layer.label}, sustained run {len(drains[layer.key])}: {found.eps:,.0f} ev/s "
            f"({found.records:,} records in {found.seconds:.1f} s, {found.commits} commits); CPU {cpu_text(found.cpu or {})}")

    for i in range(args.runs):
        measured(SPEED, speed_sustained(speed_topic, f"speed{i}"))
        measured(KAPPA_LIVE, kappa_live_sustained(settings, f"kappa-live{i}", kappa_backlog))
    del kappa_backlog
    # The ceiling's clock starts after its first batch (up to speed_batch_max records): wait for no more than what
    # is sure to follow it, or a small --speed-events never reaches the count.
    ceiling_records = min(int(args.speed_events * 0.9), args.speed_events - settings.speed_batch_max)
    figures["faust_ceiling_eps"].values.append(faust_ceiling_eps(speed_topic, "faust-ceiling", ceiling_records))
    say(f"Faust ceiling: {figures['faust_ceiling_eps'].values[-1]:,.0f} ev/s")
    extra["faust_ab"] = faust_ab(settings, speed_backlog, AB_RUNS, say)
    extra["speed_ab"] = speed_ab(settings, speed_backlog, AB_RUNS, args.latency_s, say)
    sustained = {layer.key: figures[f"{layer.key}_eps"].median for layer in layers}
    found: dict[tuple[str, float], tuple[list[float], list[float], list[dict]]] = {
        (layer.key, share): ([], [], []) for layer in layers for share in LIVE_SHARES}  # p50s, p99s, CPU per run
    for i in range(args.runs):
        for share in (LIVE_SHARES[-1:] if i and TARGET_SHARE_ONLY_AFTER_FIRST_ROUND else LIVE_SHARES):
            for layer in layers:
                rate = sustained[layer.key] * share
                p50, p99, cpu = latency(settings, layer, f"{layer.key}-lat{share * 100:.0f}-{i}", rate, args.latency_s, seed=3)
                found[(layer.key, share)][0].append(round(p50, 1))
                found[(layer.key, share)][1].append(round(p99, 1))
                found[(layer.key, share)][2].append(cpu)
                say(f"{layer.label} at {share:.0%} ({rate:,.0f} ev/s), run {i + 1}: p50 {p50:,.0f} ms, p99 {p99:,.0f} ms; "
                    f"CPU {cpu_text(cpu)}")
    for layer in layers:  # one more window at the target's share, under py-spy (its CPU would distort a recorded one)
        rate = sustained[layer.key] * LIVE_SHARES[-1]
        profiled = extra[f"{layer.key}_profile_90pct"] = latency_profile(settings, layer, f"{layer.key}-profile", rate, args.latency_s)
        say(f"{layer.label} at {LIVE_SHARES[-1]:.0%} under py-spy: p99 {profiled['p99_ms']:,} ms, {profiled['phases']}")
    for (key, share), (p50s, p99s, cpus) in found.items():
        extra[f"{key}_latency_{share * 100:.0f}pct"] = {
            "rate_eps": round(sustained[key] * share), "p50_ms": statistics.median(p50s), "p99_ms": statistics.median(p99s),
            "p50_ms_runs": p50s, "p99_ms_runs": p99s, "cpu_runs": cpus}
        if share == LIVE_SHARES[-1]:  # the table's latency rows are at 90 %, where the target is
            figures[f"{key}_p50_ms"].values += p50s
            figures[f"{key}_p99_ms"].values += p99s
    extra["live"] = {"views": {SPEED.key: sorted(views.SPEED_LAYER), KAPPA_LIVE.key: [KAPPA_LIVE_VIEW]},
                     "drains": {key: [asdict(d) for d in runs] for key, runs in drains.items()},
                     "kappa_hydrated_events": int(args.kappa_live_events * HYDRATE_SHARE),
                     "kappa_checkpoint_interval_s": settings.kappa_checkpoint_interval_s,
                     "speed_batch_max": settings.speed_batch_max, "speed_batch_within_s": settings.speed_batch_within_s,
                     "latency_window_s": args.latency_s}


# --- report -------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None)
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "python": platform.python_version(), "java": java}


def live_table(figures: dict[str, Figure], extra: dict) -> list[str]:
    """The markdown table of the two live architectures side by side (from live_side_by_side)."""
    layers, live = (SPEED, KAPPA_LIVE), extra["live"]

    def spread(values: list[float], unit: str) -> str:
        return f"{statistics.median(values):,.0f} {unit} ({min(values):,.0f}–{max(values):,.0f})"

    lines = ["", "## Live: the Lambda speed layer and the Kappa job, side by side", "",
             f"Same run, same generator. Sustained: each drains a backlog (records timed: {live['drains'][SPEED.key][0]['records']:,} and "
             f"{live['drains'][KAPPA_LIVE.key][0]['records']:,}); event → visible: each is paced from the same "
             f"workload at its own share of its sustained rate, for {live['latency_window_s']:g} s. Medians over "
             f"{len(figures['kappa_live_eps'].values)} runs (min–max). Definitions are under Notes.", "",
             "| | " + " | ".join(layer.label for layer in layers) + " |", "|---|" + "---:|" * len(layers),
             "| sustained | " + " | ".join(spread(figures[f"{layer.key}_eps"].values, "ev/s") for layer in layers) + " |"]
    if all(live["drains"][layer.key][0].get("cpu") for layer in layers):
        lines.append("| CPU while draining (first run), cores on a CPU / runnable but waiting | "
                     + " | ".join(cpu_text(live["drains"][layer.key][0]["cpu"]) for layer in layers) + " |")
    for share in LIVE_SHARES:
        pct = f"{share * 100:.0f}"
        found = [extra[f"{layer.key}_latency_{pct}pct"] for layer in layers]
        lines.append(f"| paced at {pct} % | " + " | ".join(f"{f['rate_eps']:,} ev/s" for f in found) + " |")
        for q in ("p50", "p99"):
            lines.append(f"| event → visible {q} at {pct} % | " + " | ".join(spread(f[f"{q}_ms_runs"], "ms") for f in found) + " |")
        if all(f.get("cpu_runs") for f in found):
            lines.append(f"| CPU in the run of the median p99 at {pct} %, cores on a CPU / runnable but waiting | "
                         + " | ".join(cpu_text(median_p99_cpu(f)) for f in found) + " |")
    lines.append(f"| commits (what makes an event visible) | a batch: what one Kafka fetch holds, up to "
                 f"{live['speed_batch_max']:,} records | a checkpoint at least every {live['kappa_checkpoint_interval_s']:g} s "
                 "(`kappa_checkpoint_interval_s`) |")
    return lines


def ab_tables(extra: dict, raw: float) -> list[str]:
    """The live path's A/Bs (results.json `faust_ab`, `speed_ab`)."""
    if "faust_ab" not in extra:
        return []

    def rate(values: list) -> str:
        numbers = [v for v in values if not isinstance(v, str)]
        failed = [v for v in values if isinstance(v, str)]
        shown = f"{statistics.median(numbers):,.0f} ev/s ({statistics.median(numbers) / raw:.1%} of raw; runs: " \
                + ", ".join(f"{v:,.0f}" for v in numbers) + ")" if numbers else ""
        return "; ".join([shown] * bool(shown) + sorted(set(failed)))

    lines = ["", "## The live path's A/Bs (issue 18, part 3)", "",
             "The Faust ceiling (bench/faust_ceiling.py: a no-op agent) under each variant, rounds interleaved; the "
             "same backlog as the speed layer's sustained run.", "", "| Faust worker | ceiling |", "|---|---:|"]
    lines += [f"| {name} | {rate(values)} |" for name, values in extra["faust_ab"].items()]
    lines += ["", "The speed layer itself: sustained on the same backlog, then event → visible at 90 % of each one's own "
              "sustained rate (one window), with where that window's CPU went (cores on a CPU / runnable but waiting).", "",
              "| speed layer | sustained | paced at | p50 | p99 | CPU in the window |", "|---|---:|---:|---:|---:|---|"]
    lines += [f"| {name} | {rate(f['eps'])} | {f['rate_eps']:,} ev/s | {f['p50_ms']:,} ms | {f['p99_ms']:,} ms | "
              f"{cpu_text(f['cpu']) if f.get('cpu') else ''} |" for name, f in extra["speed_ab"].items()]
    return lines


def write_results(figures: dict[str, Figure], sizes: dict, notes: list[str], extra: dict, out: Path = ROOT) -> None:
    from importlib.metadata import version

    m = machine()
    versions = {p: version(p) for p in ("pyspark", "delta-spark", "faust-streaming", "aiokafka", "dagster", "duckdb", "SQLAlchemy")}
    results = {key: round(f.median, 3) for key, f in figures.items()}
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**results, "sizes": sizes, "machine": m, "versions": versions,
                                                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra},
                                                  indent=2) + "\n")
    raw = figures["raw_eps"].median
    ratio = {
        "speed_eps": (f"{figures['speed_eps'].median / raw:.0%} of raw (target ≥ 30 %); "
                      f"{figures['speed_eps'].median / figures['faust_ceiling_eps'].median:.1f}× the Faust ceiling (it takes whole "
                      "Kafka fetches, not Faust's per-event stream)"),
        "raw_librdkafka_eps": f"{figures['raw_librdkafka_eps'].median / raw:.2f}× aiokafka",
        "faust_ceiling_eps": f"{figures['faust_ceiling_eps'].median / raw:.0%} of raw: Faust's own per-event cost",
        "replay_eps": f"{figures['replay_eps'].median / raw:.0%} of raw (target ≥ 50 %)",
        "snapshot_replay_s": (f"{figures['full_replay_s'].median / figures['snapshot_replay_s'].median:.1f}× faster than full "
                              "(target ≥ 10×)") if "snapshot_replay_s" in figures else "",
        "spark_s": f"{figures['spark_s'].median / figures['duckdb_s'].median:.1f}× DuckDB, like for like (target ≤ 3×)",
        "spark_engine_s": f"{figures['spark_engine_s'].median / figures['duckdb_engine_s'].median:.1f}× DuckDB, engine only",
        "swap_ms": "target < 100 ms",
        "speed_p99_ms": "target ≤ 1000 ms at 90 % of the sustained rate",
        "kappa_live_eps": (f"{figures['kappa_live_eps'].median / figures['replay_eps'].median:.0%} of the replay; "
                           f"{figures['kappa_live_eps'].median / figures['speed_eps'].median:.1f}× the speed layer"),
        "kappa_live_p99_ms": "target ≤ 1000 ms at 90 % of its sustained rate (issue 13: visible within about a second)",
        "isolation_p99_ms": (f"without a replay: {extra['isolation']['p99_ms_without_replay']:,.0f} ms"
                             if "isolation" in extra else ""),
    }
    lines = [
        "# lklab benchmark results", "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB), "
        f"Python {m['python']}, {m['java']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "Sizes: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in sizes.items()) + ".", "",
        "| figure | key | median | min | max | runs | ratio | peak RSS | state held |",
        "|---|---|---:|---:|---:|---:|---|---|---:|",
    ]
    for key, f in figures.items():
        fmt = (lambda v: f"{v:,.0f}") if f.unit in ("ev/s",) else (lambda v: f"{v:,.2f}")
        lines.append(f"| {f.label} | `{key}` | {fmt(f.median)} {f.unit} | {fmt(min(f.values))} | {fmt(max(f.values))} | "
                     f"{len(f.values)} | {ratio.get(key, '')} | "
                     + ", ".join(f"{name} {_mb(b)}" for name, b in f.peak_rss.items())
                     + f" | {_state(f.state[-1]) if f.state else ''} |")
    lines += live_table(figures, extra)
    lines += ab_tables(extra, figures["raw_eps"].median)
    lines += replay_table(extra)
    lines += history_table(extra)
    lines += spark_profile_table(extra)
    lines += pyspy_table("Where the speed worker's CPU goes at 90 % (py-spy, one more window)", extra.get("speed_profile_90pct"))
    lines += pyspy_table("Where the live Kappa job's CPU goes at 90 % (py-spy, one more window)", extra.get("kappa_live_profile_90pct"))
    lines += pyspy_table(f"Where the replay's CPU goes (py-spy, one more replay of the first {REPLAY_SHARES[0]:.0%} of the log)",
                         extra.get("replay_profile"))
    lines += ["", "## Notes", "", *[f"- {n}" for n in notes], ""]
    bounds = ROOT / "BOUNDS.md"  # hand-written, from profiles: what bounds the figures that miss
    (out / "RESULTS.md").write_text("\n".join(lines) + ("\n" + bounds.read_text() if bounds.exists() else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000_000, help="deliveries for raw, replay and batch")
    parser.add_argument("--speed-events", type=int, default=100_000, help="deliveries for the sustained speed-layer run")
    parser.add_argument("--kappa-live-events", type=int, default=1_000_000,
                        help=f"deliveries for the sustained live Kappa run ({HYDRATE_SHARE:.0%} hydrate it, the rest is its backlog)")
    parser.add_argument("--history-events", type=int, default=1_000_000, help="deliveries over 30 days for snapshot vs full")
    parser.add_argument("--history-events-per-day", type=int, default=HISTORY_EVENTS_PER_DAY,
                        help=f"events a day for the history curve ({', '.join(map(str, HISTORY_DAYS))} days)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-s", type=float, default=15.0)
    parser.add_argument("--replay-rate", type=float, default=2000.0, help="the throttled replay during the isolation run")
    parser.add_argument("--kappa-checkpoint-interval-s", type=float, default=Settings().kappa_checkpoint_interval_s,
                        help="the live Kappa job's checkpoint interval (recorded with its figures)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes ({QUICK_FLAGS}) "
                             f"unless given, a 1 GB Spark driver, and results written to {QUICK_OUT.relative_to(Path.cwd())}/ "
                             "instead of bench/: checks that the suite runs, its figures are not the record")
    parser.add_argument("--out", type=Path, default=None, help="where RESULTS.md and results.json go (default bench/)")
    if "--quick" in sys.argv[1:]:
        parser.set_defaults(**QUICK)
    args = parser.parse_args()
    if args.kappa_checkpoint_interval_s <= 0:
        parser.error(f"--kappa-checkpoint-interval-s {args.kappa_checkpoint_interval_s:g}: must be > 0 seconds")
    out = args.out or (QUICK_OUT if args.quick else ROOT)
    settings = demo_settings().model_copy(update={"home": Path.cwd() / ".lklab" / "bench", "topic": "bench.events",
                                                  "topic_segment_bytes": None,
                                                  "spark_driver_memory": "1g" if args.quick else "2g",
                                                  "kappa_checkpoint_interval_s": args.kappa_checkpoint_interval_s})
    if args.speed_events < 2 * settings.speed_batch_max:  # the Faust ceiling's clock starts after one batch
        parser.error(f"--speed-events {args.speed_events}: at least {2 * settings.speed_batch_max:,} "
                     f"(twice the speed layer's batch of {settings.speed_batch_max:,})")
    shutil.rmtree(settings.home, ignore_errors=True)
    settings.home.mkdir(parents=True)
    say = lambda text: print(f"[bench {datetime.now():%H:%M:%S}] {text}", flush=True)  # noqa: E731
    figures = {k: Figure(k, label, unit) for k, label, unit in (
        ("raw_eps", "raw aiokafka consume + JSON decode", "ev/s"),
        ("raw_librdkafka_eps", "raw confluent-kafka (librdkafka) consume + JSON decode", "ev/s"),
        ("faust_ceiling_eps", "Faust worker, no-op agent (take_events only)", "ev/s"),
        ("speed_eps", "speed layer, one worker taking whole Kafka fetches, sustained", "ev/s"),
        ("speed_p50_ms", "speed layer event → visible, p50 at 90 % rate", "ms"),
        ("speed_p99_ms", "speed layer event → visible, p99 at 90 % rate", "ms"),
        ("kappa_live_eps", f"live Kappa job ({KAPPA_LIVE_VIEW}), following a backlog, sustained", "ev/s"),
        ("kappa_live_p50_ms", "live Kappa job event → visible, p50 at 90 % rate", "ms"),
        ("kappa_live_p99_ms", "live Kappa job event → visible, p99 at 90 % rate", "ms"),
        ("replay_eps", "Kappa replay (revenue_per_minute)", "ev/s"),
        ("full_replay_s", "full replay of 30 days", "s"),
        ("snapshot_replay_s", "replay from the day-29 snapshot", "s"),
        ("spark_s", "Spark silver → gold Delta, 3 views (the batch layer's build_gold)", "s"),
        ("duckdb_s", "DuckDB, same silver → same partitioned Delta (deltalake), 3 views", "s"),
        ("spark_engine_s", "Spark, 3 views computed, nothing written (noop sink)", "s"),
        ("duckdb_engine_s", "DuckDB, 3 views computed into Arrow, nothing written", "s"),
        ("swap_ms", "cutover alias swap", "ms"),
        ("isolation_p99_ms", "speed p99 at 50 % rate during a throttled replay", "ms"),
    )}
    notes, extra = [], {}
    began = time.monotonic()
    kafka_runtime.start(settings)
    try:
        say(f"generating and loading {args.events:,} deliveries")
        data = workload(args.events, seed=1, days=max(1.0, args.events / 500_000))
        events = len(data.deliveries)
        load(settings, data.deliveries)
        del data  # a few GB at 5M events
        for i in range(args.runs):
            figures["raw_eps"].values.append(raw_eps(settings))
            say(f"raw run {i + 1}: {figures['raw_eps'].values[-1]:,.0f} ev/s")
        figures["raw_librdkafka_eps"].values.append(raw_librdkafka_eps(settings))
        say(f"raw librdkafka: {figures['raw_librdkafka_eps'].values[-1]:,.0f} ev/s")
        for i in range(args.runs):
            found = full_replay = replay_run(settings, f"replay{i}")
            figures["replay_eps"].values.append(found.eps)
            figures["replay_eps"].rss("bench (replay)", found.peak_rss)
            figures["replay_eps"].state.append(found.state)
            say(f"replay run {i + 1}: {found.eps:,.0f} ev/s, peak RSS {_mb(found.peak_rss)}, state {_state(found.state)}")
        extra["replay_curve"] = []
        for share in REPLAY_SHARES:
            found = replay_run(settings, f"replay-{share:g}", share)
            extra["replay_curve"].append(asdict(found))
            say(f"replay of {found.events:,} events: {found.eps:,.0f} ev/s, peak RSS {_mb(found.peak_rss)}, "
                f"state {_state(found.state)}")
        extra["replay_curve"].append({**asdict(full_replay), "eps": figures["replay_eps"].median})
        extra["replay_profile"] = pyspy.profile(os.getpid(), settings.home / "replay.pyspy",
                                                lambda: replay_run(settings, "replay-profile", REPLAY_SHARES[0]))
        say(f"replay of the first {REPLAY_SHARES[0]:.0%} under py-spy: {extra['replay_profile']['phases']}")

        live_side_by_side(settings, args, figures, extra, say)
        sustained = figures["speed_eps"].median
        p50, p99, _ = latency(settings, SPEED, "iso", sustained * 0.5, args.latency_s, seed=3, replay_rate=args.replay_rate)
        extra["isolation"] = {"live_rate_eps": round(sustained * 0.5), "replay_max_rate": args.replay_rate,
                              "p99_ms_without_replay": extra["speed_latency_50pct"]["p99_ms"], "p99_ms_with_replay": round(p99, 1)}
        figures["isolation_p99_ms"].values.append(round(p99, 1))
        say(f"isolation: p99 {p99:.0f} ms with a replay at {args.replay_rate:,.0f} ev/s "
            f"(without: {extra['speed_latency_50pct']['p99_ms']:.0f} ms)")

        from lklab.lake.spark import get_spark

        spark = get_spark(settings)
        say("batch: bronze ingest and silver (set-up), then gold by Spark and by DuckDB")
        clock = time.monotonic()
        lake.append_bronze(spark, settings, {}, kafka_io.run(kafka_io.end_offsets(settings)))
        lake.build_silver(spark, settings)
        extra["bronze_silver_setup_s"] = round(time.monotonic() - clock, 1)
        spark_pid = int(spark.sparkContext._jvm.ProcessHandle.current().pid())
        reset_peak(spark_pid)
        reset_peak(os.getpid())
        for i in range(args.runs):
            found = batch_pair(spark, settings, settings.home / "duckdb")
            for key in ("spark_s", "duckdb_s", "spark_engine_s", "duckdb_engine_s"):
                figures[key].values.append(getattr(found, key))
            say(f"batch run {i + 1}: like for like Spark {found.spark_s:.1f}s, DuckDB {found.duckdb_s:.1f}s; engine only "
                f"Spark {found.spark_engine_s:.1f}s, DuckDB {found.duckdb_engine_s:.1f}s; totals {found.totals}")
            if any(a != b for a, b in found.totals.values()):
                notes.append(f"Spark and DuckDB totals differ: {found.totals}")
        figures["spark_s"].rss("Spark JVM", peak_rss(spark_pid))
        figures["duckdb_s"].rss("bench (DuckDB)", peak_rss(os.getpid()))
        extra["spark_profile"] = spark_profile(spark, settings, spark_pid)
        say(f"Spark under JFR: {extra['spark_profile']['wall_s']} s, {extra['spark_profile']['cores_busy']} cores busy, "
            f"phases {extra['spark_profile']['phases']}")

        say(f"30 days of history ({args.history_events:,} deliveries), snapshot at the end of day 29")
        history = snapshot_vs_full(settings, spark, 30, args.history_events // 30, args.runs)
        figures["full_replay_s"].values += history["full_s"]
        figures["snapshot_replay_s"].values += history["snapshot_s"]
        figures["full_replay_s"].rss("bench (replay)", history["peak_rss"]["full"])
        figures["snapshot_replay_s"].rss("bench (replay)", history["peak_rss"]["snapshot"])
        extra["history_30d"], extra["history_curve"] = history, []
        extra["history_events_per_day"] = args.history_events_per_day
        for days in HISTORY_DAYS:
            say(f"history curve: {days} days at {args.history_events_per_day:,} events a day")
            extra["history_curve"].append(snapshot_vs_full(settings, spark, days, args.history_events_per_day,
                                                           HISTORY_CURVE_RUNS, seed=5))
            say(f"  full {statistics.median(extra['history_curve'][-1]['full_s']):.1f} s, "
                f"ratio {extra['history_curve'][-1]['ratio']:.1f}×")
        figures["swap_ms"].values += swap_ms(settings, spark, args.history_events // 30)
        notes.append(f"swap_ms is the median of {len(figures['swap_ms'].values)} swaps (alias + history + publish record in one "
                     "SQLite transaction); a cutover's validation and snapshot are not included.")
        figures["raw_eps"].rss("Kafka broker (whole bench)", peak_rss(kafka_runtime.read_pid(settings)))
    finally:
        speed.stop(settings)
        kafka_runtime.stop(settings)
    sizes = {"events": events, "speed_events": args.speed_events, "kappa_live_events": args.kappa_live_events,
             "history_events": history["deliveries"], "history_events_per_day": args.history_events_per_day,
             "runs": args.runs, "latency_s": args.latency_s, "kappa_checkpoint_interval_s": args.kappa_checkpoint_interval_s}
    notes += LIVE_DEFINITIONS
    notes.append("Peak RSS: each process's VmHWM. The speed layer's worker and the live Kappa job are read before they "
                 "stop; processes that live through the bench (the bench itself, the Spark JVM) have their peak reset "
                 "(clear_refs) before the figure, so theirs starts from what they held already; the broker's is over "
                 "the whole bench. State held: the consumer's dedup and contribution state in its SQLite store: "
                 "rows (dbstat pages, indexes included; the speed layer) and chunks (payload bytes, entries counted as "
                 "rows; a Kappa job: lklab.engine.chunks).")
    if args.quick:
        notes.append("A --quick run: small sizes, to check that the suite runs end to end. Its figures are not the record.")
    notes.append(f"The whole bench took {(time.monotonic() - began) / 60:.1f} min (generation and loading included).")
    write_results(figures, sizes, notes, extra, out)
    say(f"wrote {out / 'RESULTS.md'} and {out / 'results.json'}")


if __name__ == "__main__":
    main()
