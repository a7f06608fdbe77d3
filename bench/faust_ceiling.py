"""Benchmark-only: the Faust ceiling. A Faust worker with the speed layer's consumer settings
whose agent only takes batches of events (`take_events`) and counts them: what one Faust worker
can hand to an agent at most, before any sink work.

Run by bench/suite.py as `python bench/faust_ceiling.py worker -l warn` with the LKLAB_*
environment, BENCH_TOTAL (records to wait for) and BENCH_OUT (where to write the rate as JSON).
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import faust

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lklab.core.config import Settings  # noqa: E402
from streaming.app import consumer_options, event_source  # noqa: E402

settings = Settings()
total, out = int(os.environ["BENCH_TOTAL"]), Path(os.environ["BENCH_OUT"])
app = faust.App(f"bench-faust-ceiling-{os.getpid()}", **consumer_options(settings), web_enabled=False,
                datadir=str(settings.home / "faust-ceiling"))
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
            out.write_text(json.dumps({"records": seen["records"], "seconds": elapsed, "eps": seen["records"] / elapsed}))
            os._exit(0)  # a benchmark probe: no clean shutdown needed, nothing to commit


if __name__ == "__main__":
    app.main()
