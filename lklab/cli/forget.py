"""`lklab forget`: deletion requests. `forget USER --why …` destroys the user's data key at once
(every copy of their PII becomes unreadable) and purges what is derived from them; `forget status
USER` shows, store by store, what of them is still readable; `forget list` the requests;
`forget process` re-runs the purge of every request not yet found clean (the Dagster asset does too)."""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from lklab.cli.common import app, console, fail, serving_engine, settings, show

NOT_CLEAN = 1  # `forget status`: something of the user is still readable


@app.command(context_settings={"help_option_names": ["-h", "--help"]})
def forget(
    words: Annotated[Optional[list[str]], typer.Argument(help="USER; or `status USER`; or `list`; or `process`",
                                                          show_default=False)] = None,
    why: Annotated[Optional[str], typer.Option(help="the reason, kept with the request (required to forget)")] = None,
    days: Annotated[int, typer.Option(min=1, max=30, help="the deadline, in days from now")] = 7,
    user: Annotated[Optional[str], typer.Option(help="the user to forget, when it is literally 'status', 'list' or 'process'")] = None,
) -> None:
    """Forget a user (crypto-shredding): destroy their data key, purge derived rows, show what remains."""
    words = list(words or [])
    if user is not None:
        if words:
            raise fail(f"--user {user!r} and {' '.join(words)!r}: give the user one way")
        return _forget(user, why, days)
    if words[:1] == ["status"] and len(words) == 2:
        return _status(words[1])
    if words == ["list"]:
        return _list()
    if words == ["process"]:
        return _process()
    if len(words) == 1:
        return _forget(words[0], why, days)
    raise fail("usage: lklab forget USER --why TEXT | lklab forget status USER | lklab forget list | lklab forget process")


def _user(user_id: str) -> str:
    from lklab.core.pii import names_a_user

    if not names_a_user(user_id):
        raise fail(f"user {user_id!r}: a user_id is 1 to 128 characters")
    return user_id


def _forget(user_id: str, why: Optional[str], days: int) -> None:
    from lklab.deletion.purge import PurgeError
    from lklab.deletion.purge import forget as forget_user

    user_id = _user(user_id)
    if not why or not why.strip():
        raise fail("--why is required: the reason is kept with the request (e.g. --why 'GDPR art. 17, ticket 4711')")
    s = settings()
    started, steps = time.monotonic(), {}
    try:
        request, destroyed, done = forget_user(s, serving_engine(s), user_id, why.strip(), timedelta(days=days),
                                               on_step=lambda name: steps.setdefault(name, time.monotonic() - started))
    except PurgeError as exc:
        raise fail(f"{user_id}: the data key is destroyed, but {exc}") from None
    removed = ", ".join(f"{store} {count}" for store, count in done.removed.items() if count) or "nothing derived was held"
    console.print(f"forgot {escape(user_id)}: data key {'destroyed' if destroyed else 'already destroyed or never made'}; "
                  f"removed: {escape(removed)}; deadline {show(request.deadline)}", highlight=False)
    console.print("done after: " + ", ".join(f"{name} {at:.2f} s" for name, at in steps.items()), highlight=False)
    if not _show(done.findings, user_id):
        raise typer.Exit(NOT_CLEAN)


def _status(user_id: str) -> None:
    from lklab.deletion.scan import scan
    from lklab.privacy import requests

    user_id = _user(user_id)
    s = settings()
    engine = serving_engine(s)
    request = requests.find(engine, user_id)
    console.print(f"{escape(user_id)}: " + ("no deletion request" if request is None else
                  f"requested {show(request.requested_at)}, deadline {show(request.deadline)}, "
                  f"{'purged ' + show(request.purged_at) if request.purged_at else 'purge pending'}"), highlight=False)
    if not _show(scan(s, engine, user_id), user_id):
        raise typer.Exit(NOT_CLEAN)


def _show(findings, user_id: str) -> bool:
    table = Table("store", "user's rows", "PII sealed", "still readable", "state")
    for f in findings:
        state = f"unreadable: {f.error}" if f.error else ("clean" if f.clean else "READABLE")
        table.add_row(f.store, str(f.rows), str(f.pii), str(f.readable), escape(f"{state}{'; ' + f.note if f.note else ''}"))
    console.print(table)
    clean = all(f.clean for f in findings)
    console.print(f"{escape(user_id)}: " + ("nothing readable in any store" if clean else "something is still readable or unknown"),
                  highlight=False)
    return clean


def _list() -> None:
    from lklab.privacy import requests

    now = datetime.now(timezone.utc)
    table = Table("user", "requested", "deadline", "left", "state", "why")
    for r in requests.listing(serving_engine(settings())):
        left = r.deadline - now
        table.add_row(escape(r.user_id), show(r.requested_at), show(r.deadline), f"{left.total_seconds() / 86400:.1f} d",
                      "purged " + show(r.purged_at) if r.purged_at else "pending", escape(r.why))
    console.print(table)


def _process() -> None:
    from lklab.deletion.purge import PurgeError, process_pending

    s = settings()
    try:
        done = process_pending(s, serving_engine(s))
    except PurgeError as exc:
        raise fail(str(exc)) from None
    for purge in done:
        console.print(f"{escape(purge.user_id)}: {'clean' if purge.clean else 'still pending'}; removed {purge.removed}", highlight=False)
    console.print(f"{len(done)} pending requests processed", highlight=False)
