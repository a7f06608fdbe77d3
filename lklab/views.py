"""View semantics, defined once and imported by the batch (Spark) and speed (Faust) layers.

Every view counts after dedup by event_id (highest event_version wins; for equal versions
the first delivered wins), by event time, in UTC.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone

from lklab.events import Event, EventType

LOGIC_VERSION = 1
WINDOW_S = 60

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


def revenue_key(event: Event) -> tuple[str, datetime]:
    return event.city, window_start(event.event_time)


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


def revenue_per_minute(events: Iterable[Event]) -> dict[tuple[str, datetime], int]:
    """Reference (in-memory) evaluation of revenue_per_minute over a delivered stream."""
    totals: dict[tuple[str, datetime], int] = {}
    for event in latest_versions(events).values():
        amount = signed_amount(event)
        if amount is not None:
            key = revenue_key(event)
            totals[key] = totals.get(key, 0) + amount
    return totals


def watermark(max_event_time_by_partition: Mapping[int, datetime]) -> datetime | None:
    """Event-time watermark of a multi-partition consumer: the slowest partition's progress."""
    return min(max_event_time_by_partition.values()) if max_event_time_by_partition else None


def final_through(wm: datetime | None, allowed_lateness_s: int) -> datetime | None:
    """Windows that start before this instant are final: watermark minus allowed lateness,
    floored to a window boundary. This is T of the Lambda merge."""
    if wm is None:
        return None
    return window_start(wm - timedelta(seconds=allowed_lateness_s))


def is_too_late(event_time: datetime, wm: datetime | None, allowed_lateness_s: int) -> bool:
    """True when the event's window is already final, so a speed layer must not change it."""
    boundary = final_through(wm, allowed_lateness_s)
    return boundary is not None and window_start(event_time) < boundary
