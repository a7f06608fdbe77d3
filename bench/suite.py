"""Benchmarks, not tests: every layer against its limit and its peer, on the same machine, in the
same run, on the same data. `make bench` runs it and writes bench/RESULTS.md and bench/results.json.

Hermetic: its own broker under .lklab/bench on free loopback ports; it stops what it starts.
Each figure is the median of --runs runs, with min and max. Sizes are flags; see RESULTS.md for
the sizes of the recorded run and what bounds the figures that miss their targets.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lklab.log import kafka_io
from lklab.log import broker as kafka_runtime
from lklab import kappa
from lklab.lake import tables as lake
from lklab.engine import snapshots
from lklab.lambda_arch import speed
from lklab import views
from lklab.core.config import Settings
from lklab.scenarios.demo import demo_settings
from lklab.log.generator import GeneratorConfig, generate
from lklab.serving import progress
from lklab.serving.store import make_engine
from lklab.serving.progress import read_progress

ROOT = Path(__file__).resolve().parent
START = datetime(2026, 10, 1, tzinfo=timezone.utc)
HISTORY_TOPIC = "bench.history"


@dataclass
class Figure:
    key: str
    label: str
    unit: str
    values: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.values)


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


# --- 2. speed layer ---------------------------------------------------------------------------

def _fresh(settings: Settings, tag: str) -> Settings:
    return settings.model_copy(update={"serving_url": f"sqlite:///{settings.home / f'{tag}.db'}", "speed_group": f"bench-{tag}"})


def speed_sustained(settings: Settings, tag: str) -> float:
    """One Faust worker from earliest over the whole topic: records/s from its first committed
    batch until its lag is 0 (worker start-up and group join excluded)."""
    run = _fresh(settings, tag)
    engine = make_engine(run)
    committed = lambda: sum(p.next_offset for p in read_progress(engine, run.topic, run.speed_group).values())  # noqa: E731
    speed.start(run)
    try:
        while not committed():
            time.sleep(0.05)
        clock, first = time.monotonic(), committed()
        speed.wait_caught_up(run, timeout_s=3600, poll_s=0.2)
        return (sum(kafka_io.run(kafka_io.end_offsets(run)).values()) - first) / (time.monotonic() - clock)
    finally:
        speed.stop(run)


def faust_ceiling_eps(settings: Settings, tag: str, total: int) -> float:
    """bench/faust_ceiling.py: a Faust worker with the speed layer's settings and a no-op agent."""
    run = _fresh(settings, tag)
    out = run.home / f"{tag}.json"
    env = {**os.environ, **run.to_env(), "BENCH_TOTAL": str(total), "BENCH_OUT": str(out)}
    (run.home / tag).mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(ROOT / "faust_ceiling.py"), "worker", "-l", "warn"], env=env, cwd=run.home / tag,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600, check=True)
    return json.loads(out.read_text())["eps"]


def _watch(run: Settings, visible: dict[tuple[int, int], float], stop: threading.Event) -> None:
    """When each offset became visible in serving: the sink commits offsets with the rows, so a
    committed next_offset past an offset means that record's effect is readable."""
    engine = make_engine(run)
    seen: dict[int, int] = {}
    while not stop.is_set():
        now = time.monotonic()
        with engine.connect() as conn:
            committed = progress.next_offsets(conn, run.speed_group, run.topic)
        for partition, next_offset in committed.items():
            for offset in range(seen.get(partition, 0), next_offset):
                visible[(partition, offset)] = now
            seen[partition] = next_offset
        time.sleep(0.01)


def _paced(run: Settings, deliveries, rate: float) -> list[tuple[int, int, float]]:
    """Send at a steady rate (in 2 ms ticks); returns (partition, offset, sent at) per record."""
    payloads = [(e.ride_id.encode(), e.to_json().encode()) for e in deliveries]
    producer, sent_at, landed = _producer(run, linger_ms=1), [0.0] * len(payloads), [None] * len(payloads)

    def report(i: int):
        return lambda err, msg: landed.__setitem__(i, (msg.partition(), msg.offset()) if err is None else err)

    clock, i = time.monotonic(), 0
    while i < len(payloads):
        due = min(len(payloads), int((time.monotonic() - clock) * rate) + 1)
        for i in range(i, due):
            sent_at[i] = time.monotonic()
            _produce(producer, run.topic, *payloads[i], report(i))
        i = due
        producer.poll(0)
        time.sleep(0.002)
    if producer.flush(60) or any(not isinstance(x, tuple) for x in landed):
        raise RuntimeError(f"paced send to {run.topic}: {sum(not isinstance(x, tuple) for x in landed)} deliveries failed")
    return [(p, o, at) for (p, o), at in zip(landed, sent_at)]


