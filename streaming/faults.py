"""The speed layer's view logic: the shared views, or with the fault Settings.faults["speed"]
names (lklab.views.faults, the one registry of faults, also used by Kappa jobs)."""
from __future__ import annotations

from lklab import views
from lklab.core.config import Settings
from lklab.views.faults import with_faults


def speed_specs(settings: Settings) -> list[views.ViewSpec]:
    return with_faults(views.speed_layer_specs(settings), settings.faults.get("speed"))
