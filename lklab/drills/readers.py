"""Readers and a monitor over the HTTP API, as a dashboard and an on-call engineer see the lab.

A reader polls one architecture's view at a fixed rate for the whole run and keeps each raw
answer with the time it was asked (scored later, lklab.drills.scoring). The monitor polls
/lambda/status and /kappa/status and records each detection signal when it first appears."""
from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lklab.drills.result import KAPPA, LAMBDA, Signal

READ_TIMEOUT_S = 5.0


def get_json(url: str, timeout_s: float = READ_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    """(status, body) of a GET; (0, {}) when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - loopback URL we built
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError):
        return 0, {}


def view_path(arch: str, view: str) -> str:
    return f"/views/{view}" if arch == LAMBDA else f"/kappa/views/{view}"


@dataclass
class RawRead:
    t: float  # when it was asked, seconds since the run started
    status: int
    body: dict[str, Any]


@dataclass
class Reader:
    """Polls `GET <api>/views/VIEW` (Lambda) or `/kappa/views/VIEW` (Kappa) every interval."""

    arch: str
    url: str
    interval_s: float
    now: Callable[[], float]
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
            self.reads.append(RawRead(asked, status, body))
            self._stop.wait(max(0.0, self.interval_s - (self.now() - asked)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(READ_TIMEOUT_S + 5)


@dataclass
class Monitor:
    """Records when each signal first fires (and fires again after clearing), per architecture."""

    api: str
    view: str
    now: Callable[[], float]
    interval_s: float = 0.5
    speed_layer: bool = True  # False: the view has no speed layer, its health is no signal for it
    signals: dict[str, list[Signal]] = field(default_factory=lambda: {LAMBDA: [], KAPPA: []})
    _active: set[tuple[str, str]] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="drill-monitor", daemon=True)
        self._thread.start()

    def note(self, arch: str, name: str, detail: str) -> None:
        """A signal the harness saw itself (a crash, a refused cutover, a failed check)."""
        self.signals[arch].append(Signal(t=self.now(), name=name, detail=detail))

    def _edge(self, arch: str, name: str, firing: bool, detail: str) -> None:
        key = (arch, name)
        if firing and key not in self._active:
            self._active.add(key)
            self.note(arch, name, detail)
        elif not firing:
            self._active.discard(key)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._lambda()
            self._kappa()
            self._stop.wait(self.interval_s)

    def _lambda(self) -> None:
        status, body = get_json(f"{self.api}/lambda/status")
        if status != 200:
            return
        speed = body.get("speed") or {}
        if self.speed_layer:
            self._edge(LAMBDA, "health", not speed.get("healthy", True), speed.get("reason") or "speed layer unhealthy")
        blocked = body.get("batch_blocked")
        self._edge(LAMBDA, "gate", blocked is not None, f"batch blocked by {blocked['gate']}: {blocked['reason']}" if blocked else "")

    def _kappa(self) -> None:
        status, body = get_json(f"{self.api}/kappa/status")
        if status != 200:
            return
        published = [j for j in body.get("jobs", []) if j.get("published") and j.get("view") == self.view]
        for job in published:
            self._edge(KAPPA, "lag", bool(job.get("stale")), f"{job['output']}: {job.get('stale_reason')}")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(READ_TIMEOUT_S * 2 + 5)