def speed_latency(settings: Settings, tag: str, rate: float, seconds: float, seed: int,
                  replay_rate: float | None = None) -> tuple[float, float]:
    """p50/p99 (ms) from send to visible in serving, at a steady `rate` on a fresh topic; with
    `replay_rate`, while a Kappa replay of the bench topic runs throttled to that rate."""
    run = _fresh(settings, tag).model_copy(update={"topic": f"bench.latency.{tag}"})
    kafka_io.run(kafka_io.ensure_topics(run))
    deliveries = workload(int(rate * seconds), seed).deliveries[: int(rate * seconds)]
    speed.start(run)
    visible: dict[tuple[int, int], float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(run, visible, stop), daemon=True)
    watcher.start()
    replay = None
    if replay_rate:  # a separate process, as in production, stopped when the window ends
        replay_run = _fresh(settings, f"{tag}-replay")
        replay = subprocess.Popen([str(Path(sys.executable).parent / "lklab"), "replay", "revenue_per_minute", "--version", "1",
                                   "--max-rate", str(replay_rate)], env={**os.environ, **replay_run.to_env()},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)  # let it get going before the window opens
    try:
        sent = _paced(run, deliveries, rate)
        deadline = time.monotonic() + 120
        while any((p, o) not in visible for p, o, _ in sent) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        watcher.join(timeout=10)
        speed.stop(run)
        if replay is not None:
            replay.terminate()
            replay.wait(timeout=30)
    ms = sorted((visible[(p, o)] - at) * 1000 for p, o, at in sent if (p, o) in visible)
    if len(ms) < len(sent):
        raise RuntimeError(f"{len(sent) - len(ms)} of {len(sent)} records never became visible within 120 s")
    return ms[len(ms) // 2], ms[min(len(ms) - 1, int(len(ms) * 0.99))]


# --- 3/4. Kappa replay, full and from a snapshot ----------------------------------------------

def replay_eps(settings: Settings, tag: str) -> float:
    run = _fresh(settings, tag)
    return kappa.replay(run, make_engine(run), "revenue_per_minute", 1).events_per_s


def snapshot_vs_full(settings: Settings, spark, history, runs: int) -> tuple[list[float], list[float]]:
    """30 days of history with a snapshot at the end of day 29: full replay vs replay from it."""
    run = _fresh(settings, "history").model_copy(update={"topic": HISTORY_TOPIC})
    engine = make_engine(run)
    cut = next(i for i, at in enumerate(history.arrival_times) if at >= START + timedelta(days=29))
    load(run, history.deliveries[:cut])
    kappa.replay(run, engine, "revenue_per_minute", 1)
    snapshots.take(run, engine, spark, "revenue_per_minute", kappa.spec_for("revenue_per_minute", 1),
                   kappa.replay_scope("revenue_per_minute", 1))
    load(run, history.deliveries[cut:], run.topic)
    full, fast = [], []
    for i in range(runs):
        full.append(kappa.replay(run, engine, "revenue_per_minute", 2 + 2 * i).seconds)
        clock = time.monotonic()  # includes verifying and loading the snapshot
        kappa.replay(run, engine, "revenue_per_minute", 3 + 2 * i, snapshot="latest", spark=spark)
        fast.append(time.monotonic() - clock)
    return full, fast


# --- 5. batch: Spark against DuckDB on the same silver files ---------------------------------

def duckdb_sql(spec: views.ViewSpec, files: list[str]) -> str:
    """The view's one definition (lklab.views.ViewSpec) as DuckDB SQL over silver Parquet files."""
    window = f"to_timestamp(floor(epoch(event_time) / {spec.window_s}) * {spec.window_s})"
    where = [f"{spec.entity} IS NOT NULL"]
    if spec.event_types is not None:
        where.append("event_type IN (" + ", ".join(f"'{t}'" for t in sorted(spec.event_types)) + ")")
    if isinstance(spec.measure, views.MoneySum):
        sign = "CASE event_type " + " ".join(f"WHEN '{k}' THEN {v}" for k, v in views.MONEY_SIGN.items()) + " END"
        measure = f"sum(amount_cents * {sign}) AS {spec.value_column}, count(*) AS events"
        where.append(f"amount_cents * {sign} IS NOT NULL")
    else:
        measure = f"count(DISTINCT user_id) AS {spec.value_column}"
    listing = ", ".join(f"'{f}'" for f in files)
    return (f"SELECT {spec.entity}, {window} AS window_start, {measure} FROM read_parquet([{listing}]) "
            f"WHERE {' AND '.join(where)} GROUP BY ALL")


def batch_pair(spark, settings: Settings, out: Path) -> tuple[float, float, dict]:
    """Gold for every view from the same silver: Spark (writes Delta) vs DuckDB (writes Parquet)."""
    import duckdb

    clock = time.monotonic()
    for spec in views.SPEED_LAYER.values():
        lake.build_gold(spark, settings, spec)
    spark_s = time.monotonic() - clock
    files = spark.read.format("delta").load(lake.path(settings, lake.SILVER)).inputFiles()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    con = duckdb.connect()
    con.execute("SET threads = 2")
    clock = time.monotonic()
    for spec in views.SPEED_LAYER.values():
        con.execute(f"COPY ({duckdb_sql(spec, files)}) TO '{out / spec.name}.parquet' (FORMAT parquet)")
    duck_s = time.monotonic() - clock
    totals = {}
    for spec in views.SPEED_LAYER.values():  # the two engines must agree, or the timing means nothing
        gold = spark.read.format("delta").load(lake.path(settings, lake.gold_table(spec.name)))
        spark_total = gold.agg({spec.value_column: "sum"}).collect()[0][0]
        duck_total = con.execute(f"SELECT sum({spec.value_column}) FROM '{out / spec.name}.parquet'").fetchone()[0]
        totals[spec.name] = (int(spark_total or 0), int(duck_total or 0))
    return spark_s, duck_s, totals


# --- 6. cutover swap --------------------------------------------------------------------------

def swap_ms(settings: Settings, spark, swaps: int = 50) -> list[float]:
    """Alias swaps between two complete Kappa outputs of the (smaller) history topic."""
    from lklab.kappa import cutover

    run = _fresh(settings, "swap").model_copy(update={"topic": HISTORY_TOPIC})
    engine = make_engine(run)
    for version in (1, 2):
        kappa.replay(run, engine, "daily_active_users", version)
    snap = cutover.publish_snapshot(run, engine, spark, "daily_active_users", "daily_active_users__v1")
    timings, current = [], None
    for i in range(swaps):
        target = f"daily_active_users__v{1 + i % 2}"
        clock = time.perf_counter()
        cutover._swap(engine, "daily_active_users", current, target, "cutover", "bench", "swap latency", [], snap)
        timings.append((time.perf_counter() - clock) * 1000)
        current = target
    return timings


# --- report -------------------------------------------------------------------------------------

def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), None)
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()[0]
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": mem, "python": platform.python_version(), "java": java}


