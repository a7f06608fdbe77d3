"""Every drill, registered by importing its module, in the order `lklab drill list` shows them;
and the lookups the CLI and the report use."""
from __future__ import annotations

from lklab.drills import crash_loop, divergence, late_storm, sink, partial_write, sessionization, schema_evolution, deletion  # noqa: F401, I001 - each registers its drill, in the issue's order
from lklab.drills.registry import DRILLS, Drill, DrillError


def drill(name: str) -> Drill:
    try:
        return DRILLS[name]
    except KeyError:
        raise DrillError(f"unknown drill {name!r}; one of: {', '.join(DRILLS)}") from None


def all_drills() -> list[Drill]:
    return list(DRILLS.values())
