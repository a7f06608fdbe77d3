"""View semantics, defined once and imported by the batch (Spark) and speed (Faust) layers.

Every view counts after dedup by event_id (highest event_version wins; for equal versions
the first delivered wins), by event time, in UTC.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from lklab.core.events import Event, EventType

LOGIC_VERSION = 1
WINDOW_S = 60
DAY_S = 86_400

# revenue_per_minute / driver_earnings_daily money rule: captures minus refunds.
MONEY_SIGN: dict[str, int] = {EventType.PAYMENT_CAPTURED.value: 1, EventType.PAYMENT_REFUNDED.value: -1}

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def window_start(ts: datetime, width_s: int = WINDOW_S) -> datetime:
    """Tumbling event-time window that contains ts (UTC)."""
    seconds = int((ts - EPOCH).total_seconds() // width_s) * width_s
    return EPOCH + timedelta(seconds=seconds)


def signed_amount(event: Event) -> int | None:
    """The event's contribution to revenue, or None when it carries no money."""
    sign = MONEY_SIGN.get(event.event_type.value)
    return None if sign is None or event.amount_cents is None else sign * event.amount_cents


def supersedes(new_version: int, old_version: int | None) -> bool:
    """Does a delivery with new_version replace what is held? Equal versions are re-deliveries."""
    return old_version is None or new_version > old_version


def latest_versions(events: Iterable[Event]) -> dict[str, Event]:
    """Dedup in delivery order: the highest event_version per event_id wins."""
    kept: dict[str, Event] = {}
    for event in events:
        held = kept.get(event.event_id)
        if supersedes(event.event_version, held.event_version if held else None):
            kept[event.event_id] = event
    return kept


def watermark(max_event_time_by_partition: Mapping[int, datetime], partitions: int | None = None) -> datetime | None:
    """Event-time watermark of a multi-partition consumer: the slowest partition's progress.
    With `partitions` (the topic's partition count), there is none until every partition has
    reported: a partition that has not been read yet may still hold the oldest events, and a
    watermark that moved back when it appeared would reopen windows already handed to batch."""
    if not max_event_time_by_partition or (partitions is not None and len(max_event_time_by_partition) < partitions):
        return None
    return min(max_event_time_by_partition.values())


def final_through(wm: datetime | None, allowed_lateness_s: int) -> datetime | None:
    """Windows that start before this instant are final: watermark minus allowed lateness,
    floored to a window boundary. This is T of the Lambda merge."""
    if wm is None:
        return None
    return window_start(wm - timedelta(seconds=allowed_lateness_s))


def window_is_final(start: datetime, width_s: int, T: datetime | None) -> bool:
    """A window is final (owned by batch) once it ends at or before T."""
    return T is not None and start + timedelta(seconds=width_s) <= T


def is_too_late(event_time: datetime, wm: datetime | None, allowed_lateness_s: int, width_s: int = WINDOW_S) -> bool:
    """True when the event's window is already final, so a speed layer must not change it."""
    return window_is_final(window_start(event_time, width_s), width_s, final_through(wm, allowed_lateness_s))


# --- the views, each defined once -----------------------------------------------------------

MONEY = "money"  # sum of signed amounts (captures minus refunds)
DISTINCT_USERS = "distinct_users"  # count of distinct user_id


@dataclass(frozen=True)
class ViewSpec:
    """One view: which events count, what they are keyed by, the event-time window, and the
    measure. Spark (lklab.lake.tables) and Faust (lklab.engine.sink) both execute this definition."""

    name: str
    entity: str  # the event field that keys the view beside the window: "city" or "driver_id"
    window_s: int
    measure: str  # MONEY | DISTINCT_USERS
    value_column: str
    event_types: frozenset[str] | None = None  # None: every event type counts
    logic_version: int = LOGIC_VERSION

    def contribution(self, event: Event) -> tuple[tuple[str, datetime], int | str] | None:
        """(key, value) this event adds to the view: value is a signed amount for MONEY views
        and the member (user_id) for DISTINCT_USERS views; None when the event does not count."""
        if self.event_types is not None and event.event_type.value not in self.event_types:
            return None
        entity = getattr(event, self.entity)
        if entity is None:
            return None
        key = (entity, window_start(event.event_time, self.window_s))
        if self.measure == MONEY:
            amount = signed_amount(event)
            return None if amount is None else (key, amount)
        return key, event.user_id

    def is_final(self, start: datetime, T: datetime | None) -> bool:
        return window_is_final(start, self.window_s, T)

    def evaluate(self, events: Iterable[Event]) -> dict[tuple[str, datetime], int]:
        """Reference in-memory evaluation over a delivered stream (dedup first)."""
        sums: dict[tuple[str, datetime], int] = {}
        members: dict[tuple[str, datetime], set[str]] = {}
        for event in latest_versions(events).values():
            found = self.contribution(event)
            if found is None:
                continue
            key, value = found
            if self.measure == MONEY:
                sums[key] = sums.get(key, 0) + int(value)
            else:
                members.setdefault(key, set()).add(str(value))
        return sums if self.measure == MONEY else {k: len(v) for k, v in members.items()}


