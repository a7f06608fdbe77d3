"""`lklab schema list|check|verify-history`: the event schema registry (lklab.core.schemas), the
compatibility of a proposed version, and whether the current code reads the whole history."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lklab.cli.common import console, fail, schema_app, settings

BREAKING = 1  # `schema check`: incompatible; `verify-history`: records the current code cannot read


@schema_app.command("list")
def schema_list() -> None:
    """The registered versions, their fields, and the compatibility mode of the topic."""
    from lklab.core import schemas

    s = settings()
    table = Table("version", "fields", "added since the previous version (default)")
    previous: dict = {}
    for version, body in schemas.versions().items():
        props = body["properties"]
        added = [f"{name} ({props[name].get('default', 'required' if name in body.get('required', []) else 'optional')})"
                 for name in props if name not in previous] if previous else ["(first version)"]
        table.add_row(f"v{version}", str(len(props)), escape(", ".join(added)))
        previous = props
    console.print(table)
    console.print(f"topic {s.topic}: compatibility {schemas.mode(s.topic).value} (checked against every registered version)",
                  highlight=False)


@schema_app.command("check")
def schema_check(
    file: Annotated[Path, typer.Argument(help="the proposed JSON Schema of the event")],
    topic: Annotated[Optional[str], typer.Option(help="the topic whose mode applies (default: LKLAB_TOPIC)")] = None,
    mode: Annotated[Optional[str], typer.Option(help="override the topic's mode: BACKWARD, FORWARD, FULL or NONE")] = None,
) -> None:
    """Test a proposed schema against every registered version under the topic's compatibility
    mode: one line per breaking change; exit 1 if there is any, 0 if it is compatible."""
    from lklab.core.schemas import Mode
    from lklab.evolution.compatibility import SchemaFileError, check, load_proposed

    s = settings()
    try:
        chosen = None if mode is None else Mode.parse(mode)
        proposed = load_proposed(file)
    except (SchemaFileError, ValueError) as exc:
        raise fail(str(exc)) from None
    verdict = check(proposed, topic or s.topic, chosen)
    against = ", ".join(f"v{v}" for v in verdict.checked)
    if verdict.compatible:
        console.print(f"compatible: {file} under {verdict.mode.value} against {against} (topic {verdict.topic})", highlight=False)
        return
    for item in verdict.breaking:
        console.print(escape(str(item)), highlight=False, soft_wrap=True)
    console.print(f"incompatible: {len(verdict.breaking)} breaking changes under {verdict.mode.value} against {against} "
                  f"(topic {verdict.topic})", highlight=False)
    raise typer.Exit(code=BREAKING)


@schema_app.command("verify-history")
def schema_verify_history(
    bronze: Annotated[bool, typer.Option("--bronze/--no-bronze", help="also read bronze (the lake's copy, past Kafka's retention)")] = True,
    limit: Annotated[int, typer.Option(min=0, help="unreadable records listed (all are counted)")] = 50,
) -> None:
    """Decode every record of the log (Kafka and bronze) with the current consumer code; report each
    record it cannot read with its partition and offset. Exit 1 if any (records a consumer already
    dead-lettered on arrival are listed but do not count)."""
    from lklab.evolution import history

    s = settings()
    try:
        report = history.verify_history(s, bronze=bronze)
    except history.HistoryError as exc:
        raise fail(str(exc)) from None
    for line in history.gate_lines(report, limit):
        console.print(escape(line), highlight=False, soft_wrap=True)
    if report.defaulted:
        console.print("read with defaults (older versions): " + ", ".join(f"{k}: {n:,} records" for k, n in sorted(report.defaulted.items())),
                      highlight=False)
    if not report.readable:
        raise typer.Exit(code=BREAKING)
