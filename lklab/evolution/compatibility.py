"""Is a proposed event schema compatible with the registered ones? Confluent Schema Registry's
modes, for the JSON Schema subset lklab's event schemas use (an object of typed properties,
`required`, enums, bounds, patterns, defaults). No kept Python library does this for JSON Schema.

A reader can read a writer's records unless one of these breaks them, each named on one line:
- a field the writer has and the reader does not (removed, or renamed: a removed field and an
  added one of the same type are reported as a likely rename);
- a field whose type the reader no longer accepts (integer widens to number, nothing else);
- a field the reader requires that the writer may leave out, with no default;
- an enum, bound (minimum/maximum, lengths) or pattern the reader narrowed.
BACKWARD checks the proposed schema as the reader of every registered version's records;
FORWARD every registered version as the reader of the proposed one's; FULL both; NONE nothing.
Conditional rules (allOf/if/then) are not compared: a change there is reported as such, to review.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lklab.core import schemas
from lklab.core.schemas import Mode

_WIDER = {"integer": {"integer", "number"}}  # a writer's type → reader types that accept it


class SchemaFileError(ValueError):
    """A proposed schema file that cannot be checked; the message is one line."""


@dataclass(frozen=True)
class Breaking:
    """One incompatible change: which registered version it breaks, in which direction, and what."""

    version: int
    direction: str  # "backward": the proposed schema cannot read vN's records; "forward": vN cannot read the proposed's
    change: str

    def __str__(self) -> str:
        who = (f"reading v{self.version}'s records" if self.direction == "backward"
               else f"v{self.version} reading the proposed schema's records")
        return f"{self.direction.upper()} break, {who}: {self.change}"


@dataclass(frozen=True)
class Verdict:
    topic: str
    mode: Mode
    checked: tuple[int, ...]
    breaking: tuple[Breaking, ...]

    @property
    def compatible(self) -> bool:
        return not self.breaking


def _types(spec: dict[str, Any]) -> set[str]:
    """The JSON types a property accepts ('any' when it does not say)."""
    if "type" in spec:
        declared = spec["type"]
        return set(declared if isinstance(declared, list) else [declared])
    if "oneOf" in spec or "anyOf" in spec:
        return set().union(*(_types(s) for s in spec.get("oneOf", spec.get("anyOf", []))))
    if "enum" in spec:
        return {_json_type(v) for v in spec["enum"]}
    if "const" in spec:
        return {_json_type(spec["const"])}
    return {"any"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def _accepts(reader: set[str], writer: set[str]) -> set[str]:
    """The writer's types the reader refuses."""
    if "any" in reader:
        return set()
    return {t for t in writer if not (_WIDER.get(t, {t}) & reader)} if "any" not in writer else {"any"} - reader


def _narrowed(name: str, reader: dict[str, Any], writer: dict[str, Any]) -> Iterable[str]:
    """The ways the reader's constraints on a field refuse values the writer's allowed."""
    if "enum" in reader:
        dropped = [v for v in writer.get("enum", []) if v not in reader["enum"]]
        if dropped or "enum" not in writer:
            yield f"field '{name}': enum narrowed (no longer accepts {', '.join(map(repr, dropped)) or 'every value it did'})"
    for bound, tighter in (("minimum", lambda r, w: r > w), ("exclusiveMinimum", lambda r, w: r > w),
                           ("minLength", lambda r, w: r > w), ("maximum", lambda r, w: r < w),
                           ("exclusiveMaximum", lambda r, w: r < w), ("maxLength", lambda r, w: r < w)):
        if bound in reader and (bound not in writer or tighter(reader[bound], writer[bound])):
            yield f"field '{name}': {bound} narrowed from {writer.get(bound, 'none')} to {reader[bound]}"
    if "pattern" in reader and reader["pattern"] != writer.get("pattern"):
        yield f"field '{name}': pattern changed from {writer.get('pattern', 'none')!r} to {reader['pattern']!r}"
    if "const" in reader and reader["const"] != writer.get("const", object()):
        yield f"field '{name}': now must equal {reader['const']!r}"


