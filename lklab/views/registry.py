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

    @property
    def keyed_by_user(self) -> bool:
        """Are its rows a user's personal data (purged and tombstoned on `lklab forget`)? Aggregates
        over many users (revenue, daily actives) are not."""
        return self.entity == "user_id"

    @property
    def contribs_as_rows(self) -> bool:
        """Must its held contributions be rows of speed_contrib, where SQL reads them? A user's are
        purged by `lklab forget`, and sessions re-read a rider's times. A Kappa job checkpoints
        the others as compact chunks (lklab.engine.chunks)."""
        return self.keyed_by_user or self.measure.rereads_contribs

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
# Every logic version of every view. The current one (what runs unless a setting or a Kappa
# version picks another) is the highest, except where CURRENT_LOGIC names an older one.
LOGIC_VERSIONS: dict[str, dict[int, ViewSpec]] = {
    spec.name: {spec.logic_version: spec}
    for spec in (
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
# revenue_per_minute v2 counts tips (schema v2's tip_cents). It is a new logic to deploy: a Kappa
# replay into revenue_per_minute__v2 and a cutover, or a Lambda backfill with LKLAB_REVENUE_LOGIC=2;
# until then v1 stays current.
LOGIC_VERSIONS["revenue_per_minute"] = {
    version: ViewSpec("revenue_per_minute", "city", WINDOW_S, MoneySum(with_tips=version == 2), "revenue_cents", _PAYMENTS,
                      logic_version=version, logic_setting="revenue_logic",
                      description="revenue_cents: captures minus refunds" + (", plus tips" if version == 2 else "")
                                  + "; logic version from LKLAB_REVENUE_LOGIC (1 = without tips, 2 = with tips)")
    for version in (1, 2)
}
LOGIC_VERSIONS = {name: LOGIC_VERSIONS[name] for name in
                  ("revenue_per_minute", "daily_active_users", "driver_earnings_daily", "user_sessions")}
CURRENT_LOGIC: dict[str, int] = {"revenue_per_minute": 1}
VIEWS: dict[str, ViewSpec] = {name: versions[CURRENT_LOGIC.get(name, max(versions))] for name, versions in LOGIC_VERSIONS.items()}
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
    """The logic the Lambda layers run for a view: the version its setting picks, else the current one."""
    chosen = getattr(settings, spec.logic_setting) if spec.logic_setting else None
    return spec if chosen is None else spec_at(spec.name, chosen)


def speed_layer_specs(settings: Settings) -> list[ViewSpec]:
    """The speed layer's views, each with the logic its setting picks (the batch layer's, so the
    Lambda merge serves one logic on both sides of T)."""
    return [batch_spec(spec, settings) for spec in SPEED_LAYER.values()]
