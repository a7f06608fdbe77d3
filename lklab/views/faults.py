"""Named faults, one registry for every layer, switched on per layer by `Settings.faults`
({layer: name}, layers in lklab.core.config.FAULT_LAYERS). Two kinds:
- logic faults: deliberate bugs in view logic, for the layers that run the shared fold (the
  Lambda speed layer and every Kappa job);
- stall faults: a publishing transaction (the batch promotion, the Kappa alias swap) that hangs
  after its writes, before its commit, as a node does just before it dies; a drill kills the
  process there (lklab.drills.partial_write).
Drills and tests use them to break one architecture the way production breaks; normal runs
never set them."""
from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from lklab.core.config import FAULT_LAYERS, Settings
from lklab.core.events import Event, EventType
from lklab.views.registry import ViewSpec


class PoisonEvent(RuntimeError):
    """Raised by a faulty logic version on the event it cannot handle: the job crashes."""


@dataclass(frozen=True)
class RefundsAddedSpec(ViewSpec):
    """The classic drift: a second code path that adds refunds instead of subtracting them."""

    def contribution(self, event: Event):
        found = super().contribution(event)
        if found is None or not self.measure.carries_money or event.event_type != EventType.PAYMENT_REFUNDED:
            return found
        key, amount = found
        return key, -int(amount)


@dataclass(frozen=True)
class ZeroAmountCrashSpec(ViewSpec):
    """A bad deploy: new logic divides by the payment's amount (a fee share), so a zero-amount
    payment, rare but valid under the schema, raises on every attempt: a crash loop."""

    def contribution(self, event: Event):
        if self.measure.carries_money and event.amount_cents == 0:
            raise PoisonEvent(f"{self.name}: cannot take a fee share of a zero-amount payment (event {event.event_id})")
        return super().contribution(event)


@dataclass(frozen=True)
class FaultSpec:
    name: str
    description: str
    logic: type[ViewSpec] | None  # None: not a view-logic fault
    layers: tuple[str, ...] = ("speed", "kappa")


STALL_IN_COMMIT = "stall_in_commit"
STALL_S = 8.0  # long enough to kill the process inside it; below the serving store's 30 s busy timeout

FAULTS: dict[str, FaultSpec] = {f.name: f for f in (
    FaultSpec("refund_sign", "refunds are added instead of subtracted (a logic bug in one code path)", RefundsAddedSpec),
    FaultSpec("zero_amount_crash", "crashes on a zero-amount payment (a bad deploy that crash-loops on a poison event)",
              ZeroAmountCrashSpec),
    FaultSpec(STALL_IN_COMMIT, f"the publishing transaction hangs {STALL_S:g}s after its writes, before its commit "
              "(a node about to die mid-write)", None, ("batch", "cutover")),
)}


def with_fault(spec: ViewSpec, fault: str | None) -> ViewSpec:
    """The view's logic with the named fault built in (unchanged when fault is None); ValueError
    naming the known faults for an unknown one."""
    if fault is None:
        return spec
    if fault not in FAULTS:
        raise ValueError(f"faults: {fault!r} is not a fault ({' | '.join(FAULTS)}); layers: {' | '.join(FAULT_LAYERS)}")
    logic = FAULTS[fault].logic
    if logic is None:
        raise ValueError(f"faults: {fault!r} is not a view-logic fault (its layers: {' | '.join(FAULTS[fault].layers)})")
    return logic(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})


def with_faults(specs: Iterable[ViewSpec], fault: str | None) -> list[ViewSpec]:
    return [with_fault(s, fault) for s in specs]


def stall_marker(settings: Settings, layer: str) -> Path:
    """Written (pid and time) when a layer's publishing transaction starts to stall."""
    return settings.home / f"fault-{layer}-stalled"


def stall_in_commit(settings: Settings | None, layer: str) -> None:
    """Called inside `layer`'s open publishing transaction, after its writes: when Settings.faults
    switches stall_in_commit on for that layer, write the stall marker and hold the transaction
    STALL_S before it commits. Nothing otherwise (settings None: no faults)."""
    if settings is None or settings.faults.get(layer) != STALL_IN_COMMIT:
        return
    marker = stall_marker(settings, layer)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{os.getpid()} {datetime.now(timezone.utc).isoformat()}\n")
    time.sleep(STALL_S)