_PAYMENTS = frozenset(MONEY_SIGN)
VIEWS: dict[str, ViewSpec] = {
    spec.name: spec
    for spec in (
        ViewSpec("revenue_per_minute", "city", WINDOW_S, MONEY, "revenue_cents", _PAYMENTS),
        ViewSpec("daily_active_users", "city", DAY_S, DISTINCT_USERS, "active_users"),
        ViewSpec("driver_earnings_daily", "driver_id", DAY_S, MONEY, "earnings_cents", _PAYMENTS),
    )
}


def view(name: str) -> ViewSpec:
    try:
        return VIEWS[name]
    except KeyError:
        raise KeyError(f"unknown view {name!r}; one of: {', '.join(VIEWS)}") from None


# --- user_sessions: the seed's sessionization scenario ---------------------------------------

SESSIONS = "sessions"
SESSION_GAP_S = 30 * 60


@dataclass(frozen=True)
class SessionSpec:
    """user_sessions (user_id, UTC day): sessions split by more than 30 minutes of inactivity;
    a session belongs to the day it starts; per day: session count and total duration (ms).

    Logic v1 ships the seed's documented bug: it also splits sessions at midnight UTC, so a
    rider active across midnight gets two sessions. Logic v2 is the fix."""

    name: str
    logic_version: int
    split_at_midnight: bool
    gap_s: int = SESSION_GAP_S
    entity: str = "user_id"
    measure: str = SESSIONS
    window_s: int = DAY_S

    def contribution(self, event: Event) -> tuple[tuple[str, datetime], str]:
        """Every event of a rider counts, at its exact event time."""
        return (event.user_id, event.event_time), event.event_id

    def is_final(self, start: datetime, T: datetime | None) -> bool:
        return False  # sessions are recomputed per rider; only the Kappa path maintains them in streaming

    def new_session(self, previous: datetime, current: datetime) -> bool:
        gap = (current - previous).total_seconds() > self.gap_s
        return gap or (self.split_at_midnight and previous.date() != current.date())

    def sessions(self, times: Iterable[datetime]) -> list[tuple[datetime, datetime]]:
        out: list[list[datetime]] = []
        for t in sorted(times):
            if out and not self.new_session(out[-1][1], t):
                out[-1][1] = t
            else:
                out.append([t, t])
        return [(a, b) for a, b in out]

    def per_day(self, times_by_user: Mapping[str, Iterable[datetime]]) -> dict[tuple[str, datetime], tuple[int, int]]:
        """(user, day start) → (sessions, total duration in ms)."""
        result: dict[tuple[str, datetime], tuple[int, int]] = {}
        for user, times in times_by_user.items():
            for start, end in self.sessions(times):
                key = (user, window_start(start, DAY_S))
                count, ms = result.get(key, (0, 0))
                result[key] = (count + 1, ms + int((end - start) / timedelta(milliseconds=1)))
        return result

    def evaluate(self, events: Iterable[Event]) -> dict[tuple[str, datetime], tuple[int, int]]:
        times: dict[str, list[datetime]] = {}
        for event in latest_versions(events).values():
            times.setdefault(event.user_id, []).append(event.event_time)
        return self.per_day(times)


USER_SESSIONS: dict[int, SessionSpec] = {
    1: SessionSpec("user_sessions", 1, split_at_midnight=True),
    2: SessionSpec("user_sessions", 2, split_at_midnight=False),
}
