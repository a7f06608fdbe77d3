"""The drill's event stream: one generated workload, split by arrival time into a backlog (what
the log held before the run) and a live section produced at a fixed speed-up of its arrival
times, so late events, duplicates and corrections arrive as the generator scheduled them. Every
produced batch is marked on a timeline (when, how many events the log held, its newest event
time): readers are scored against the oracle over what the log held at the moment they read."""
from __future__ import annotations

import threading
import time
import uuid
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from lklab.core.config import Settings
from lklab.core.events import Event, EventType
from lklab.log.generator import GeneratorConfig, Workload, generate
from lklab.log.produce import ProducerSession, produce_events


@dataclass(frozen=True)
class StreamShape:
    """How much is streamed: event-time minutes of backlog and of live stream, the rate, and the
    speed-up of the live section (event seconds per wall second)."""

    backlog_min: int
    live_min: int
    rides_per_minute: int
    speedup: float
    tick_s: float = 0.25

    @property
    def live_wall_s(self) -> float:
        return self.live_min * 60 / self.speedup


@dataclass(frozen=True)
class Mark:
    t: float  # seconds since the run started, when the batch was acknowledged
    delivered: int  # events the log held
    newest: datetime | None  # the newest event time the log held


@dataclass
class LogTimeline:
    """What the log held when: the marks, and the events in delivery order (thread-safe appends)."""

    events: list[Event] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, t: float, batch: list[Event]) -> None:
        with self.lock:
            self.events.extend(batch)
            newest = max((e.event_time for e in batch), default=None)
            held = self.marks[-1].newest if self.marks else None
            self.marks.append(Mark(t, len(self.events), max(filter(None, (held, newest)), default=None)))

    def mark_at(self, t: float) -> int:
        """Index of the last mark at or before t (-1: none yet)."""
        with self.lock:
            return bisect_right([m.t for m in self.marks], t) - 1


def workload_for(shape: StreamShape, seed: int, start: datetime, **overrides: object) -> Workload:
    """The seed's profile (99.9 % within 5 min, 0.1 % up to 48 h late, duplicates, corrections
    that move any field, corrections first) over backlog + live minutes."""
    config = GeneratorConfig(seed=seed, start=start, duration_s=(shape.backlog_min + shape.live_min) * 60,
                             rides_per_minute=shape.rides_per_minute, **overrides)
    return generate(config)


@dataclass
class LiveStream:
    """Produces a workload: the backlog at once, then the live section paced in a thread."""

    settings: Settings
    workload: Workload
    shape: StreamShape
    clock: float  # time.monotonic() of the run's start
    timeline: LogTimeline = field(default_factory=LogTimeline)
    injected: list[Event] = field(default_factory=list)
    pii_dropped: int = 0  # live events whose PII the edge dropped: their user was forgotten
    _pending: list[Event] = field(default_factory=list)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def live_start(self) -> datetime:
        return self.workload.config.start + timedelta(minutes=self.shape.backlog_min)

    def split(self) -> tuple[list[Event], list[tuple[float, Event]]]:
        """The backlog, and the live events with the wall offset (s) each is due at."""
        end = self.live_start + timedelta(minutes=self.shape.live_min)
        backlog, live = [], []
        for event, arrival in zip(self.workload.deliveries, self.workload.arrival_times):
            if arrival < self.live_start:
                backlog.append(event)
            elif arrival < end:
                live.append(((arrival - self.live_start).total_seconds() / self.shape.speedup, event))
        return backlog, live

    def now(self) -> float:
        return time.monotonic() - self.clock

    def produce_backlog(self) -> int:
        backlog, _ = self.split()
        produce_events(self.settings, backlog, riders=self.workload.riders)
        self.timeline.add(self.now(), backlog)
        return len(backlog)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drill-stream", daemon=True)
        self._thread.start()

    def inject(self, event: Event) -> None:
        """Deliver an extra event with the next batch (a drill's poison event, say)."""
        with self.timeline.lock:
            self._pending.append(event)
            self.injected.append(event)

    def _run(self) -> None:
        with ProducerSession(self.settings, riders=self.workload.riders) as producer:  # opened once: a tick is one acknowledged batch
            self._pace(producer)

    def _pace(self, producer: ProducerSession) -> None:
        _, live = self.split()
        began, i = self.now(), 0
        while not self._stop.is_set() and (i < len(live) or self._pending):
            due = self.now() - began
            j = i
            while j < len(live) and live[j][0] <= due:
                j += 1
            with self.timeline.lock:
                extra, self._pending = self._pending, []
            batch = [e for _, e in live[i:j]] + extra
            if batch:
                self.pii_dropped += producer.send(batch).pii_dropped
                self.timeline.add(self.now(), batch)
            i = j
            self._stop.wait(self.shape.tick_s)

    def join(self, timeout_s: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)

    def stop(self) -> None:
        self._stop.set()
        self.join(30)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def poison_payment(like: Event, at: datetime) -> Event:
    """A zero-amount capture (valid under the schema, never generated) at event time `at`: the
    event a faulty logic version cannot handle."""
    return like.replace(event_id=f"poison-{uuid.uuid4().hex[:12]}", event_version=1, event_type=EventType.PAYMENT_CAPTURED,
                        amount_cents=0, event_time=at)
