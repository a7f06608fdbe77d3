"""Deterministic ride-sharing workload: the events that happened (truth) and how they were delivered.

The generator is the oracle's source: it knows every final event, so every view has a known
true answer. Deliveries add what production adds on top: arrival delay (mostly small, rarely
up to two days), out-of-order event time, duplicate deliveries and versioned corrections.
A correction may change any field but event_id, as the contract allows: the amount, the
event time (by minutes, across T and across midnight), the city or the driver, and it may
arrive before the version it corrects. Cities include sparse ones and non-ASCII names, and
the wire form of an event time carries a local UTC offset for most events.

Everything is drawn from one `random.Random(seed)` and no clock is read, so the same config
gives byte-identical output.
"""
from __future__ import annotations

import json
import random
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Engine

from lklab.core.events import PAYMENT_TYPES, Event, EventType, format_time
from lklab.serving.store import payments_ledger, upsert

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

# Wire offsets of event times (a fleet's phones report local time): chosen per delivery from
# its event_id, so output stays byte-identical per seed. None is UTC written with a Z.
WIRE_OFFSETS_MIN = (None, 0, 60, 120, -300, 330, -180, None, -420, 540)

ON_TIME_MEAN_DELAY_MS = 15_000
DUPLICATE_DELAY_MAX_MS = 30_000
CORRECTION_DELAY_MAX_MS = 240_000


