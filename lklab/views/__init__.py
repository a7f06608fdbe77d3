"""View semantics, defined once and imported by the batch layer (Spark), the engine (the speed
layer's and every Kappa job's sink) and the readers.

Every view counts after dedup by event_id (highest event_version wins; for equal versions the
first delivered wins), by event time, in UTC. The modules: windows (dedup, windows, watermark,
T), measures (one strategy per kind of measure), registry (the views and their logic versions).
"""
from lklab.views.measures import Contrib, DistinctCount, Measure, MoneySum, Sessions, window_start_col
from lklab.views.registry import (
    CURRENT_LOGIC,
    LOGIC_VERSIONS,
    SPEED_LAYER,
    VIEWS,
    VersionedOutput,
    ViewSpec,
    batch_spec,
    spec_at,
    speed_layer_specs,
    view,
)
from lklab.views.windows import (
    DAY_S,
    EPOCH,
    LOGIC_VERSION,
    MONEY_SIGN,
    WINDOW_S,
    final_through,
    is_too_late,
    latest_versions,
    signed_amount,
    supersedes,
    watermark,
    window_is_final,
    window_start,
)

__all__ = [
    "CURRENT_LOGIC", "DAY_S", "EPOCH", "LOGIC_VERSION", "LOGIC_VERSIONS", "MONEY_SIGN", "SPEED_LAYER", "VIEWS", "WINDOW_S", "Contrib",
    "DistinctCount", "Measure", "MoneySum", "Sessions", "VersionedOutput", "ViewSpec", "batch_spec", "final_through",
    "is_too_late", "latest_versions", "signed_amount", "spec_at", "speed_layer_specs", "supersedes", "view", "watermark", "window_is_final",
    "window_start", "window_start_col",
]
