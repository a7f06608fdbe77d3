"""The schema registry and `lklab schema check`: a table of compatible and breaking changes, each
applied to the newest registered schema and judged against every registered version."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from lklab.core import schemas
from lklab.core.schemas import Mode
from lklab.evolution.compatibility import SchemaFileError, check, load_proposed

TOPIC = "rides.events"


def _newest() -> dict:
    return copy.deepcopy(schemas.schema())


def _with(change: Callable[[dict], None]) -> dict:
    proposed = _newest()
    change(proposed)
    return proposed


def add_optional(s: dict) -> None:
    s["properties"]["surge_multiplier"] = {"type": "number", "minimum": 1, "default": 1}


def add_required_with_default(s: dict) -> None:
    s["properties"]["platform"] = {"type": "string", "default": "ios"}
    s["required"].append("platform")


def add_required_without_default(s: dict) -> None:
    s["properties"]["platform"] = {"type": "string"}
    s["required"].append("platform")


def remove_field(s: dict) -> None:
    del s["properties"]["pii"]


def rename_field(s: dict) -> None:
    s["properties"]["town"] = s["properties"].pop("city")
    s["required"] = ["town" if r == "city" else r for r in s["required"]]


def change_type(s: dict) -> None:
    s["properties"]["amount_cents"] = {"type": ["string", "null"]}


def widen_type(s: dict) -> None:
    s["properties"]["amount_cents"] = {**s["properties"]["amount_cents"], "type": ["number", "null"]}


def narrow_enum(s: dict) -> None:
    s["properties"]["event_type"]["enum"].remove("payment_refunded")


def widen_enum(s: dict) -> None:
    s["properties"]["event_type"]["enum"].append("ride_cancelled")


def lower_max_length(s: dict) -> None:
    s["properties"]["city"]["maxLength"] = 16


def raise_max_length(s: dict) -> None:
    s["properties"]["city"]["maxLength"] = 256


def change_pattern(s: dict) -> None:
    s["properties"]["currency"]["pattern"] = "^(EUR|CHF)$"


def make_optional_required(s: dict) -> None:
    s["required"].append("amount_cents")


def drop_required(s: dict) -> None:
    s["required"].remove("driver_id")


def describe_only(s: dict) -> None:
    s["properties"]["city"]["description"] = "the city the ride is in"


CASES = [  # (change, mode, the substring of a breaking change, or None: compatible)
    (describe_only, Mode.BACKWARD, None),
    (add_optional, Mode.BACKWARD, None),
    (add_optional, Mode.FULL, None),
    (add_required_with_default, Mode.BACKWARD, None),
    (add_required_without_default, Mode.BACKWARD, "field 'platform' is required by the reader, with no default"),
    (add_required_without_default, Mode.FORWARD, None),
    (remove_field, Mode.BACKWARD, "field 'pii' removed"),
    (remove_field, Mode.FORWARD, None),  # pii was optional: an old reader reads records without it
    (rename_field, Mode.BACKWARD, "field 'city' removed (renamed to 'town'?)"),
    (rename_field, Mode.FORWARD, "field 'city' is required by the reader"),
    (change_type, Mode.BACKWARD, "field 'amount_cents': type changed from integer|null to null|string"),
    (change_type, Mode.FORWARD, "field 'amount_cents': type changed"),
    (widen_type, Mode.BACKWARD, None),
    (widen_type, Mode.FORWARD, "field 'amount_cents': type changed from null|number to integer|null"),
    (narrow_enum, Mode.BACKWARD, "field 'event_type': enum narrowed (no longer accepts 'payment_refunded')"),
    (narrow_enum, Mode.FORWARD, None),
    (widen_enum, Mode.BACKWARD, None),
    (widen_enum, Mode.FORWARD, "field 'event_type': enum narrowed (no longer accepts 'ride_cancelled')"),
    (lower_max_length, Mode.BACKWARD, "field 'city': maxLength narrowed from 64 to 16"),
    (raise_max_length, Mode.BACKWARD, None),
    (change_pattern, Mode.BACKWARD, "field 'currency': pattern changed"),
    (make_optional_required, Mode.BACKWARD, "field 'amount_cents' is required by the reader, with no default, and optional"),
    (drop_required, Mode.BACKWARD, None),
    (drop_required, Mode.FORWARD, "field 'driver_id' is required by the reader"),
    (rename_field, Mode.NONE, None),
]


@pytest.mark.parametrize(("change", "mode", "breaks"), CASES,
                         ids=[f"{c.__name__}-{m.value}" for c, m, _ in CASES])
def test_the_compatibility_table(change: Callable[[dict], None], mode: Mode, breaks: str | None) -> None:
    verdict = check(_with(change), TOPIC, mode)
    found = [str(b) for b in verdict.breaking]
    if breaks is None:
        assert verdict.compatible, found
    else:
        assert any(breaks in line for line in found), found
    assert verdict.checked == tuple(schemas.versions())


def test_a_change_is_judged_against_every_registered_version() -> None:
    """A rename breaks the records of v1 and of v2 alike: both are named."""
    verdict = check(_with(rename_field), TOPIC, Mode.BACKWARD)
    assert {b.version for b in verdict.breaking} == set(schemas.versions())


def test_the_registered_versions_are_compatible_in_order() -> None:
    """Each registered version passes the check against the ones before it (how it got in)."""
    registered = schemas.versions()
    for version, body in registered.items():
        earlier = {v: b for v, b in registered.items() if v < version}
        if earlier:
            verdict = check(body, TOPIC, schemas.mode(TOPIC), earlier)
            assert verdict.compatible, [str(b) for b in verdict.breaking]


def test_the_default_mode_is_backward_and_transitive_spellings_are_accepted() -> None:
    assert schemas.mode(TOPIC) is Mode.BACKWARD
    assert Mode.parse("backward_transitive") is Mode.BACKWARD
    with pytest.raises(ValueError, match="unknown compatibility mode 'SIDEWAYS'"):
        Mode.parse("SIDEWAYS")


def test_v2_adds_only_optional_fields_with_defaults() -> None:
    assert schemas.defaults(1) == {"tip_cents": 0, "currency": "EUR"}
    assert schemas.defaults(2) == {}


@pytest.mark.parametrize(("content", "expected"), [
    (None, "no such file"), ("{nope", "not JSON"), ("[1, 2]", "not an event schema"),
    ('{"type": "object"}', "not an event schema"),
])
def test_a_bad_schema_file_is_one_line(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "proposed.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SchemaFileError, match=expected):
        load_proposed(path)


def test_schema_check_cli(tmp_path: Path) -> None:
    """The command: exit 0 and one line when compatible; exit 1 and one line per break when not."""
    from typer.testing import CliRunner

    from lklab.cli import app

    good, bad = tmp_path / "good.json", tmp_path / "bad.json"
    good.write_text(json.dumps(_with(add_optional)))
    bad.write_text(json.dumps(_with(rename_field)))
    runner = CliRunner()
    ok = runner.invoke(app, ["schema", "check", str(good)])
    assert ok.exit_code == 0 and ok.stdout.startswith("compatible:"), ok.stdout
    refused = runner.invoke(app, ["schema", "check", str(bad)])
    assert refused.exit_code == 1, refused.stdout
    lines = refused.stdout.strip().splitlines()
    assert sum("BACKWARD break" in line for line in lines) == 4 and lines[-1].startswith("incompatible: 4 breaking changes")
    missing = runner.invoke(app, ["schema", "check", str(tmp_path / "nope.json")])
    assert missing.exit_code == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
