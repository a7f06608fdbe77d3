"""Ground truth for every view, computed from what happened (`Workload.truth`).

Deliberately written without lklab.views: an oracle that shares the code it checks cannot
catch that code's bugs. It still dedups (highest event_version per event_id) so it can be
fed a hand-written set with corrections and re-deliveries.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

from lklab.core.events import Event, EventType

_SIGN = {EventType.PAYMENT_CAPTURED: 1, EventType.PAYMENT_REFUNDED: -1}


def final_events(events: Iterable[Event]) -> list[Event]:
    """One event per event_id: the highest version (the first seen among equal versions)."""
    best: dict[str, Event] = {}
    for event in events:
        held = best.get(event.event_id)
        if held is None or event.event_version > held.event_version:
            best[event.event_id] = event
    return list(best.values())


def _utc(event: Event) -> datetime:
    return event.event_time.astimezone(timezone.utc)


def _minute(event: Event) -> datetime:
    return _utc(event).replace(second=0, microsecond=0)


def _day(event: Event) -> date:
    return _utc(event).date()


def _money(event: Event, with_tips: bool = False) -> int | None:
    sign = _SIGN.get(event.event_type)
    if sign is None:
        return None
    tip = event.tip_cents if with_tips and event.event_type is EventType.PAYMENT_CAPTURED else 0
    return sign * ((event.amount_cents or 0) + tip)


def revenue_per_minute(truth: Iterable[Event], with_tips: bool = False) -> dict[tuple[str, datetime], int]:
    """(city, UTC minute) -> captured minus refunded cents (plus captures' tips with `with_tips`:
    revenue logic v2); a row iff a payment falls in it."""
    totals: dict[tuple[str, datetime], int] = defaultdict(int)
    for event in final_events(truth):
        money = _money(event, with_tips)
        if money is not None:
            totals[(event.city, _minute(event))] += money
    return dict(totals)


def daily_active_users(truth: Iterable[Event]) -> dict[tuple[str, date], int]:
    """(city, UTC day) -> distinct user_id with any event that day."""
    users: dict[tuple[str, date], set[str]] = defaultdict(set)
    for event in final_events(truth):
        users[(event.city, _day(event))].add(event.user_id)
    return {key: len(ids) for key, ids in users.items()}


def driver_earnings_daily(truth: Iterable[Event]) -> dict[tuple[str, date], int]:
    """(driver_id, UTC day) -> captured minus refunded cents of that driver's payments."""
    totals: dict[tuple[str, date], int] = defaultdict(int)
    for event in final_events(truth):
        money = _money(event)
        # A payment without a driver cannot be anyone's earnings.
        if money is not None and event.driver_id is not None:
            totals[(event.driver_id, _day(event))] += money
    return dict(totals)


@dataclass(frozen=True)
class Comparison:
    """How a computed view differs from the oracle. Absent rows count as 0 in max_abs_error."""

    rows_expected: int
    rows_actual: int
    exact_matches: int
    missing: list[Any]  # keys expected but not produced
    unexpected: list[Any]  # keys produced but not expected
    mismatched: list[Any]  # keys in both with different values
    max_abs_error: int

    @property
    def equal(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        return (
            f"{self.exact_matches}/{self.rows_expected} rows exact, {self.rows_actual} produced, "
            f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, "
            f"{len(self.mismatched)} wrong, max abs error {self.max_abs_error}"
        )


def _sorted(keys: Iterable[Hashable]) -> list[Any]:
    keys = list(keys)
    try:
        return sorted(keys)
    except TypeError:  # mixed key types: still give a stable order
        return sorted(keys, key=repr)


def value_distance(a: Any, b: Any) -> int:
    """|a - b| of two values (a missing one is zero); for (sessions, duration_ms), the largest
    component's difference."""
    if isinstance(a, tuple) or isinstance(b, tuple):
        width = len(a if isinstance(a, tuple) else b)
        return max(abs(x - y) for x, y in zip(a or (0,) * width, b or (0,) * width))
    return abs((a or 0) - (b or 0))


def compare(actual: Mapping[Any, Any], expected: Mapping[Any, Any]) -> Comparison:
    """Row-by-row comparison of a view (key -> value) against the oracle's answer."""
    shared = actual.keys() & expected.keys()
    mismatched = [k for k in shared if actual[k] != expected[k]]
    errors = [value_distance(actual.get(k), expected.get(k)) for k in actual.keys() | expected.keys()]
    return Comparison(
        rows_expected=len(expected),
        rows_actual=len(actual),
        exact_matches=len(shared) - len(mismatched),
        missing=_sorted(expected.keys() - actual.keys()),
        unexpected=_sorted(actual.keys() - expected.keys()),
        mismatched=_sorted(mismatched),
        max_abs_error=int(max(errors, default=0)),
    )


def for_view(name: str, truth: Iterable[Event], logic_version: int = 1,
             forgotten: frozenset[str] = frozenset()) -> dict[tuple[str, datetime], Any]:
    """The oracle's answer for a view, keyed like the pipelines: (entity, window start, aware UTC);
    values are ints, or (sessions, duration_ms) for user_sessions. `logic_version` 2 of
    revenue_per_minute counts tips; the other views have one correct answer. Users in `forgotten`
    (deletion requests) have no user_sessions rows; the aggregates still count their events."""
    if name == "user_sessions":
        return {key: value for key, value in user_sessions(truth).items() if key[0] not in forgotten}
    compute = {
        "revenue_per_minute": lambda events: revenue_per_minute(events, with_tips=logic_version >= 2),
        "daily_active_users": daily_active_users,
        "driver_earnings_daily": driver_earnings_daily,
    }[name]
    out: dict[tuple[str, datetime], int] = {}
    for (entity, window), value in compute(truth).items():
        start = window if isinstance(window, datetime) else datetime(window.year, window.month, window.day, tzinfo=timezone.utc)
        out[(entity, start)] = value
    return out


def user_sessions(truth: Iterable[Event], gap_s: int = 30 * 60) -> dict[tuple[str, datetime], tuple[int, int]]:
    """The correct sessionization (no midnight split), written independently of lklab.views:
    (user, UTC day the session starts) → (sessions, total duration in ms)."""
    by_user: dict[str, list[datetime]] = defaultdict(list)
    for event in final_events(truth):
        by_user[event.user_id].append(_utc(event))
    out: dict[tuple[str, datetime], tuple[int, int]] = {}
    for user, times in by_user.items():
        times.sort()
        first = last = times[0]
        for t in times[1:] + [None]:
            if t is not None and (t - last).total_seconds() <= gap_s:
                last = t
                continue
            day = datetime(first.year, first.month, first.day, tzinfo=timezone.utc)
            count, ms = out.get((user, day), (0, 0))
            out[(user, day)] = (count + 1, ms + (last - first) // timedelta(milliseconds=1))
            if t is not None:
                first = last = t
    return out
