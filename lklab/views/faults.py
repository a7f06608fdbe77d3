"""Named faults: deliberate bugs in view logic, one registry for every layer that runs the
shared fold (the Lambda speed layer and every Kappa job), switched on per layer by
`Settings.faults` ({"speed": name, "kappa": name}). Drills and tests use them to break one
architecture the way production breaks; normal runs never set them."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from lklab.core.config import FAULT_LAYERS
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
    logic: type[ViewSpec]


FAULTS: dict[str, FaultSpec] = {f.name: f for f in (
    FaultSpec("refund_sign", "refunds are added instead of subtracted (a logic bug in one code path)", RefundsAddedSpec),
    FaultSpec("zero_amount_crash", "crashes on a zero-amount payment (a bad deploy that crash-loops on a poison event)",
              ZeroAmountCrashSpec),
)}


def with_fault(spec: ViewSpec, fault: str | None) -> ViewSpec:
    """The view's logic with the named fault built in (unchanged when fault is None); ValueError
    naming the known faults for an unknown one."""
    if fault is None:
        return spec
    if fault not in FAULTS:
        raise ValueError(f"faults: {fault!r} is not a fault ({' | '.join(FAULTS)}); layers: {' | '.join(FAULT_LAYERS)}")
    logic = FAULTS[fault].logic
    return logic(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)})


def with_faults(specs: Iterable[ViewSpec], fault: str | None) -> list[ViewSpec]:
    return [with_fault(s, fault) for s in specs]