class GeneratorConfig(BaseModel):
    """Workload shape. Fractions are probabilities per ride, payment event or delivery."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seed: int = 7
    start: datetime = datetime(2026, 11, 17, 10, 0, 0, tzinfo=timezone.utc)
    duration_s: int = Field(600, ge=1, description="event-time span of the workload")
    rides_per_minute: float = Field(60, ge=0, description="may be below 1: months of sparse history")
    cities: list[str] = Field(default_factory=lambda: ["berlin", "lisbon", "paris", "são paulo"], min_length=1)
    sparse_cities: list[str] = Field(default_factory=lambda: ["zürich"], description="cities with few riders (empty minutes)")
    sparse_user_share: float = Field(0.02, ge=0, le=1, description="of users, spread over sparse_cities")
    late_fraction: float = Field(0.001, ge=0, le=1)
    late_max_s: int = Field(48 * 3600, ge=2)
    on_time_max_s: int = Field(300, ge=1)
    duplicate_fraction: float = Field(0.02, ge=0, le=1)
    correction_fraction: float = Field(0.05, ge=0, le=1, description="of payment events")
    other_correction_fraction: float = Field(0.01, ge=0, le=1, description="of other events (time, city or driver moves)")
    correction_first_fraction: float = Field(0.2, ge=0, le=1, description="of corrections: delivered before their original")
    correction_shift_max_s: int = Field(900, ge=1, description="a corrected event time moves by 1 s up to this")
    local_offsets: bool = Field(True, description="wire event times carry local UTC offsets (else all Z)")
    refund_fraction: float = Field(0.05, ge=0, le=1, description="of rides")
    users: int = Field(200, ge=1)
    pii_fraction: float = Field(0.0, ge=0, le=1, description="of users: their ride requests carry their name and phone "
                                "in plaintext, as the app sends them (`lklab produce` seals them with the user's key)")
    drivers: int = Field(50, ge=1)
    schema_v2_fraction: float = Field(0.0, ge=0, le=1, description="of rides, written by a producer on schema v2 (tips, "
                                      "currency); a corrected v2 event's first version is v1 half the time (mid-upgrade)")
    tip_fraction: float = Field(0.6, ge=0, le=1, description="of schema v2 captures, with a tip")

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
    riders: dict[str, dict[str, str]] = field(default_factory=dict)  # user_id -> plaintext PII their ride requests carry

    def lines(self, local_offsets: bool = True) -> list[str]:
        """The deliveries as the field writes them, PII included (what `lklab produce` takes)."""
        return [wire_json(e, local_offsets, self.riders) for e in self.deliveries]

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
        by_city: dict[str, list[str]] = {c: [] for c in (*cities, *config.sparse_cities)}
        for k, driver in enumerate(drivers):
            by_city[cities[k % len(cities)]].append(driver)
        return cls([cls._home(config, k) for k in range(config.users)], by_city, drivers)

    @staticmethod
    def _home(config: GeneratorConfig, user: int) -> str:
        """Every 1/sparse_user_share-th user lives in a sparse city (floor(users * share) of them)."""
        share, sparse = config.sparse_user_share, config.sparse_cities
        if sparse and int((user + 1) * share) > int(user * share):
            return sparse[int(user * share) % len(sparse)]
        return config.cities[user % len(config.cities)]

    @property
    def cities(self) -> list[str]:
        return list(self.drivers_by_city)

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
            schema_version=1,  # _schema_versions moves some rides to v2
            event_type=event_type,
            event_time=from_ms(ms),
            ride_id=ride_id,
            user_id=f"u{user:05d}",
            driver_id=None if event_type in DRIVERLESS else driver,
            city=city,
            amount_cents=amounts.get(event_type),
        )
        out.append(_maybe_correct(config, rng, cast, event, captured))
    return out


def _maybe_correct(
    config: GeneratorConfig, rng: random.Random, cast: _Cast, event: Event, captured: int
) -> tuple[Event, Event | None]:
    """Truth holds the corrected event (v2); the first version (v1) was wrong in one or two of
    the fields a correction may change: amount, event time, city, driver, user."""
    payment = event.event_type in PAYMENT_TYPES
    if rng.random() >= (config.correction_fraction if payment else config.other_correction_fraction):
        return event, None
    kinds = ["amount"] if payment else []
    kinds += ["time"] + (["city"] if len(cast.cities) > 1 else []) + (["user"] if config.users > 1 else [])
    kinds += ["driver"] if event.driver_id is not None and len(cast.all_drivers) > 1 else []
    chosen = rng.sample(kinds, 1 if len(kinds) == 1 or rng.random() < 0.75 else 2)
    wrong = event
    for kind in sorted(chosen):
        wrong = _WRONG[kind](config, rng, cast, wrong, captured)
    return event.replace(event_version=2), wrong


def _wrong_amount(config: GeneratorConfig, rng: random.Random, cast: _Cast, event: Event, captured: int) -> Event:
    assert event.amount_cents is not None
    if event.event_type is EventType.PAYMENT_CAPTURED:
        return event.replace(amount_cents=_other_amount(rng, event.amount_cents, AMOUNT_MIN_CENTS, AMOUNT_MAX_CENTS))
    # captured >= AMOUNT_MIN_CENTS > 1, so a different refund <= captured always exists
    return event.replace(amount_cents=_other_amount(rng, event.amount_cents, 1, captured))


def _wrong_time(config: GeneratorConfig, rng: random.Random, cast: _Cast, event: Event, captured: int) -> Event:
    """Moved by 1 s up to correction_shift_max_s, to another minute (and across the allowed
    lateness, so across T); within that reach of midnight, half the time across midnight."""
    at, reach = to_ms(event.event_time), config.correction_shift_max_s * 1000
    midnight = to_ms(datetime.combine(event.event_time.date(), datetime.min.time(), timezone.utc))
    nearest = min((midnight, midnight + 86_400_000), key=lambda m: abs(m - at))
    to_midnight = nearest - at  # > 0: midnight is ahead
    if 0 < abs(to_midnight) <= reach and rng.random() < 0.5:
        shift = to_midnight + (1 if to_midnight > 0 else -1) * rng.randint(0 if to_midnight > 0 else 1, 60_000)
    else:
        shift = rng.choice((-1, 1)) * rng.randint(1000, reach)
    return event.replace(event_time=from_ms(at + shift))


def _wrong_city(config: GeneratorConfig, rng: random.Random, cast: _Cast, event: Event, captured: int) -> Event:
    return event.replace(city=rng.choice([c for c in cast.cities if c != event.city]))


def _wrong_driver(config: GeneratorConfig, rng: random.Random, cast: _Cast, event: Event, captured: int) -> Event:
    return event.replace(driver_id=rng.choice([d for d in cast.all_drivers if d != event.driver_id]))


def _wrong_user(config: GeneratorConfig, rng: random.Random, cast: _Cast, event: Event, captured: int) -> Event:
    return event.replace(user_id=rng.choice([u for u in (f"u{k:05d}" for k in range(min(config.users, 50))) if u != event.user_id]))


_WRONG = {"amount": _wrong_amount, "city": _wrong_city, "driver": _wrong_driver, "time": _wrong_time, "user": _wrong_user}


TIP_MAX_CENTS = 1500
CURRENCIES = {"zürich": "CHF"}  # a v2 producer's currency per city; EUR elsewhere (views sum minor units: no FX)


def _schema_versions(config: GeneratorConfig, rides: list[tuple[Event, Event | None]]) -> list[tuple[Event, Event | None]]:
    """Which producer wrote each ride: schema v2 for schema_v2_fraction of rides (captures tipped
    for tip_fraction of them), else v1. A corrected v2 event's first version came from a v1
    producer half the time, or says another tip. Drawn from an RNG of its own, so workloads
    without v2 stay byte-identical to those of earlier lklab versions."""
    if not config.schema_v2_fraction:
        return rides
    rng, on_v2 = random.Random(f"{config.seed}/schema-v2"), {}
    out = []
    for final, first in rides:
        if on_v2.setdefault(final.ride_id, rng.random() < config.schema_v2_fraction):
            tip = rng.randint(1, TIP_MAX_CENTS) if final.event_type is EventType.PAYMENT_CAPTURED and rng.random() < config.tip_fraction else 0
            final = final.replace(schema_version=2, tip_cents=tip, currency=CURRENCIES.get(final.city, "EUR"))
            if first is not None and rng.random() < 0.5:
                wrong_tip = rng.randint(0, TIP_MAX_CENTS) if tip and rng.random() < 0.5 else tip
                first = first.replace(schema_version=2, tip_cents=wrong_tip, currency=CURRENCIES.get(first.city, "EUR"))
        out.append((final, first))
    return out


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
        """Deliver event strictly after original and never before its own event time, keeping
        reserve_ms of headroom for its own duplicate. The lateness class is the original's,
        measured from the event's own time: a correction that moves the time back by more than
        the class allows is later than the class (as it would be in production)."""
        on_time = original.arrival_ms - to_ms(original.event.event_time) <= self.on_time_ms
        own_ms = to_ms(event.event_time)
        low = max(original.arrival_ms + 1, own_ms)
        bound = own_ms + (self.on_time_ms if on_time else self.late_ms) - reserve_ms
        return self.add(event, self.rng.randint(low, max(low, min(original.arrival_ms + max_delay_ms, bound))))


def _schedule(
    config: GeneratorConfig, rng: random.Random, rides: list[tuple[Event, Event | None]]
) -> list[_Delivery]:
    """Primaries first, then corrections after their original (or, for correction_first_fraction
    of them, the original after its correction), then duplicates of any of them."""
    schedule = _Schedule(config, rng)
    pairs = []
    for final, first in rides:
        early = first is not None and rng.random() < config.correction_first_fraction
        leader, follower = (final, first) if early else (first or final, final)
        pairs.append((schedule.primary(leader), follower))
    for leader, follower in pairs:
        if leader.event is not follower:
            schedule.follow_up(leader, follower, CORRECTION_DELAY_MAX_MS, reserve_ms=1)
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
    rides = _schema_versions(config, rides)
    deliveries = _schedule(config, rng, rides)
    truth = sorted((final for final, _ in rides), key=lambda e: (e.event_time, e.event_id))
    return Workload(
        config=config,
        deliveries=[d.event for d in deliveries],
        arrival_times=[from_ms(d.arrival_ms) for d in deliveries],
        truth=truth,
        riders=_riders(config, truth),
    )


GIVEN_NAMES = ("Ada", "Zoë", "Łukasz", "Chidi", "Mei", "José", "Søren", "Aiyana")


def _riders(config: GeneratorConfig, truth: list[Event]) -> dict[str, dict[str, str]]:
    """The users (a stable pii_fraction of them) whose app sends their name and phone."""
    users = sorted({e.user_id for e in truth})
    chosen = [u for u in users if zlib.crc32(f"pii/{config.seed}/{u}".encode()) % 10_000 < config.pii_fraction * 10_000]
    return {u: {"name": f"{GIVEN_NAMES[zlib.crc32(u.encode()) % len(GIVEN_NAMES)]} Rider-{zlib.crc32(u.encode()) % 100_000:05d}",
                "phone": f"+49 30 {zlib.crc32(('tel' + u).encode()) % 10_000_000:07d}"} for u in chosen}


def wire_offset(event: Event) -> timedelta | None:
    """The local UTC offset this delivery's event time is written in (fixed per event_id and
    version); None: UTC with a Z."""
    minutes = WIRE_OFFSETS_MIN[zlib.crc32(f"{event.event_id}/{event.event_version}".encode()) % len(WIRE_OFFSETS_MIN)]
    return None if minutes is None else timedelta(minutes=minutes)


def wire_json(event: Event, local_offsets: bool = True, riders: Mapping[str, dict[str, str]] | None = None) -> str:
    """An event as a producer in the field writes it: its event time in a local offset, and a
    ride request of one of `riders` with the rider's plaintext PII."""
    line = event.to_json(wire_offset(event) if local_offsets else None)
    if riders and event.event_type == EventType.RIDE_REQUESTED and event.user_id in riders:
        line = json.dumps({**json.loads(line), "pii": riders[event.user_id]}, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return line


def write_jsonl(events: Iterable[Event], path: str | Path, local_offsets: bool = True,
                riders: Mapping[str, dict[str, str]] | None = None) -> int:
    """One event per line (the import file format), event times in local offsets unless
    local_offsets is False, ride requests of `riders` with their PII; returns the number of lines."""
    count = 0
    with open(path, "w", encoding="utf-8", newline="\n") as out:
        for event in events:
            out.write(wire_json(event, local_offsets, riders) + "\n")
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
        "tip_cents": event.tip_cents,
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
        "schema_version": 1,
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
        (line(schema_version=2, tip_cents=-100), "schema v2: negative tip_cents"),
        (line(schema_version=2, tip_cents="2.50"), "schema v2: tip_cents is a string"),
        (line(schema_version=2, event_type=EventType.PAYMENT_REFUNDED.value, tip_cents=100), "schema v2: a tip on a refund"),
        (line(schema_version=2, currency="euro"), "schema v2: currency is not an ISO 4217 code"),
    ]


_DROP = object()
