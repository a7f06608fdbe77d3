"""The event contract: every registered schema version's validation gives one clear reason per
bad record, and a record is read by the version it claims (older ones with the newer defaults)."""
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from datetime import datetime, timedelta, timezone

from lklab.core.events import EventError, format_time, parse_event, schema
from lklab.log.generator import GeneratorConfig, bad_lines, generate, wire_json

GOOD = {
    "event_id": "e1", "event_version": 1, "schema_version": 1, "event_type": "payment_captured",
    "event_time": "2026-11-17T10:00:00Z", "ride_id": "r1", "user_id": "u1", "driver_id": "d1",
    "city": "berlin", "amount_cents": 1200,
}


SAMPLES = [json.loads(wire_json(e)) for e in
           generate(GeneratorConfig(seed=5, duration_s=120, rides_per_minute=10, schema_v2_fraction=0.5)).deliveries[:80]]
FIELDS = sorted({k for e in SAMPLES for k in e})


def line(**changes) -> str:
    data = {**GOOD, **changes}
    return json.dumps({k: v for k, v in data.items() if v is not ...})


def test_a_valid_event_round_trips() -> None:
    event = parse_event(line())
    assert parse_event(event.to_json()) == event
    assert event.amount_cents == 1200 and event.event_time.isoformat() == "2026-11-17T10:00:00+00:00"


@pytest.mark.parametrize("text", ["2026-11-17T10:00:00Z", "2026-11-17T10:00:00+00:00", "2026-11-17T12:00:00+02:00",
                                  "2026-11-17T05:00:00-05:00", "2026-11-17T15:30:00.000+05:30", "2026-11-16T23:15:00-10:45"])
def test_an_explicit_offset_names_the_same_instant_and_is_normalised_to_utc(text: str) -> None:
    event = parse_event(line(event_time=text))
    assert event.event_time == datetime(2026, 11, 17, 10, tzinfo=timezone.utc)
    assert event.event_time.utcoffset() == timedelta(0)
    assert json.loads(event.to_json())["event_time"] == "2026-11-17T10:00:00.000Z"
    assert parse_event(event.to_json()) == event


@given(at=st.datetimes(datetime(2000, 1, 1), datetime(2100, 1, 1), timezones=st.just(timezone.utc)),
       minutes=st.integers(-18 * 60, 18 * 60))
def test_any_offset_round_trips_to_the_same_instant(at: datetime, minutes: int) -> None:
    text = format_time(at, timedelta(minutes=minutes))
    assert parse_event(line(event_time=text)).event_time == at


def test_a_later_schema_version_with_added_fields_is_accepted() -> None:
    event = parse_event(line(schema_version=3, surge_multiplier=1.5, tip_cents=40))
    assert (event.schema_version, event.tip_cents) == (3, 40)  # read by the newest registered version


@pytest.mark.parametrize("claimed", ["1e400", "-1e400", "2.5", "2.0", "0", "-3", "true", "\"2\"", "null", "[2]", "99999999999999999999"])
def test_any_schema_version_value_is_a_verdict_not_a_crash(claimed: str) -> None:
    """The version a record claims picks its schema before anything is checked: no value of it
    may raise anything but EventError (a float beyond the double range reads as infinity)."""
    raw = line()[:-1] + f', "schema_version": {claimed}}}'
    try:
        assert parse_event(raw).schema_version in (1, 2, 99999999999999999999)
    except EventError as exc:
        assert "schema_version" in exc.reason


def test_samples_hold_both_versions_and_tips() -> None:
    assert {s["schema_version"] for s in SAMPLES} == {1, 2} and any(s.get("tip_cents") for s in SAMPLES)


@pytest.mark.parametrize("raw", [line(), line(tip_cents=250, currency="CHF")], ids=["plain", "with v2 fields"])
def test_a_v1_record_reads_with_v2_defaults_and_ignores_v2_fields(raw: str) -> None:
    """v1 has no tip and no currency: a v1 record's tip_cents is an unknown field, ignored."""
    for form in (raw, json.loads(raw)):
        event = parse_event(form)
        assert (event.schema_version, event.tip_cents, event.currency) == (1, 0, "EUR")
    assert "tip_cents" not in parse_event(raw).to_json() and "currency" not in parse_event(raw).to_json()


def test_a_v2_record_reads_its_tip_and_currency_and_round_trips() -> None:
    event = parse_event(line(schema_version=2, tip_cents=250, currency="CHF"))
    assert (event.tip_cents, event.currency) == (250, "CHF")
    assert parse_event(event.to_json()) == event
    assert parse_event(line(schema_version=2)).tip_cents == 0 and parse_event(line(schema_version=2)).currency == "EUR"


