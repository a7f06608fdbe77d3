"""Readers and a monitor over the HTTP API, as a dashboard and an on-call engineer see the lab.

A reader polls one architecture's view at a fixed rate for the whole run and keeps each raw
answer with the time it was asked (scored later, lklab.drills.scoring). The monitor reads the
signals off those same answers (each says whether it is stale and why, and whether the batch
layer is blocked), so detection costs no extra request and is timed to the read that showed it."""
from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lklab.core.http import READ_TIMEOUT_S, get_json
from lklab.drills.result import KAPPA, LAMBDA, Signal



def view_path(arch: str, view: str) -> str:
    return f"/views/{view}" if arch == LAMBDA else f"/kappa/views/{view}"


@dataclass
class RawRead:
    t: float  # when it was asked, seconds since the run started
    status: int
    body: dict[str, Any]
    answered: float | None = None  # when the answer came back (None: at once); the answer is of some state in between

    @property
    def answered_t(self) -> float:
        return self.t if self.answered is None else self.answered


@dataclass
class Reader:
    """Polls `GET <api>/views/VIEW` (Lambda) or `/kappa/views/VIEW` (Kappa) every interval."""

    arch: str
    url: str
    interval_s: float
    now: Callable[[], float]
    on_read: Callable[[str, RawRead], None] | None = None  # (arch, read), e.g. Monitor.observe
    reads: list[RawRead] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"reader-{self.arch}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            asked = self.now()
            status, body = get_json(self.url)
            read = RawRead(asked, status, body, answered=self.now())
            self.reads.append(read)
            if self.on_read:
                self.on_read(self.arch, read)
            self._stop.wait(max(0.0, self.interval_s - (self.now() - asked)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(READ_TIMEOUT_S + 5)


@dataclass
class Monitor:
    """Records when each signal first fires (and fires again after clearing), per architecture:
    from the readers' answers (`observe`) and from what the harness saw itself (`note`)."""

    view: str
    now: Callable[[], float]
    speed_layer: bool = True  # False: the view has no speed layer, its health is no signal for it
    signals: dict[str, list[Signal]] = field(default_factory=lambda: {LAMBDA: [], KAPPA: []})
    _active: set[tuple[str, str]] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, arch: str, name: str, detail: str) -> None:
        """A signal the harness saw itself (a crash, a refused cutover, a failed check)."""
        with self._lock:
            self.signals[arch].append(Signal(t=self.now(), name=name, detail=detail))

    def observe(self, arch: str, read: RawRead) -> None:
        """The signals one answer carries. Lambda: `health` (the speed layer is unhealthy, the
        answer is batch-only and flagged stale) and `gate` (the batch layer is blocked). Kappa:
        `lag` (the published job's answer is flagged stale, or refused as stale with a 503)."""
        body = read.body
        if arch == LAMBDA and read.status in (200, 503):
            if self.speed_layer:
                self._edge(LAMBDA, "health", bool(body.get("stale")) or read.status == 503,
                           body.get("stale_reason") or body.get("detail") or "speed layer unhealthy")
            if read.status == 200:  # a refused answer says nothing about the batch layer
                blocked = body.get("batch_blocked")
                self._edge(LAMBDA, "gate", blocked is not None, f"batch blocked by {blocked['gate']}: {blocked['reason']}" if blocked else "")
        elif arch == KAPPA and read.status in (200, 503):
            self._edge(KAPPA, "lag", bool(body.get("stale")) or read.status == 503,
                       f"{body.get('version') or self.view}: {body.get('stale_reason') or body.get('detail')}")

    def _edge(self, arch: str, name: str, firing: bool, detail: str) -> None:
        key = (arch, name)
        if firing and key not in self._active:
            self._active.add(key)
            self.note(arch, name, detail)
        elif not firing:
            self._active.discard(key)
