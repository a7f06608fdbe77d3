"""Deterministic ride-sharing workload: the events that happened (truth) and how they were delivered.

The generator is the oracle's source: it knows every final event, so every view has a known
true answer. Deliveries add what production adds on top: arrival delay (mostly small, rarely
up to two days), out-of-order event time, duplicate deliveries and versioned corrections.

Everything is drawn from one `random.Random(seed)` and no clock is read, so the same config
gives byte-identical output.
"""
from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Engine

from lklab.events import PAYMENT_TYPES, SCHEMA_VERSION, Event, EventType, format_time
from lklab.serving import payments_ledger, upsert

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MS = timedelta(milliseconds=1)

AMOUNT_MIN_CENTS = 500
AMOUNT_MAX_CENTS = 6000

# Realistic gaps between the steps of one ride (ms); compressed when the window is short.
RIDE_STEPS: tuple[tuple[EventType, int, int], ...] = (
    (EventType.APP_OPENED, 0, 0),
    (EventType.RIDE_REQUESTED, 2_000, 60_000),
    (EventType.RIDE_STARTED, 60_000, 480_000),
    (EventType.RIDE_COMPLETED, 240_000, 2_400_000),
    (EventType.PAYMENT_CAPTURED, 0, 5_000),
)
MAX_RIDE_SPAN_MS = sum(high for _, _, high in RIDE_STEPS)
REFUND_DELAY_MAX_MS = 3_600_000
DRIVERLESS = frozenset({EventType.APP_OPENED, EventType.RIDE_REQUESTED})

ON_TIME_MEAN_DELAY_MS = 15_000
DUPLICATE_DELAY_MAX_MS = 30_000
CORRECTION_DELAY_MAX_MS = 240_000


class GeneratorConfig(BaseModel):
    """Workload shape. Fractions are probabilities per ride, payment event or delivery."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 7
    start: datetime = datetime(2026, 11, 17, 10, 0, 0, tzinfo=timezone.utc)
    duration_s: int = Field(600, ge=1, description="event-time span of the workload")
    rides_per_minute: int = Field(60, ge=0)
    cities: list[str] = Field(default_factory=lambda: ["berlin", "lisbon", "paris"], min_length=1)
    late_fraction: float = Field(0.001, ge=0, le=1)
    late_max_s: int = Field(48 * 3600, ge=2)
    on_time_max_s: int = Field(300, ge=1)
    duplicate_fraction: float = Field(0.02, ge=0, le=1)
    correction_fraction: float = Field(0.05, ge=0, le=1, description="of payment events")
    refund_fraction: float = Field(0.05, ge=0, le=1, description="of rides")
    users: int = Field(200, ge=1)
    drivers: int = Field(50, ge=1)

    @field_validator("start")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        return value.astimezone(timezone.utc)

    @model_validator(mode="after")
    def _late_after_on_time(self) -> GeneratorConfig:
        if self.late_max_s <= self.on_time_max_s:
            raise ValueError("late_max_s must be greater than on_time_max_s")
        return self


@dataclass(frozen=True)
class Workload:
    """What was delivered (arrival order) and what really happened (one final version per event_id)."""

    config: GeneratorConfig
    deliveries: list[Event]
    arrival_times: list[datetime]  # parallel to deliveries
    truth: list[Event]

    def lateness_s(self) -> list[float]:
        """Arrival minus event time of each delivery, in seconds (parallel to deliveries)."""
        return [(a - e.event_time).total_seconds() for a, e in zip(self.arrival_times, self.deliveries)]


def to_ms(ts: datetime) -> int:
    """Milliseconds since the epoch, floored."""
    return (ts - EPOCH) // MS


def from_ms(ms: int) -> datetime:
    return EPOCH + ms * MS


def _ceil_ms(ts: datetime) -> int:
    return -((EPOCH - ts) // MS)


@dataclass(frozen=True)
class _Window:
    first_ms: int  # first whole millisecond at or after start
    last_ms: int  # last whole millisecond before start + duration
    scale: tuple[int, int]  # ride-time compression as num/den, so a ride fits in a quarter window

    @classmethod
    def of(cls, config: GeneratorConfig) -> _Window:
        # Ceil on both ends: times are whole ms, inside [start, start + duration).
        first = _ceil_ms(config.start)
        last = _ceil_ms(config.start + timedelta(seconds=config.duration_s)) - 1
        width = last - first + 1
        return cls(first, last, (min(width // 4, MAX_RIDE_SPAN_MS), MAX_RIDE_SPAN_MS))

    def scaled(self, ms: int) -> int:
        num, den = self.scale
        return ms * num // den


@dataclass(frozen=True)
class _Cast:
    """Users and drivers, each with a home city so per-city views look like cities."""

    user_cities: list[str]
    drivers_by_city: dict[str, list[str]]
    all_drivers: list[str]

    @classmethod
    def of(cls, config: GeneratorConfig) -> _Cast:
        cities = config.cities
        drivers = [f"d{k:04d}" for k in range(config.drivers)]
        by_city: dict[str, list[str]] = {c: [] for c in cities}
        for k, driver in enumerate(drivers):
            by_city[cities[k % len(cities)]].append(driver)
        return cls([cities[k % len(cities)] for k in range(config.users)], by_city, drivers)

    def driver_in(self, city: str, rng: random.Random) -> str:
        # Fewer drivers than cities: some cities borrow drivers rather than have no rides.
        return rng.choice(self.drivers_by_city[city] or self.all_drivers)


def _ride_count(config: GeneratorConfig) -> int:
    return round(config.rides_per_minute * config.duration_s / 60)


def _ride_times(rng: random.Random, window: _Window) -> list[tuple[EventType, int]]:
    """Event times (ms) of one ride's steps, all inside the window, in step order."""
    positions, at = [], 0
    for event_type, low, high in RIDE_STEPS:
        at += rng.randint(low, high)
        positions.append((event_type, window.scaled(at)))
    span = positions[-1][1]
    t0 = window.first_ms + rng.randint(0, window.last_ms - window.first_ms - span)
    return [(event_type, t0 + offset) for event_type, offset in positions]


