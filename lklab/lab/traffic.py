"""Live traffic for a running lab (`lklab traffic`, started by `lklab up --with-traffic`): the
generator's workload, ten event-minutes at a time, delivered in real time at each event's
arrival time, so late events arrive late, duplicates and corrections arrive when the seed's
profile says (a 48-hour-late event arrives 48 hours later, if the producer still runs). The
rate and lateness are settings (traffic_*). The payments ledger gets each chunk's truth, so the
reconciliation gates have their source of truth."""
from __future__ import annotations

import heapq
import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from lklab.core import processes
from lklab.core.config import Settings
from lklab.core.events import Event
from lklab.log.generator import GeneratorConfig, generate, write_ledger
from lklab.log.produce import ProducerSession
from lklab.serving.store import make_engine

CHUNK = timedelta(minutes=10)
LOOKAHEAD_S = 30.0  # the next chunk is generated this long before its event time starts
TICK_S = 0.25
BEAT_S = 10.0  # `beating`: progress written within this long


def progress_file(settings: Settings) -> Path:
    return settings.home / "up" / "traffic.json"


def progress(settings: Settings) -> dict[str, Any] | None:
    try:
        return json.loads(progress_file(settings).read_text())
    except (FileNotFoundError, ValueError):
        return None


def beating(settings: Settings) -> bool:
    """Its process is alive and wrote progress within BEAT_S."""
    found = progress(settings)
    return (found is not None and time.time() - found["at"] < BEAT_S
            and processes.alive(int(found["pid"]), b"lklab.cli"))


def chunk_config(settings: Settings, start: datetime) -> GeneratorConfig:
    """One chunk of the workload: the seed's shape at the configured rate and lateness; the
    seed is the chunk's start, so every chunk has its own event ids."""
    return GeneratorConfig(seed=int(start.timestamp()) // 60, start=start, duration_s=int(CHUNK.total_seconds()),
                           rides_per_minute=settings.traffic_rides_per_minute, late_fraction=settings.traffic_late_fraction,
                           late_max_s=settings.traffic_late_max_s, on_time_max_s=settings.traffic_on_time_max_s)


class Traffic:
    """The paced producer: a heap of deliveries by arrival time, fed a chunk ahead."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.produced = 0
        self._pending: list[tuple[float, int, Event]] = []
        self._seq = 0
        now = datetime.now(timezone.utc)
        self._next = now.replace(second=0, microsecond=0)

    def _feed(self, engine, now: float) -> None:
        while self._next.timestamp() <= now + LOOKAHEAD_S:
            workload = generate(chunk_config(self.settings, self._next))
            write_ledger(engine, workload.truth)
            for event, arrival in zip(workload.deliveries, workload.arrival_times):
                self._seq += 1
                heapq.heappush(self._pending, (arrival.timestamp(), self._seq, event))
            self._next += CHUNK

    def _due(self, now: float) -> list[Event]:
        due = []
        while self._pending and self._pending[0][0] <= now:
            due.append(heapq.heappop(self._pending)[2])
        return due

    def _beat(self) -> None:
        path = progress_file(self.settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "at": time.time(), "produced": self.produced, "pending": len(self._pending),
                                   "rides_per_minute": self.settings.traffic_rides_per_minute}))
        tmp.replace(path)

    def run(self, stop: threading.Event) -> None:
        """Until `stop` is set: send what is due every TICK_S, acknowledged (acks=all) per batch."""
        engine = make_engine(self.settings)
        try:
            with ProducerSession(self.settings, source="traffic") as producer:
                while not stop.is_set():
                    now = time.time()
                    self._feed(engine, now)
                    due = self._due(now)
                    if due:
                        producer.send(due)
                        self.produced += len(due)
                    self._beat()
                    stop.wait(TICK_S)
        finally:
            engine.dispose()