@pytest.mark.parametrize(("changes", "expected"), [
    ({"tip_cents": -1}, "schema v2: field 'tip_cents': -1 is less than the minimum of 0"),
    ({"tip_cents": "2.50"}, "schema v2: field 'tip_cents': '2.50' is not of type 'integer'"),
    ({"tip_cents": None}, "schema v2: field 'tip_cents': None is not of type 'integer'"),
    ({"event_type": "payment_refunded", "tip_cents": 5}, "schema v2: field 'tip_cents': 5, but a tip is only allowed on payment_captured"),
    ({"currency": "eur"}, "schema v2: field 'currency': 'eur' does not match"),
    ({"currency": 978}, "schema v2: field 'currency': 978 is not of type 'string'"),
])
def test_a_record_that_claims_v2_but_breaks_v2_is_refused_with_the_reason(changes: dict, expected: str) -> None:
    for form in (line(schema_version=2, **changes), {**GOOD, "schema_version": 2, **changes}):
        with pytest.raises(EventError) as info:
            parse_event(form)
        assert info.value.reason.startswith(expected), info.value.reason
    parse_event(line(schema_version=1, **changes))  # the same fields in a v1 record are unknown: ignored


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
        (line(event_time="2026-13-01T00:00:00Z"), "not a valid timestamp"),
            (line(event_time="2026-11-17T10:00:00"), "has no UTC offset"),
            (line(event_time="2026-11-17T10:00:00+0200"), "not an ISO-8601 timestamp with an offset"),
            (line(event_time="2026-11-17T10:00:00+24:00"), "not an ISO-8601 timestamp with an offset"),
            (line(event_time="2026-11-17T10:00:00+19:00"), "not an ISO-8601 timestamp with an offset"),
            (line(event_time="2026-11-17T10:00:00+05:60"), "not an ISO-8601 timestamp with an offset"),
            (line(event_time="0001-01-01T00:00:00+01:00"), "not a valid timestamp"),
            (line(event_time="9999-12-31T23:59:59-01:00"), "not a valid timestamp"),
        (line(event_version=0), "field 'event_version'"),
        ("[1, 2]", "expected a JSON object"),
        # found by the bad-input chaos check: each once crashed a consumer or was accepted
        ("[" * 10_000 + "]" * 10_000, "malformed JSON: nested deeper than"),
        (line(amount_cents=2**70), "is greater than the maximum"),
        (line(event_version=2**63), "is greater than the maximum"),
        (line(city="\ud800"), "lone UTF-16 surrogate"),
        (line(amount_cents=1)[:-1] + ', "extra": NaN}', "NaN is not a JSON number"),
        (line(amount_cents=1).replace('"amount_cents": 1', '"amount_cents": ' + "9" * 5000), "a number too large to read"),
        (line(city="c" * 2_000_000), "characters)"),
        (line(pii={"name": "Ada", "phone": "1"}), "plaintext PII"),
    ],
)
def test_bad_records_are_rejected_with_a_reason(record: str, expected: str) -> None:
    with pytest.raises(EventError) as info:
        parse_event(record)
    assert expected in info.value.reason
    assert "\n" not in info.value.reason


def test_bytes_that_are_not_utf8_are_a_reason_not_a_crash() -> None:
    with pytest.raises(EventError, match="malformed JSON: 'utf-8' codec can't decode byte 0xff"):
        parse_event(line(city="b-x").encode().replace(b"b-x", b"b\xffx"))


def test_generator_bad_lines_all_fail() -> None:
    for record, _why in bad_lines():
        with pytest.raises(EventError):
            parse_event(record)


def test_schema_file_names_every_model_field() -> None:
    from lklab.core.events import Event, _Wire

    assert set(schema()["properties"]) == set(Event.__struct_fields__) == set(_Wire.__struct_fields__)


_TIMES = st.sampled_from(["2026-11-17T10:00:00Z", "2026-11-17T12:00:00.5+02:00", "2026-11-16T23:30:00-10:30",
                          "2026-11-17T10:00:00", "2026-11-17T10:00:00+2:00", "2026-11-17T10:00:00+24:00",
                          "2026-11-17T10:00:00.1234567Z", "2026-11-17T10:00:00-00:00", "2026-11-17T10:00:00z"])
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.text(max_size=12), _TIMES,
                    st.sampled_from(["payment_captured", "app_opened", "ride_requested", "payment_refunded", "EUR", "chf"]),
                    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(base=st.sampled_from(SAMPLES), drop=st.sets(st.sampled_from(FIELDS), max_size=2),
       changes=st.dictionaries(st.sampled_from([*FIELDS, "extra", "pii"]), _VALUES, max_size=3))
def test_the_fast_validator_agrees_with_the_reference_schema_validator(base, drop, changes) -> None:
    """The hot path checks events with the schema compiled by fastjsonschema; the jsonschema
    reference validator must give the same verdict on valid and broken records alike."""
    import fastjsonschema

    from lklab.core.events import _fast_check, _validator, claimed_version

    record = {k: v for k, v in {**base, **changes}.items() if k not in drop}
    version = claimed_version(record)
    try:
        _fast_check(version)(record)
        fast_ok = True
    except fastjsonschema.JsonSchemaValueException:
        fast_ok = False
    assert fast_ok == _validator(version).is_valid(record), record


@settings(max_examples=600, deadline=None)
@given(base=st.sampled_from(SAMPLES), drop=st.sets(st.sampled_from(FIELDS), max_size=2),
       changes=st.dictionaries(st.sampled_from([*FIELDS, "extra", "pii"]), _VALUES, max_size=3))
def test_the_wire_fast_path_is_never_more_lenient(base, drop, changes) -> None:
    """What the msgspec wire path accepts, the reference path accepts too, as the same Event."""
    from lklab.core.events import _fast, _from_dict, _validator, claimed_version

    record = {k: v for k, v in {**base, **changes}.items() if k not in drop}
    fast = _fast(json.dumps(record).encode())
    if fast is not None:
        assert _validator(claimed_version(record)).is_valid(record), record
        assert fast == _from_dict(record)
    assert _outcome(json.dumps(record)) == _outcome(record)


def _outcome(raw):
    try:
        return parse_event(raw)
    except EventError as exc:
        return exc.reason


def test_the_wire_fast_path_takes_ordinary_events() -> None:
    """The fast path must actually be taken for well-formed events, or it saves nothing."""
    from lklab.core.events import _fast

    assert all(_fast(json.dumps(s)) is not None for s in SAMPLES)
    assert _fast(line(event_type="app_opened")) is None  # the cross-field rule goes the reference way
