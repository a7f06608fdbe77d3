"""`lklab query` and `lklab serve`: views as readers see them (Lambda merge or Kappa alias)."""
from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from lklab.cli.common import blocked_line, app, console, err, fail, parse_iso, policy_line, refuse_stale, serving_engine, settings


@app.command()
def query(
    view: Annotated[str, typer.Argument(help="revenue_per_minute | daily_active_users | driver_earnings_daily | user_sessions")],
    key: Annotated[Optional[str], typer.Option("--key", "--city", "--driver", help="only this key: city, driver_id or user_id")] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="window start ≥ this ISO time")] = None,
    to: Annotated[Optional[str], typer.Option("--to", help="window start < this ISO time")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    arch: Annotated[str, typer.Option("--arch", help="lambda (merged batch+speed) or kappa (the published version)")] = "lambda",
) -> None:
    """A view as readers see it: Lambda (batch rows for windows final at T, speed for the rest) or
    Kappa (the version the alias points at, with its freshness). A stale answer is flagged, or
    refused with exit 3 when the view's reader policy is error (LKLAB_READER_POLICY[_VIEWS])."""
    from lklab import views
    from lklab.core.staleness import StaleAnswer
    from lklab.kappa import query as kappa
    from lklab.lambda_arch import merge
    from lklab.lambda_arch.builds import batch_views

    if arch not in ("lambda", "kappa"):
        raise fail(f"--arch {arch!r}: one of lambda, kappa")
    if view not in views.VIEWS:
        raise fail(f"unknown view {view!r} for --arch {arch}; one of: {', '.join(views.VIEWS)}")
    start, end = parse_iso(from_, "--from"), parse_iso(to, "--to")
    if start and end and start >= end:
        raise fail(f"--from {from_} is not before --to {to}")
    s = settings()
    try:
        built = batch_views(s)
    except ValueError as exc:
        raise fail(str(exc)) from None
    if arch == "lambda" and view not in built:
        raise fail(f"{view} is not built by this lab's batch layer (LKLAB_BATCH_VIEWS: {', '.join(built)}); try --arch kappa")
    engine = serving_engine(s)
    try:
        answer = (kappa.serve(s, engine, view, key, start, end) if arch == "kappa"
                  else merge.serve(engine, s, view, key, start, end))
    except StaleAnswer as exc:
        raise refuse_stale(exc) from None
    if arch == "kappa":  # JSON only: a Kappa answer is one version's rows plus its freshness
        print(json.dumps(kappa.answer_json(answer), indent=2))
        return
    if as_json:
        print(json.dumps(merge.answer_json(answer), indent=2))
        return
    print_answer(answer)


def print_answer(answer) -> None:
    """A merged answer as a table, with its stale and blocked-batch notes on stderr."""
    from lklab import views

    spec = views.view(answer.view)
    if answer.stale:
        err.print(f"[yellow]stale:[/yellow] {answer.stale_reason}; serving batch-only")
    if answer.batch_blocked:
        err.print(f"[yellow]batch blocked:[/yellow] {blocked_line(answer.batch_blocked)}; {policy_line(answer)}", highlight=False)
    build = f"T = {answer.T.isoformat()}, build {answer.build_id}" if answer.build_id else "no promoted batch build yet"
    table = Table(title=f"{answer.view} ({build}, mode {answer.mode})")
    for column in (spec.entity, "window_start", *spec.value_columns, "source"):
        table.add_column(column)
    for r in answer.rows:
        row = spec.measure.row_json(spec, r.entity, r.window_start, r.value)
        table.add_row(r.entity, r.window_start.isoformat(), *(str(row[c]) for c in spec.value_columns),
                      r.source + (" (diverged)" if r.diverged else "") + (" (left to batch)" if r.left_to_batch else ""))
    console.print(table)


@app.command()
def serve(
    port: Annotated[int, typer.Option(min=1, max=65535, help="port on 127.0.0.1")] = 8000,
    host: Annotated[str, typer.Option(help="bind address; anything but loopback needs a bearer token (LKLAB_API_TOKEN)")] = "127.0.0.1",
) -> None:
    """The read-only HTTP JSON query API (see README, Query API). On a non-loopback address it
    refuses to start unless LKLAB_API_TOKEN is set, and then every request needs that bearer token."""
    import uvicorn

    from lklab.api.app import create_app, serve_refusal
    from lklab.serving.migrations import StoreSchemaError

    s = settings()
    try:
        refusal = serve_refusal(host, s)
        if refusal:
            raise fail(refusal)
        api = create_app(s)
    except (StoreSchemaError, ValueError) as exc:
        raise fail(str(exc)) from None
    uvicorn.run(api, host=host, port=port, log_level="warning")
