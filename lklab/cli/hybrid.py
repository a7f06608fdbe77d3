"""`lklab snapshot` and `lklab audit`: the hybrid design's snapshots and audits as-of."""
from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Optional

import typer
from rich.table import Table

from lklab.cli.common import app, console, fail, parse_iso, serving_engine, settings


@app.command()
def snapshot(
    view: Annotated[str, typer.Argument(help="the view to snapshot, or `list`")],
    list_view: Annotated[Optional[str], typer.Argument(help="with `list`: only this view's snapshots")] = None,
    version: Annotated[Optional[int], typer.Option("--version", help="snapshot <view>__v<N> (default: the published version)")] = None,
) -> None:
    """Write an immutable Delta snapshot of a Kappa output's state, with the offsets it is
    consistent with, its logic and schema version, row counts, checksum and git SHA
    (`lklab snapshot list [VIEW]` lists them)."""
    from lklab.engine import snapshots
    from lklab.hybrid.refresh import snapshot_view

    s = settings()
    engine = serving_engine(s)
    if view == "list":
        return print_snapshots(snapshots.listing(engine, list_view))
    try:
        snap = snapshot_view(s, engine, view, version)
    except (snapshots.SnapshotError, LookupError) as exc:
        raise fail(str(exc)) from None
    print_snapshots([snap])


def print_snapshots(found) -> None:
    table = Table(title="snapshots")
    for column in ("id", "of", "created", "offsets", "rows", "logic", "schema", "checksum", "git"):
        table.add_column(column)
    for snap in found:
        table.add_row(snap.snapshot_id, snap.source_output, snap.created_at.isoformat(timespec="seconds"),
                      ",".join(f"{p}:{o}" for p, o in sorted(snap.offsets.items())), f"{snap.row_counts['output']:,}",
                      str(snap.logic_version), str(snap.schema_version), snap.checksum[:12], snap.git_sha[:12])
    console.print(table)


@app.command()
def audit(
    view: Annotated[str, typer.Argument(help="revenue_per_minute | daily_active_users | driver_earnings_daily | user_sessions")],
    key: Annotated[str, typer.Option("--key", help="the entity: city, driver_id or user_id")],
    window: Annotated[str, typer.Option("--window", help="the window start, ISO UTC")],
    as_of: Annotated[str, typer.Option("--as-of", help="the instant to answer for, like 2026-11-17T10:00Z")],
    arch: Annotated[str, typer.Option("--arch", help="lambda (the merge behind lambda@batch) or kappa (the view's alias)")] = "lambda",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """What a view served for one key and window at a past instant, from which publish, build,
    code version and input offsets (Delta time travel on the recorded versions)."""
    from lklab.hybrid import audit as au

    s = settings()
    when, start = parse_iso(as_of, "--as-of"), parse_iso(window, "--window")
    try:
        found = au.answer(s, serving_engine(s), None, view, key, start, when, arch)
    except au.AuditError as exc:
        raise fail(str(exc)) from None
    body = {"view": view, "arch": found.arch, "key": key, "window": start.isoformat(), "as_of": when.isoformat(),
            "value": found.value, "found": found.found, "served_from": found.served_from, "note": found.note,
            "publish": {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in found.publish.items()},
            "lineage": found.lineage}
    if as_json:
        print(json.dumps(body, indent=2, default=str))
        return
    pub = found.publish
    console.print(f"{view} {key} {start.isoformat()} as of {when.isoformat()}: [bold]{found.value}[/bold]"
                  f"{f'  ({found.note})' if found.note else ''}", highlight=False, soft_wrap=True)
    console.print(f"served from {found.served_from}; published {pub['at'].isoformat()} by {pub['who']} ({pub['action']} "
                  f"{pub['from_target']} → {pub['target']}: {pub['why']})", highlight=False, soft_wrap=True)
    lineage = found.lineage
    console.print(f"git {lineage.get('git_sha')}, logic v{lineage.get('logic_version')}, schema v{lineage.get('schema_version')}, "
                  f"input offsets {lineage.get('offsets') or lineage.get('target_offsets')}", highlight=False, soft_wrap=True)