def _other_amount(rng: random.Random, amount: int, low: int, high: int) -> int:
    """A value in [low, high] that differs from amount (what the first, wrong version said)."""
    value = rng.randint(low, high - 1)
    return value + 1 if value >= amount else value


def _ride(
    config: GeneratorConfig, rng: random.Random, window: _Window, cast: _Cast, index: int
) -> list[tuple[Event, Event | None]]:
    """One ride's final events, each paired with its superseded first version if it was corrected."""
    # Seed and start in the id keep workloads that share a topic from deduplicating each other.
    ride_id = f"r{config.seed}-{config.start:%Y%m%dT%H%M%S}-{index:06d}"
    user = rng.randrange(config.users)
    city = cast.user_cities[user]
    driver = cast.driver_in(city, rng)
    steps = _ride_times(rng, window)
    captured = rng.randint(AMOUNT_MIN_CENTS, AMOUNT_MAX_CENTS)
    amounts: dict[EventType, int] = {EventType.PAYMENT_CAPTURED: captured}
    if rng.random() < config.refund_fraction:
        capture_ms = steps[-1][1]
        room = min(window.last_ms - capture_ms, window.scaled(REFUND_DELAY_MAX_MS))
        steps.append((EventType.PAYMENT_REFUNDED, capture_ms + rng.randint(min(1, room), room)))
        amounts[EventType.PAYMENT_REFUNDED] = rng.randint(1, captured)

    out: list[tuple[Event, Event | None]] = []
    for event_type, ms in steps:
        event = Event(
            event_id=f"{ride_id}-{event_type.value}",
            event_version=1,
            schema_version=SCHEMA_VERSION,
            event_type=event_type,
            event_time=from_ms(ms),
            ride_id=ride_id,
            user_id=f"u{user:05d}",
            driver_id=None if event_type in DRIVERLESS else driver,
            city=city,
            amount_cents=amounts.get(event_type),
        )
        out.append(_maybe_correct(config, rng, event, captured))
    return out


def _maybe_correct(
    config: GeneratorConfig, rng: random.Random, event: Event, captured: int
) -> tuple[Event, Event | None]:
    """Truth holds the corrected amount (v2); the first delivery (v1) carried a wrong one."""
    if event.event_type not in PAYMENT_TYPES or rng.random() >= config.correction_fraction:
        return event, None
    assert event.amount_cents is not None
    if event.event_type is EventType.PAYMENT_CAPTURED:
        wrong = _other_amount(rng, event.amount_cents, AMOUNT_MIN_CENTS, AMOUNT_MAX_CENTS)
    else:
        # captured >= AMOUNT_MIN_CENTS > 1, so a different refund <= captured always exists
        wrong = _other_amount(rng, event.amount_cents, 1, captured)
    final = event.replace(event_version=2)
    return final, event.replace(amount_cents=wrong)


@dataclass(frozen=True)
class _Delivery:
    arrival_ms: int
    seq: int  # generation order: breaks arrival ties deterministically
    event: Event


