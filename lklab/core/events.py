"""The event contract: the registered JSON Schemas (lklab.core.schemas: v1, v2, ...) plus the
typed model every layer imports. A record is checked against the version its schema_version
names; the fields its version lacks take the newer versions' defaults (a v1 payment has no tip).

The JSON Schema file is the reference. The hot path (every record the sink consumes) decodes
with msgspec into a wire struct whose constraints are no looser than the schema; anything it
does not accept goes the reference way (json + schema validators), which accepts or words the
reason. So the fast path can only be faster, never more lenient; a unit test keeps it so.
"""
from __future__ import annotations

import json
import math
import re
import sys
from datetime import datetime, timedelta, timezone
from enum import StrEnum
from functools import lru_cache
from typing import Annotated, Any

import fastjsonschema
import msgspec
from jsonschema import Draft202012Validator
from msgspec import Meta

from lklab.core import schemas

SCHEMA_VERSION = schemas.latest()  # the newest registered version: what lklab writes


class EventType(StrEnum):
    APP_OPENED = "app_opened"
    RIDE_REQUESTED = "ride_requested"
    RIDE_STARTED = "ride_started"
    RIDE_COMPLETED = "ride_completed"
    PAYMENT_CAPTURED = "payment_captured"
    PAYMENT_REFUNDED = "payment_refunded"


PAYMENT_TYPES = frozenset({EventType.PAYMENT_CAPTURED, EventType.PAYMENT_REFUNDED})


REASON_CHARS = 300  # a reason quoting a huge value stays one readable line (and fits a dead letter)


def short_reason(reason: str) -> str:
    """`reason`, or its start and its full length when it is longer than REASON_CHARS (idempotent)."""
    return reason if len(reason) <= REASON_CHARS else f"{reason[:REASON_CHARS - 40]}… ({len(reason):,} characters)"


class EventError(ValueError):
    """A record that breaks the contract; `reason` is one line that says what and where, at most
    REASON_CHARS long: a reason quotes the bad value, which can be megabytes."""

    def __init__(self, reason: str):
        reason = short_reason(reason)
        super().__init__(reason)
        self.reason = reason


class Event(msgspec.Struct, frozen=True, gc=False):
    """One validated event. Unknown fields of later schema versions are ignored, never fatal.

    A msgspec struct rather than a pydantic model: it is built once per consumed record, and
    pydantic costs several times more per event on the replay and speed-layer hot path.
    gc=False: it holds only plain values (no cycles possible), and keeping hundreds of thousands
    of them out of the cyclic GC's generations more than halved a replay's cost per event."""

    event_id: str
    event_version: int
    schema_version: int
    event_type: EventType
    event_time: datetime
    ride_id: str
    user_id: str
    driver_id: str | None
    city: str
    amount_cents: int | None = None
    pii: str | None = None  # Fernet token; plaintext never reaches the log
    tip_cents: int = 0  # schema v2: payment_captured only
    currency: str = "EUR"  # schema v2

    def to_json(self, offset: timedelta | None = None) -> str:
        """The wire form of its schema version (a v1 event has no tip_cents or currency); event_time
        in UTC with a Z, or in the given local offset."""
        data = {name: getattr(self, name) for name in _wire_fields(self.schema_version)}
        data["event_type"] = self.event_type.value
        data["event_time"] = format_time(self.event_time, offset)
        return _WIRE_ENCODER.encode(data)

    def replace(self, **changes: Any) -> "Event":
        return msgspec.structs.replace(self, **changes)


EVENT_FIELDS: tuple[str, ...] = Event.__struct_fields__
_WIRE_ENCODER = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=False)


@lru_cache(maxsize=None)
def _wire_fields(version: int) -> tuple[str, ...]:
    """The fields a `version` record carries on the wire (the generator writes millions: looked up once)."""
    own = schema(version)["properties"]
    return tuple(name for name in EVENT_FIELDS if name in own)

