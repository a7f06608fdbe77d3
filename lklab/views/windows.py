"""Event-time semantics every view shares: dedup by event_id, tumbling windows, the watermark
and T. Defined once; Spark (lklab.lake), the engine and the oracle-checked tests all use these."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    seconds = int(ts.timestamp() // width_s) * width_s  # aware: timestamp() is (ts - EPOCH).total_seconds(), in C
    return EPOCH + timedelta(seconds=seconds)


def signed_amount(event: Event, with_tips: bool = False) -> int | None:
    """The event's contribution to revenue, or None when it carries no money; with_tips, a
    capture's tip counts too (schema v2's tip_cents; 0 on v1 events and every other type)."""
    sign = MONEY_SIGN.get(event.event_type.value)
    if sign is None or event.amount_cents is None:
        return None
    return sign * (event.amount_cents + (event.tip_cents if with_tips else 0))


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