class _Schedule:
    """Arrival times. Follow-ups (duplicates, corrections) stay in their original's lateness class:
    after an on-time original they still arrive within on_time_max_s, never beyond late_max_s."""

    def __init__(self, config: GeneratorConfig, rng: random.Random):
        self.rng = rng
        self.late_fraction = config.late_fraction
        self.on_time_ms = config.on_time_max_s * 1000
        self.late_ms = config.late_max_s * 1000
        self.items: list[_Delivery] = []

    def add(self, event: Event, arrival_ms: int) -> _Delivery:
        item = _Delivery(arrival_ms, len(self.items), event)
        self.items.append(item)
        return item

    def primary(self, event: Event) -> _Delivery:
        # 2 ms of headroom in the class: a correction, then its duplicate, can each come strictly later.
        if self.rng.random() < self.late_fraction:
            delay = self.rng.randint(self.on_time_ms + 1, self.late_ms - 2)
        else:
            delay = min(int(self.rng.expovariate(1 / ON_TIME_MEAN_DELAY_MS)), self.on_time_ms - 2)
        return self.add(event, to_ms(event.event_time) + delay)

    def follow_up(self, original: _Delivery, event: Event, max_delay_ms: int, reserve_ms: int = 0) -> _Delivery:
        """Deliver event strictly after original, keeping reserve_ms of headroom for its own duplicate."""
        event_ms = to_ms(original.event.event_time)
        on_time = original.arrival_ms - event_ms <= self.on_time_ms
        bound = event_ms + (self.on_time_ms if on_time else self.late_ms) - reserve_ms
        room = min(max_delay_ms, bound - original.arrival_ms)
        return self.add(event, original.arrival_ms + self.rng.randint(1, room))


def _schedule(
    config: GeneratorConfig, rng: random.Random, rides: list[tuple[Event, Event | None]]
) -> list[_Delivery]:
    """Primaries first, then corrections after their original, then duplicates of any of them."""
    schedule = _Schedule(config, rng)
    corrected = [(schedule.primary(first or final), final) for final, first in rides]
    for original, final in corrected:
        if original.event is not final:
            schedule.follow_up(original, final, CORRECTION_DELAY_MAX_MS, reserve_ms=1)
    for item in list(schedule.items):
        if rng.random() < config.duplicate_fraction:
            schedule.follow_up(item, item.event, DUPLICATE_DELAY_MAX_MS)
    return sorted(schedule.items, key=lambda d: (d.arrival_ms, d.seq))


def generate(config: GeneratorConfig | None = None) -> Workload:
    """Build the workload for config (default config when None). Same config, same output."""
    config = config or GeneratorConfig()
    rng = random.Random(config.seed)
    window, cast = _Window.of(config), _Cast.of(config)
    rides = [pair for index in range(_ride_count(config)) for pair in _ride(config, rng, window, cast, index)]
    deliveries = _schedule(config, rng, rides)
    truth = sorted((final for final, _ in rides), key=lambda e: (e.event_time, e.event_id))
    return Workload(
        config=config,
        deliveries=[d.event for d in deliveries],
        arrival_times=[from_ms(d.arrival_ms) for d in deliveries],
        truth=truth,
    )


def write_jsonl(events: Iterable[Event], path: str | Path) -> int:
    """One `Event.to_json()` per line (the import file format); returns the number of lines."""
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for event in events:
            out.write(event.to_json() + "\n")
            count += 1
    return count


def ledger_row(event: Event) -> dict:
    return {
        "event_id": event.event_id,
        "event_version": event.event_version,
        "event_type": event.event_type.value,
        "ride_id": event.ride_id,
        "user_id": event.user_id,
        "driver_id": event.driver_id,
        "city": event.city,
        "event_time": event.event_time,
        "amount_cents": event.amount_cents,
    }


def write_ledger(engine: Engine, truth: Iterable[Event]) -> int:
    """Upsert every payment event of the truth into payments_ledger (idempotent); returns rows written."""
    rows = [ledger_row(e) for e in truth if e.event_type in PAYMENT_TYPES]
    with engine.begin() as conn:
        upsert(conn, payments_ledger, rows)
    return len(rows)


def bad_lines() -> list[tuple[str, str]]:
    """Import lines that break the contract, each with what is wrong (for DLQ / import tests)."""
    good = {
        "event_id": "bad-0001-payment_captured",
        "event_version": 1,
        "schema_version": SCHEMA_VERSION,
        "event_type": EventType.PAYMENT_CAPTURED.value,
        "event_time": format_time(GeneratorConfig().start),
        "ride_id": "bad-0001",
        "user_id": "u00001",
        "driver_id": "d0001",
        "city": "berlin",
        "amount_cents": 1250,
    }

    def line(**changes: object) -> str:
        data = {k: v for k, v in {**good, **changes}.items() if v is not _DROP}
        return json.dumps(data, separators=(",", ":"), sort_keys=True)

    return [
        (line()[:-20], "malformed JSON (truncated line)"),
        (line(city=_DROP), "missing field: city"),
        (line(amount_cents="12.50"), "wrong type: amount_cents is a string"),
        (line(event_version="1"), "wrong type: event_version is a string"),
        (line(event_type="ride_teleported"), "unknown event_type"),
        (line(event_time="2026-11-17 10:00:00"), "event_time is not ISO-8601 UTC"),
        (line(amount_cents=-5), "negative amount_cents"),
        (line(event_type=EventType.APP_OPENED.value), "amount_cents on a non-payment event"),
        ("[1, 2, 3]", "not a JSON object"),
    ]


_DROP = object()