def as_utc(ts: datetime) -> datetime:
    """An aware UTC datetime. Naive means UTC: Spark returns naive datetimes in the session time
    zone, which lklab pins to UTC, and so does every time in the lake."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def format_time(ts: datetime, offset: timedelta | None = None) -> str:
    """The wire format. Canonical (offset None): UTC with a Z, 2026-11-17T10:00:00.123Z, with
    milliseconds, or microseconds when the instant has them (nothing is rounded away). With an
    offset, the same instant in that local time, e.g. 2026-11-17T12:00:00.123+02:00."""
    if offset is None:
        return _format_local(ts.astimezone(timezone.utc)) + "Z"
    local = ts.astimezone(timezone(offset))
    sign, minutes = ("-" if offset < timedelta(0) else "+"), abs(int(offset.total_seconds())) // 60
    return _format_local(local) + f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _format_local(ts: datetime) -> str:
    return ts.replace(tzinfo=None).isoformat(timespec="milliseconds" if ts.microsecond % 1000 == 0 else "microseconds")


def parse_time(text: str) -> datetime:
    """An ISO-8601 time as an aware UTC datetime. Text without an offset is read as UTC (CLI and
    API flags); events are stricter: the schema requires the offset."""
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    try:
        return (parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00: the instant is before year 1 in UTC
        raise ValueError("the instant is outside the years 1 to 9999 in UTC") from None


def schema(version: int | None = None) -> dict[str, Any]:
    """The JSON Schema of `version` (None: the newest)."""
    return schemas.schema(version)


INT64_MAX = 2**63 - 1  # the schema's bound on integers: what Spark (LongType) and SQL (BIGINT) hold
_Id = Annotated[str, Meta(min_length=1, max_length=128)]
_Count = Annotated[int, Meta(ge=1, le=INT64_MAX)]
_TIME_PATTERN = schema()["properties"]["event_time"]["pattern"]  # the reference's own rule


class _Wire(msgspec.Struct, gc=False):
    """Every schema version as msgspec constraints, at least as strict as the JSON Schema (the test
    `test_the_wire_fast_path_is_never_more_lenient` holds it to that). It reads the newest
    version's fields; _fast drops those the record's own version does not have."""

    event_id: _Id
    event_version: _Count
    schema_version: _Count
    event_type: EventType
    event_time: Annotated[str, Meta(pattern=_TIME_PATTERN)]
    ride_id: _Id
    user_id: _Id
    driver_id: _Id | None
    city: Annotated[str, Meta(min_length=1, max_length=64)]
    amount_cents: Annotated[int, Meta(ge=0, le=INT64_MAX)] | None = None
    pii: Annotated[str, Meta(min_length=1)] | None = None
    tip_cents: Annotated[int, Meta(ge=0, le=INT64_MAX)] = 0
    currency: Annotated[str, Meta(pattern=schema()["properties"]["currency"]["pattern"])] = "EUR"


_WIRE = msgspec.json.Decoder(_Wire)


@lru_cache(maxsize=None)
def _validator(version: int) -> Draft202012Validator:
    return Draft202012Validator(schema(version))


@lru_cache(maxsize=None)
def _defaults(version: int) -> dict[str, Any]:
    return schemas.defaults(version)


def _describe(error) -> str:
    path = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        return error.message.replace("is a required property", "is missing")
    if error.validator == "enum":
        return f"field '{path}': {error.instance!r} is not one of {', '.join(error.validator_value)}"
    if error.validator == "pattern" and path == "event_time":
        return _describe_time(error.instance)
    if isinstance(error.instance, float) and math.isinf(error.instance):
        return f"field '{path}': a number too large to read (beyond a double, or more than {MAX_DIGITS:,} digits)"
    if path == "amount_cents" and error.validator == "type" and error.validator_value == "null":
        return "field 'amount_cents' is only allowed on payment events"
    if path == "tip_cents" and error.validator == "const":
        return f"field 'tip_cents': {error.instance!r}, but a tip is only allowed on payment_captured events"
    return f"field '{path}': {error.message}" if path else error.message


_NO_OFFSET = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")


def _describe_time(text: str) -> str:
    if _NO_OFFSET.match(text):
        return (f"field 'event_time': {text!r} has no UTC offset, so it names no instant; "
                "add Z or ±HH:MM, e.g. 2026-11-17T10:00:00Z or 2026-11-17T12:00:00+02:00")
    return (f"field 'event_time': {text!r} is not an ISO-8601 timestamp with an offset, "
            "like 2026-11-17T10:00:00Z or 2026-11-17T12:00:00+02:00")


def _rank(error) -> tuple[bool, int]:
    # Cross-field rules (the allOf block) only make sense once each field is valid on its own.
    return (bool(error.schema_path) and error.schema_path[0] == "allOf", len(error.absolute_path))


@lru_cache(maxsize=None)
def _fast_check(version: int):
    """The same schema compiled to Python code (about 30x faster than the reference validator).
    The schemas use only draft-07 keywords, so they compile as draft-07; a unit test keeps the two
    validators' verdicts equal."""
    return fastjsonschema.compile({**schema(version), "$schema": "http://json-schema.org/draft-07/schema#"})


def claimed_version(data: dict[str, Any]) -> int:
    """The registered version a record is checked against: the one its schema_version names (the
    newest for a newer or unreadable one: its own field check then words the problem)."""
    claimed = data.get("schema_version")
    if isinstance(claimed, float) and claimed.is_integer():  # JSON Schema integers include 2.0 (never inf or NaN)
        claimed = int(claimed)
    if isinstance(claimed, bool) or not isinstance(claimed, int) or claimed < 1:
        return SCHEMA_VERSION
    return min(claimed, SCHEMA_VERSION)


