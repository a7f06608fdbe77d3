"""The event schema registry, kept in the repo: lklab/schemas/event.v<N>.json, one file per
version, and compatibility.json, the compatibility mode per topic (Confluent Schema Registry's
modes; BACKWARD unless a topic names another).

A new version is a code change: its file is added here after `lklab schema check` accepts it
(lklab.evolution.compatibility). Every registered version is read forever: a record is validated
against the version its `schema_version` names (records of a version newer than the newest
registered one against the newest, their unknown fields ignored).
"""
from __future__ import annotations

import json
import re
from enum import StrEnum
from functools import lru_cache
from importlib import resources
from typing import Any

SUBJECT = "event"
_FILE = re.compile(rf"^{SUBJECT}\.v(\d+)\.json$")


class Mode(StrEnum):
    """Who may upgrade first. BACKWARD: consumers (the new schema reads every older version's
    data); FORWARD: producers (every older schema reads the new data); FULL: both; NONE: no check.
    The *_TRANSITIVE spellings are accepted and mean the same here: lklab always checks against
    every registered version, because the log and the lake keep every version's records."""

    BACKWARD = "BACKWARD"
    FORWARD = "FORWARD"
    FULL = "FULL"
    NONE = "NONE"

    @classmethod
    def parse(cls, text: str) -> Mode:
        name = text.strip().upper().removesuffix("_TRANSITIVE")
        try:
            return cls(name)
        except ValueError:
            raise ValueError(f"unknown compatibility mode {text!r}; one of: {', '.join(m.value for m in cls)} "
                             "(optionally _TRANSITIVE)") from None


def _files() -> resources.abc.Traversable:
    return resources.files("lklab.schemas")


@lru_cache(maxsize=1)
def versions() -> dict[int, dict[str, Any]]:
    """Every registered version, oldest first: {version: JSON Schema}."""
    found = {}
    for entry in _files().iterdir():
        match = _FILE.match(entry.name)
        if match:
            found[int(match.group(1))] = json.loads(entry.read_text(encoding="utf-8"))
    return dict(sorted(found.items()))


def latest() -> int:
    return max(versions())


def schema(version: int | None = None) -> dict[str, Any]:
    """The JSON Schema of `version` (None: the newest); a version past the newest reads as the newest."""
    registered = versions()
    return registered[latest() if version is None else min(max(version, min(registered)), latest())]


def mode(topic: str) -> Mode:
    """The topic's compatibility mode (compatibility.json: a default and per-topic overrides)."""
    config = json.loads(_files().joinpath("compatibility.json").read_text(encoding="utf-8"))
    return Mode.parse(config.get("topics", {}).get(topic, config["default"]))


def defaults(version: int) -> dict[str, Any]:
    """The fields `version` does not have that a newer version adds, with their defaults: what a
    reader fills in for a record of `version`."""
    own = schema(version)["properties"]
    newest = schema()["properties"]
    return {name: spec["default"] for name, spec in newest.items() if name not in own and "default" in spec}
