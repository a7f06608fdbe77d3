"""Benchmark-only: the Faust ceiling. A Faust worker with the speed layer's consumer settings
whose agent only takes batches of events (`take_events`) and counts them: what one Faust worker
can hand to an agent at most, before any sink work.

Run by bench/suite.py as `python bench/faust_ceiling.py` with the LKLAB_* environment,
BENCH_TOTAL (records to wait for), BENCH_OUT (where to write the rate as JSON) and the variant
under test (bench/suite.py FAUST_VARIANTS): the speed worker's LKLAB_SPEED_EVENT_LOOP, BENCH_MONITOR=none (a Monitor whose
per-event hooks do nothing), BENCH_GROUP (a group shared by several ceiling processes, each of
which counts BENCH_TOTAL of its own partitions' records), BENCH_READY (a file where it writes its
partitions at each assignment, for the bench to wait on); NO_CYTHON=1 and a newer faust-streaming
on PYTHONPATH act at import.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import faust
from faust.sensors.monitor import Monitor

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lklab.core.config import Settings  # noqa: E402
from streaming.app import consumer_options, event_source  # noqa: E402
from streaming.worker import event_loop  # noqa: E402


class QuietMonitor(Monitor):
    """Faust's Monitor without its per-message and per-event bookkeeping (the A/B's no-op Monitor)."""

    def on_message_in(self, *args, **kwargs) -> None:
        pass

    def on_stream_event_in(self, *args, **kwargs) -> None:
        return None

    def on_stream_event_out(self, *args, **kwargs) -> None:
        pass

    def on_message_out(self, *args, **kwargs) -> None:
        pass


settings = Settings()
LOOP = event_loop(settings)  # the speed worker's (LKLAB_SPEED_EVENT_LOOP), before the app exists
datadir = settings.home / "faust-ceiling" / str(os.getpid())
datadir.parent.mkdir(parents=True, exist_ok=True)
total, out = int(os.environ["BENCH_TOTAL"]), Path(os.environ["BENCH_OUT"])
extra = {"monitor": QuietMonitor()} if os.environ.get("BENCH_MONITOR") == "none" else {}
app = faust.App(os.environ.get("BENCH_GROUP", f"bench-faust-ceiling-{os.getpid()}"), **consumer_options(settings),
                web_enabled=False, datadir=str(datadir), **extra)
seen = {"records": 0, "first_at": 0.0}


@app.agent(event_source(app, settings))
async def count(stream) -> None:
    async for events in stream.take_events(settings.speed_batch_max, within=settings.speed_batch_within_s):
        if not seen["first_at"]:  # from the first batch on: group join and start-up excluded
            seen["first_at"] = time.monotonic()
            continue
        seen["records"] += len(events)
        if seen["records"] >= total:
            elapsed = time.monotonic() - seen["first_at"]
            out.write_text(json.dumps({"records": seen["records"], "seconds": elapsed, "eps": seen["records"] / elapsed,
                                       "faust": faust.__version__}))
            os._exit(0)  # a benchmark probe: no clean shutdown needed, nothing to commit


@app.on_partitions_assigned.connect
async def on_assigned(sender, assigned, **kwargs) -> None:
    if ready := os.environ.get("BENCH_READY"):
        Path(ready).write_text(json.dumps(sorted(tp.partition for tp in assigned if tp.topic == settings.topic)))


if __name__ == "__main__":
    faust.Worker(app, loglevel="warn", loop=LOOP).execute_from_commandline()
