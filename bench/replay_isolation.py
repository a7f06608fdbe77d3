"""Benchmark (not a test): does a throttled Kappa replay keep the live speed layer within its
lag threshold? Hermetic: own broker under .lklab/bench. Writes bench/replay_isolation.md.

Phase A: live traffic only. Phase B: the same live traffic while a replay of the whole history
runs with --max-rate. The live speed layer's lag (records) is sampled every 0.25 s."""
from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from lklab.log import kafka_io
from lklab.log import broker as kafka_runtime
from lklab import kappa
from lklab.lambda_arch import speed
from lklab.scenarios.demo import demo_settings
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import produce_events
from lklab.serving.store import make_engine


async def _live(settings, events, rate: float, stop: threading.Event) -> None:
    async with kafka_io.producer(settings) as producer:
        started = time.monotonic()
        for i, event in enumerate(events):
            if stop.is_set():
                break
            await producer.send(settings.topic, key=event.ride_id.encode(), value=event.to_json().encode())
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))


def _sample(settings, seconds: float) -> list[int]:
    lags, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        lags.append(speed.status(settings).total_lag or 0)
        time.sleep(0.25)
    return lags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history-minutes", type=int, default=240)
    parser.add_argument("--live-rate", type=float, default=200.0, help="live events/s")
    parser.add_argument("--max-rate", type=float, default=1500.0, help="replay throttle, events/s")
    parser.add_argument("--phase-s", type=float, default=30.0)
    args = parser.parse_args()
    settings = demo_settings().model_copy(update={"home": Path.cwd() / ".lklab" / "bench"})
    shutil.rmtree(settings.home, ignore_errors=True)
    settings.home.mkdir(parents=True)
    kafka_runtime.start(settings)
    try:
        kafka_io.run(kafka_io.ensure_topics(settings))
        start = datetime(2026, 11, 17, tzinfo=timezone.utc)
        history = generate(GeneratorConfig(seed=1, duration_s=args.history_minutes * 60, rides_per_minute=60, start=start))
        produce_events(settings, history.deliveries)
        speed.start(settings)
        speed.wait_caught_up(settings, timeout_s=600)
        live = generate(GeneratorConfig(seed=2, duration_s=3600, rides_per_minute=60,
                                        start=start + timedelta(minutes=args.history_minutes))).deliveries
        stop = threading.Event()
        producer = threading.Thread(target=lambda: asyncio.run(_live(settings, live, args.live_rate, stop)), daemon=True)
        producer.start()
        quiet = _sample(settings, args.phase_s)
        result: dict = {}
        replay = threading.Thread(target=lambda: result.update(r=kappa.replay(settings, make_engine(settings), "revenue_per_minute", 9,
                                                                               max_rate=args.max_rate)), daemon=True)
        replay.start()
        busy = _sample(settings, args.phase_s)
        stop.set()
        replay.join()
        speed.stop(settings)
    finally:
        kafka_runtime.stop(settings)
    r = result["r"]
    rows = [
        ("no replay", quiet),
        (f"replay throttled to {args.max_rate:.0f} ev/s", busy),
    ]
    lines = [
        "# Live speed-layer lag during a throttled Kappa replay",
        "",
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; history {len(history.deliveries):,} events; live traffic {args.live_rate:.0f} ev/s; "
        f"lag threshold for batch-only serving: {settings.speed_max_lag:,} records.",
        "",
        "| phase | samples | median lag | p95 lag | max lag | within threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name, lags in rows:
        p95 = sorted(lags)[int(0.95 * (len(lags) - 1))]
        lines.append(f"| {name} | {len(lags)} | {statistics.median(lags):.0f} | {p95} | {max(lags)} | {max(lags) <= settings.speed_max_lag} |")
    lines += ["", f"Replay: {r.events:,} events in {r.seconds:.1f} s ({r.events_per_s:,.0f} ev/s measured)."]
    out = Path(__file__).with_name("replay_isolation.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