def validate_dict(data: Any) -> dict[str, Any]:
    """Check a decoded record against the schema version it claims; raises EventError naming
    the first problem (prefixed with the version for versions after the first)."""
    if not isinstance(data, dict):
        raise EventError(f"expected a JSON object, got {type(data).__name__}")
    version = claimed_version(data)
    try:
        _fast_check(version)(data)
    except fastjsonschema.JsonSchemaValueException:
        errors = list(_validator(version).iter_errors(data))  # the reference validator words the reason
        if errors:
            reason = _describe(min(errors, key=_rank))
            raise EventError(reason if version == min(schemas.versions()) else f"schema v{version}: {reason}") from None
    try:
        parse_time(data["event_time"])
    except ValueError as exc:
        raise EventError(f"field 'event_time': {data['event_time']!r} is not a valid timestamp ({exc})") from None
    _check_unicode(data)
    return data


def _check_unicode(data: dict[str, Any]) -> None:
    """JSON escapes can spell a lone surrogate ("\\ud800"): valid JSON, but no Unicode text, and
    UTF-8 (the log, the serving store, the lake) cannot hold it."""
    pii = data.get("pii")
    texts = [(name, data.get(name)) for name in EVENT_FIELDS] + (list(pii.items()) if isinstance(pii, dict) else [])
    for name, value in texts:
        if isinstance(value, str) and _SURROGATE.search(value):
            raise EventError(f"field '{name}': {value[:40]!r} holds a lone UTF-16 surrogate, which is not Unicode text")


_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_DIGITS = 4300  # Python's own limit on converting digits to an int (sys.get_int_max_str_digits)


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")  # Python's json reads NaN and Infinity; JSON has neither


def _integer(digits: str) -> int | float:
    """An integer too long to read (it would cost quadratic time) reads as ±infinity, as a float
    beyond the double range does: refused where the schema wants a number, ignored in unknown
    fields, as the wire path ignores them."""
    if len(digits.lstrip("-")) > MAX_DIGITS:
        return float("-inf") if digits.startswith("-") else float("inf")
    return int(digits)


def decode(raw: bytes | str) -> dict[str, Any]:
    try:
        return json.loads(raw, parse_constant=_refuse_constant, parse_int=_integer)
    except RecursionError:  # nesting deeper than the interpreter's recursion limit
        raise EventError(f"malformed JSON: nested deeper than {sys.getrecursionlimit():,} levels") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError (bytes not UTF-8), or the two above
        raise EventError(f"malformed JSON: {exc}") from None


def _fast(raw: bytes | str) -> Event | None:
    """The wire fast path; None when the record needs the reference path (invalid or unusual)."""
    try:
        w = _WIRE.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None  # bytes that are not UTF-8, or nesting deeper than msgspec goes: the reference path words it
    if (w.amount_cents is None) == (w.event_type in PAYMENT_TYPES):
        return None  # the cross-field rules: the reference path words them
    tip, currency = _own_fields(w.schema_version, w.tip_cents, w.currency)
    if tip and w.event_type is not EventType.PAYMENT_CAPTURED:
        return None
    try:  # the pattern requires an offset (Z or ±HH:MM): normalise the instant to UTC here, at the edge
        at = datetime.fromisoformat(w.event_time).astimezone(timezone.utc)
    except (ValueError, OverflowError):  # the reference path words it
        return None
    return Event(w.event_id, w.event_version, w.schema_version, w.event_type, at, w.ride_id, w.user_id, w.driver_id,
                 w.city, w.amount_cents, w.pii, tip, currency)


def _from_dict(data: dict[str, Any]) -> Event:
    """An Event from a record the reference validator accepted."""
    if isinstance(data.get("pii"), dict):
        raise EventError("field 'pii': plaintext PII on the log; it must be encrypted at the edge")
    integer = lambda v: None if v is None else int(v)  # noqa: E731 - JSON Schema integers include 1.0
    tip, currency = _own_fields(claimed_version(data), data.get("tip_cents", 0), data.get("currency", "EUR"))
    return Event(data["event_id"], integer(data["event_version"]), integer(data["schema_version"]),
                 EventType(data["event_type"]), parse_time(data["event_time"]), data["ride_id"], data["user_id"],
                 data["driver_id"], data["city"], integer(data.get("amount_cents")), data.get("pii"), tip, currency)


def _own_fields(version: int, tip: Any, currency: Any) -> tuple[int, str]:
    """tip_cents and currency as the record's own version has them: the defaults where it lacks
    them (in a v1 record they are unknown fields, ignored, whatever they hold)."""
    fill = _defaults(min(version, SCHEMA_VERSION))
    return int(fill.get("tip_cents", tip)), fill.get("currency", currency)


def parse_event(raw: bytes | str | dict[str, Any]) -> Event:
    """Decode and validate one record from the wire or a file. PII must already be a token."""
    if not isinstance(raw, dict):
        event = _fast(raw)
        if event is not None:
            return event
    return _from_dict(validate_dict(raw if isinstance(raw, dict) else decode(raw)))
