"""Deliberate speed-layer bugs, switched on by LKLAB_SPEED_FAULT, so the lab can show the
Lambda failure mode the seed calls the most common one: batch and speed computing different
answers for the same events (semantic divergence). Never set in normal runs."""
from __future__ import annotations

from dataclasses import dataclass

from lklab import views
from lklab.core.events import Event, EventType


@dataclass(frozen=True)
class RefundsAddedSpec(views.ViewSpec):
    """The classic drift: a second code path that adds refunds instead of subtracting them."""

    def contribution(self, event: Event):
        found = super().contribution(event)
        if found is None or not self.measure.carries_money or event.event_type != EventType.PAYMENT_REFUNDED:
            return found
        key, amount = found
        return key, -int(amount)


FAULTS = {"refund_sign": RefundsAddedSpec}


def speed_specs(fault: str | None) -> list[views.ViewSpec]:
    """The view definitions the speed worker runs: the shared ones, or a faulty variant."""
    specs = list(views.SPEED_LAYER.values())
    if fault is None:
        return specs
    if fault not in FAULTS:
        raise ValueError(f"LKLAB_SPEED_FAULT={fault!r} is not one of: {', '.join(FAULTS)}")
    variant = FAULTS[fault]
    return [variant(**{f: getattr(s, f) for f in s.__dataclass_fields__}) for s in specs]