def read_breaks(reader: dict[str, Any], writer: dict[str, Any], reader_is_newer: bool = True) -> list[str]:
    """Why records valid under `writer` may not be read by code built for `reader` (empty: they can).
    A field the writer has and the reader lacks is a removal when the reader is the newer schema
    (consumers lose it); an older reader ignores a newer writer's added fields (the open content
    model) unless it sets additionalProperties to false."""
    r_props, w_props = reader.get("properties", {}), writer.get("properties", {})
    r_required, w_required = set(reader.get("required", [])), set(writer.get("required", []))
    unknown = [n for n in w_props if n not in r_props]
    added = [n for n in r_props if n not in w_props]
    out = []
    for name in unknown:
        if reader_is_newer:
            twin = _twin(w_props[name], {a: r_props[a] for a in added})
            out.append(f"field '{name}' removed" + (f" (renamed to '{twin}'?)" if twin else ""))
        elif reader.get("additionalProperties") is False:
            out.append(f"field '{name}' is unknown to the reader, which refuses additional properties")
    for name in sorted(r_props.keys() & w_props.keys()):
        refused = _accepts(_types(r_props[name]), _types(w_props[name]))
        if refused:
            out.append(f"field '{name}': type changed from {_show(w_props[name])} to {_show(r_props[name])}")
        out.extend(_narrowed(name, r_props[name], w_props[name]))
    for name in sorted(r_required - w_required):
        if "default" not in r_props.get(name, {}):
            before = "absent" if name not in w_props else "optional"
            out.append(f"field '{name}' is required by the reader, with no default, and {before} in the writer's records")
    if not _rules_read(reader, writer):
        out.append("the conditional rules (allOf) changed: not compared automatically, review them")
    return sorted(out)


def _twin(removed: dict[str, Any], added: dict[str, dict[str, Any]]) -> str | None:
    """The added field a removed one was most likely renamed to: the same definition (ignoring
    its description), else the only one of the same type."""
    bare = lambda spec: {k: v for k, v in spec.items() if k != "description"}  # noqa: E731
    same = [name for name, spec in added.items() if bare(spec) == bare(removed)]
    typed = [name for name, spec in added.items() if _types(spec) == _types(removed)]
    return same[0] if same else typed[0] if len(typed) == 1 else None


def _rules_read(reader: dict[str, Any], writer: dict[str, Any]) -> bool:
    """Do the reader's conditional rules accept every record the writer's do? Yes when they are
    the same, when the reader keeps only a prefix of them (fewer rules), or when it only adds
    rules about fields the writer's records do not hold (v2's tip rule, read against v1)."""
    old, new = writer.get("allOf", []), reader.get("allOf", [])
    if new == old[: len(new)]:
        return True
    if new[: len(old)] != old:
        return False
    fields = set(reader.get("properties", {})) - set(writer.get("properties", {}))
    return all(_only_about(rule, fields) for rule in new[len(old):])


def _show(spec: dict[str, Any]) -> str:
    return "|".join(sorted(_types(spec)))


def check(proposed: dict[str, Any], topic: str, mode: Mode | None = None,
          registered: dict[int, dict[str, Any]] | None = None) -> Verdict:
    """The proposed schema against every registered version (the log keeps them all) under the
    topic's mode (or `mode`)."""
    mode = mode or schemas.mode(topic)
    registered = schemas.versions() if registered is None else registered
    found: list[Breaking] = []
    for version, existing in registered.items():
        if mode in (Mode.BACKWARD, Mode.FULL):
            found += [Breaking(version, "backward", c) for c in read_breaks(proposed, existing, reader_is_newer=True)]
        if mode in (Mode.FORWARD, Mode.FULL):
            found += [Breaking(version, "forward", c) for c in read_breaks(existing, proposed, reader_is_newer=False)]
    return Verdict(topic, mode, tuple(registered), tuple(found))


def _only_about(rule: dict[str, Any], fields: set[str]) -> bool:
    """Does the rule constrain only these fields (in its then/else branches)?"""
    constrained = set()
    for branch in ("then", "else"):
        body = rule.get(branch, {})
        constrained |= set(body.get("properties", {})) | set(body.get("required", []))
    return bool(constrained) and constrained <= fields


def load_proposed(path: Path) -> dict[str, Any]:
    """A proposed schema file, or SchemaFileError saying what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SchemaFileError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaFileError(f"{path}: cannot be read ({exc})") from None
    except ValueError as exc:
        raise SchemaFileError(f"{path}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("type") != "object" or not isinstance(data.get("properties"), dict):
        raise SchemaFileError(f"{path}: not an event schema (a JSON Schema object with \"type\": \"object\" and \"properties\")")
    return data
