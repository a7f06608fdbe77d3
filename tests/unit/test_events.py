"""The event contract: schema v1 validation gives one clear reason per bad record."""
import json

import pytest

from lklab.events import EventError, parse_event, schema
from lklab.generator import bad_lines

GOOD = {
    "event_id": "e1", "event_version": 1, "schema_version": 1, "event_type": "payment_captured",
    "event_time": "2026-11-17T10:00:00Z", "ride_id": "r1", "user_id": "u1", "driver_id": "d1",
    "city": "berlin", "amount_cents": 1200,
}


def line(**changes) -> str:
    data = {**GOOD, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


def test_a_valid_event_round_trips() -> None:
    event = parse_event(line())
    assert parse_event(event.to_json()) == event
    assert event.amount_cents == 1200 and event.event_time.isoformat() == "2026-11-17T10:00:00+00:00"


def test_a_later_schema_version_with_added_fields_is_accepted() -> None:
    event = parse_event(line(schema_version=2, surge_multiplier=1.5))
    assert event.schema_version == 2


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ("{not json", "malformed JSON"),
        (line(city=...), "'city' is missing"),
        (line(amount_cents="12"), "field 'amount_cents'"),
        (line(event_type="teleported"), "field 'event_type': 'teleported' is not one of"),
        (line(amount_cents=-1), "field 'amount_cents': -1 is less than the minimum of 0"),
        (line(event_type="app_opened"), "only allowed on payment events"),
        (line(amount_cents=...), "'amount_cents' is missing"),
        (line(event_time="yesterday"), "field 'event_time'"),
        (line(event_time="2026-13-01T00:00:00Z"), "not a valid UTC timestamp"),
        (line(event_version=0), "field 'event_version'"),
        ("[1, 2]", "expected a JSON object"),
        (line(pii={"name": "Ada", "phone": "1"}), "plaintext PII"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(record: str, expected: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(record)
    assert expected in info.value.reason
    assert "\n" not in info.value.reason


def test_generator_bad_lines_all_fail() -> None:
    for record, _why in bad_lines():
        with pytest.raises(EventError):
            parse_event(record)


def test_schema_file_names_every_model_field() -> None:
    from lklab.events import Event

    assert set(schema()["properties"]) == set(Event.model_fields)
