"""The views, each defined once (the registry), and the versioned outputs a Kappa job writes."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lklab.core.events import Event
from lklab.views.measures import DistinctCount, Measure, MoneySum, Sessions
from lklab.views.windows import DAY_S, LOGIC_VERSION, MONEY_SIGN, WINDOW_S, latest_versions

if TYPE_CHECKING:
    from lklab.core.config import Settings


@dataclass(frozen=True)
class VersionedOutput:
    """One physical output of a view: what a Kappa job with version N writes (`<view>__v<N>`)."""

    view: str
    version: int

    @property
    def name(self) -> str:
        return f"{self.view}__v{self.version}"


@dataclass(frozen=True)
class ViewSpec:
    """One view: which events count, what they are keyed by, the event-time window, and the
    measure (the strategy that owns everything that differs by kind of view). Spark (lklab.lake),
    the engine (lklab.engine) and the readers all execute this one definition.

    `name` is the output the engine writes (the view itself, or a versioned output of it) and
    `view` the view it belongs to."""

    name: str
    entity: str  # the event field that keys the view beside the window: "city", "driver_id" or "user_id"
    window_s: int
    measure: Measure
    value_column: str
    event_types: frozenset[str] | None = None  # None: every event type counts
    logic_version: int = LOGIC_VERSION
    logic_setting: str | None = None  # the Settings field that picks the batch layer's logic version
    description: str = ""
    view: str = ""

    def __post_init__(self) -> None:
        if not self.view:
            object.__setattr__(self, "view", self.name)

    def contribution(self, event: Event) -> tuple[tuple[str, datetime], Any] | None:
        """(key, value) this event adds to the view; None when it does not count."""
        return self.measure.contribution(self, event)

    def is_final(self, start: datetime, T: datetime | None) -> bool:
        return self.measure.is_final(self, start, T)

    def evaluate(self, events: Iterable[Event]) -> dict:
        """Reference in-memory evaluation over a delivered stream (dedup first)."""
        return self.measure.evaluate(self, latest_versions(events).values())

    @property
    def value_columns(self) -> tuple[str, ...]:
        return self.measure.value_columns(self)

    def for_output(self, output: VersionedOutput) -> ViewSpec:
        """This logic, writing into a versioned output."""
        return dataclasses.replace(self, name=output.name, view=output.view)


_PAYMENTS = frozenset(MONEY_SIGN)
# Every logic version of every view; the highest one is the view's current logic.
LOGIC_VERSIONS: dict[str, dict[int, ViewSpec]] = {
    spec.name: {spec.logic_version: spec}
    for spec in (
        ViewSpec("revenue_per_minute", "city", WINDOW_S, MoneySum(), "revenue_cents", _PAYMENTS,
                 description="revenue_cents: captures minus refunds"),
        ViewSpec("daily_active_users", "city", DAY_S, DistinctCount(), "active_users",
                 description="active_users: distinct riders with any event"),
        ViewSpec("driver_earnings_daily", "driver_id", DAY_S, MoneySum(), "earnings_cents", _PAYMENTS,
                 description="earnings_cents: captures minus refunds"),
    )
}
# user_sessions has two: v1 ships the seed's documented bug (sessions also split at midnight UTC,
# so a rider active across midnight gets two), v2 is the fix.
LOGIC_VERSIONS["user_sessions"] = {
    version: ViewSpec("user_sessions", "user_id", DAY_S, Sessions(split_at_midnight=version == 1), "sessions",
                      logic_version=version, logic_setting="user_sessions_logic",
                      description="sessions split by > 30 min of inactivity, counted on the day they start, and their "
                                  "duration_ms; logic version from LKLAB_USER_SESSIONS_LOGIC (1 = the midnight bug, 2 = the fix)")
    for version in (1, 2)
}
VIEWS: dict[str, ViewSpec] = {name: versions[max(versions)] for name, versions in LOGIC_VERSIONS.items()}
# The views the Lambda speed layer maintains (the others are served by the batch layer alone).
SPEED_LAYER: dict[str, ViewSpec] = {name: spec for name, spec in VIEWS.items() if spec.measure.speed_layer}


def view(name: str) -> ViewSpec:
    try:
        return VIEWS[name]
    except KeyError:
        raise KeyError(f"unknown view {name!r}; one of: {', '.join(VIEWS)}") from None


def spec_at(name: str, logic_version: int) -> ViewSpec:
    """The view's logic at a version; versions past the newest run the newest logic."""
    versions = LOGIC_VERSIONS[view(name).name]
    return versions[min(logic_version, max(versions))]


def batch_spec(spec: ViewSpec, settings: Settings) -> ViewSpec:
    """The logic the batch layer runs for a view: the version its setting picks, else the current one."""
    return spec_at(spec.name, getattr(settings, spec.logic_setting)) if spec.logic_setting else spec