def write_results(figures: dict[str, Figure], sizes: dict, notes: list[str], extra: dict) -> None:
    from importlib.metadata import version

    m = machine()
    versions = {p: version(p) for p in ("pyspark", "delta-spark", "faust-streaming", "aiokafka", "dagster", "duckdb", "SQLAlchemy")}
    results = {key: round(f.median, 3) for key, f in figures.items()}
    (ROOT / "results.json").write_text(json.dumps({**results, "sizes": sizes, "machine": m, "versions": versions,
                                                   "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), **extra},
                                                  indent=2) + "\n")
    raw = figures["raw_eps"].median
    ratio = {
        "speed_eps": (f"{figures['speed_eps'].median / raw:.0%} of raw (target ≥ 30 %); "
                      f"{figures['speed_eps'].median / figures['faust_ceiling_eps'].median:.0%} of the Faust ceiling"),
        "raw_librdkafka_eps": f"{figures['raw_librdkafka_eps'].median / raw:.2f}× aiokafka",
        "faust_ceiling_eps": f"{figures['faust_ceiling_eps'].median / raw:.0%} of raw: Faust's own per-event cost",
        "replay_eps": f"{figures['replay_eps'].median / raw:.0%} of raw (target ≥ 50 %)",
        "snapshot_replay_s": (f"{figures['full_replay_s'].median / figures['snapshot_replay_s'].median:.1f}× faster than full "
                              "(target ≥ 10×)") if "snapshot_replay_s" in figures else "",
        "spark_s": f"{figures['spark_s'].median / figures['duckdb_s'].median:.1f}× DuckDB (target ≤ 3×)" if "spark_s" in figures else "",
        "swap_ms": "target < 100 ms",
        "speed_p99_ms": "target ≤ 1000 ms at 90 % of the sustained rate",
        "isolation_p99_ms": (f"without a replay: {extra['isolation']['p99_ms_without_replay']:,.0f} ms"
                             if "isolation" in extra else ""),
    }
    lines = [
        "# lklab benchmark results", "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {m['cpu']} ({m['cores']} cores, {m['memory_gib']} GiB), "
        f"Python {m['python']}, {m['java']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
        "Sizes: " + ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in sizes.items()) + ".", "",
        "| figure | key | median | min | max | runs | ratio |", "|---|---|---:|---:|---:|---:|---|",
    ]
    for key, f in figures.items():
        fmt = (lambda v: f"{v:,.0f}") if f.unit in ("ev/s",) else (lambda v: f"{v:,.2f}")
        lines.append(f"| {f.label} | `{key}` | {fmt(f.median)} {f.unit} | {fmt(min(f.values))} | {fmt(max(f.values))} | "
                     f"{len(f.values)} | {ratio.get(key, '')} |")
    lines += ["", "## Notes", "", *[f"- {n}" for n in notes], ""]
    bounds = ROOT / "BOUNDS.md"  # hand-written, from profiles: what bounds the figures that miss
    (ROOT / "RESULTS.md").write_text("\n".join(lines) + ("\n" + bounds.read_text() if bounds.exists() else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000_000, help="deliveries for raw, replay and batch")
    parser.add_argument("--speed-events", type=int, default=100_000, help="deliveries for the sustained speed-layer run")
    parser.add_argument("--history-events", type=int, default=1_000_000, help="deliveries over 30 days for snapshot vs full")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--latency-s", type=float, default=15.0)
    parser.add_argument("--replay-rate", type=float, default=2000.0, help="the throttled replay during the isolation run")
    args = parser.parse_args()
    settings = demo_settings().model_copy(update={"home": Path.cwd() / ".lklab" / "bench", "topic": "bench.events",
                                                  "topic_segment_bytes": None,
                                                  "spark_driver_memory": "2g"})
    shutil.rmtree(settings.home, ignore_errors=True)
    settings.home.mkdir(parents=True)
    say = lambda text: print(f"[bench {datetime.now():%H:%M:%S}] {text}", flush=True)  # noqa: E731
    figures = {k: Figure(k, label, unit) for k, label, unit in (
        ("raw_eps", "raw aiokafka consume + JSON decode", "ev/s"),
        ("raw_librdkafka_eps", "raw confluent-kafka (librdkafka) consume + JSON decode", "ev/s"),
        ("faust_ceiling_eps", "Faust worker, no-op agent (take_events only)", "ev/s"),
        ("speed_eps", "speed layer, one Faust worker, sustained", "ev/s"),
        ("speed_p50_ms", "speed layer event → visible, p50 at 90 % rate", "ms"),
        ("speed_p99_ms", "speed layer event → visible, p99 at 90 % rate", "ms"),
        ("replay_eps", "Kappa replay (revenue_per_minute)", "ev/s"),
        ("full_replay_s", "full replay of 30 days", "s"),
        ("snapshot_replay_s", "replay from the day-29 snapshot", "s"),
        ("spark_s", "Spark silver → gold, 3 views", "s"),
        ("duckdb_s", "DuckDB, same files, same 3 views", "s"),
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
            figures["replay_eps"].values.append(replay_eps(settings, f"replay{i}"))
            say(f"replay run {i + 1}: {figures['replay_eps'].values[-1]:,.0f} ev/s")

        speed_topic = settings.model_copy(update={"topic": "bench.speed"})
        load(speed_topic, workload(args.speed_events, seed=2).deliveries[: args.speed_events])
        for i in range(args.runs):
            figures["speed_eps"].values.append(speed_sustained(speed_topic, f"speed{i}"))
            say(f"speed run {i + 1}: {figures['speed_eps'].values[-1]:,.0f} ev/s")
        figures["faust_ceiling_eps"].values.append(faust_ceiling_eps(speed_topic, "faust-ceiling", int(args.speed_events * 0.9)))
        say(f"Faust ceiling: {figures['faust_ceiling_eps'].values[-1]:,.0f} ev/s")
        sustained = figures["speed_eps"].median
        for share in (0.5, 0.9):
            p50, p99 = speed_latency(settings, f"lat{int(share * 100)}", sustained * share, args.latency_s, seed=3)
            extra[f"speed_latency_{int(share * 100)}pct"] = {"rate_eps": round(sustained * share), "p50_ms": round(p50, 1),
                                                              "p99_ms": round(p99, 1)}
            say(f"latency at {share:.0%} ({sustained * share:,.0f} ev/s): p50 {p50:.0f} ms, p99 {p99:.0f} ms")
        p50, p99 = speed_latency(settings, "iso", sustained * 0.5, args.latency_s, seed=3, replay_rate=args.replay_rate)
        extra["isolation"] = {"live_rate_eps": round(sustained * 0.5), "replay_max_rate": args.replay_rate,
                              "p99_ms_without_replay": extra["speed_latency_50pct"]["p99_ms"], "p99_ms_with_replay": round(p99, 1)}
        figures["isolation_p99_ms"].values.append(round(p99, 1))
        say(f"isolation: p99 {p99:.0f} ms with a replay at {args.replay_rate:,.0f} ev/s "
            f"(without: {extra['speed_latency_50pct']['p99_ms']:.0f} ms)")
        figures["speed_p50_ms"].values.append(extra["speed_latency_90pct"]["p50_ms"])
        figures["speed_p99_ms"].values.append(extra["speed_latency_90pct"]["p99_ms"])

        from lklab.lake.spark import get_spark

        spark = get_spark(settings)
        say("batch: bronze ingest and silver (set-up), then gold by Spark and by DuckDB")
        clock = time.monotonic()
        lake.append_bronze(spark, settings, {}, kafka_io.run(kafka_io.end_offsets(settings)))
        lake.build_silver(spark, settings)
        extra["bronze_silver_setup_s"] = round(time.monotonic() - clock, 1)
        for i in range(args.runs):
            spark_s, duck_s, totals = batch_pair(spark, settings, settings.home / "duckdb")
            figures["spark_s"].values.append(spark_s)
            figures["duckdb_s"].values.append(duck_s)
            say(f"batch run {i + 1}: Spark {spark_s:.1f}s, DuckDB {duck_s:.1f}s; totals {totals}")
            if any(a != b for a, b in totals.values()):
                notes.append(f"Spark and DuckDB totals differ: {totals}")

        say(f"30 days of history ({args.history_events:,} deliveries), snapshot at the end of day 29")
        history = workload(args.history_events, seed=4, days=30)
        full, fast = snapshot_vs_full(settings, spark, history, args.runs)
        figures["full_replay_s"].values += full
        figures["snapshot_replay_s"].values += fast
        figures["swap_ms"].values += swap_ms(settings, spark)
        notes.append(f"swap_ms is the median of {len(figures['swap_ms'].values)} swaps (alias + history + publish record in one "
                     "SQLite transaction); a cutover's validation and snapshot are not included.")
    finally:
        speed.stop(settings)
        kafka_runtime.stop(settings)
    sizes = {"events": events, "speed_events": args.speed_events, "history_events": len(history.deliveries),
             "runs": args.runs}
    notes.append(f"The whole bench took {(time.monotonic() - began) / 60:.1f} min (generation and loading included).")
    write_results(figures, sizes, notes, extra)
    say(f"wrote {ROOT / 'RESULTS.md'} and {ROOT / 'results.json'}")


if __name__ == "__main__":
    main()
