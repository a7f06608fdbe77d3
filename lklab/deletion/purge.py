"""What `lklab forget` does after it destroys the user's key: purge the rows keyed by the user from
every store that derives them, and check the result store by store (lklab.deletion.scan).

- Serving store: the user's session rows (speed, batch builds, Kappa outputs) and the held state
  of views keyed by the user. At once, on `forget`: cheap, and readers see them gone.
- Lake: Delta DELETE of the user's rows in gold views keyed by the user; in silver the events stay
  (aggregates are built from them) and their `pii` is set to NULL. Both tables are then VACUUMed
  with zero retention, so no earlier version (time travel) still holds the rows. Done under the
  lab's batch lock, so no `lklab batch` writes those tables meanwhile.
- Snapshots of views keyed by the user that hold the user are retired: files deleted, catalog row
  kept with `redacted_at`, so they never load again and audits of them answer "redacted".
- Kafka, its dead letters and bronze are immutable: the destroyed key is their deletion."""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Engine, and_, select, update

from lklab.core.config import Settings
from lklab.core.locks import BATCH_LOCK, LockBusy, file_lock
from lklab.deletion.outputs import keyed_by_user, owner, user_keyed_specs
from lklab.deletion.scan import Finding, scan, snapshot_rows
from lklab.engine import snapshots
from lklab.privacy import requests
from lklab.serving.store import session_rows, speed_contrib, view_snapshots

LAKE_LOCK_WAIT_S = 600.0
Step = Callable[[str], None]


@dataclass
class Purge:
    user_id: str
    removed: dict[str, int] = field(default_factory=dict)  # store -> rows deleted (or values redacted)
    findings: list[Finding] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return all(f.clean for f in self.findings)


def purge_serving(engine: Engine, user_id: str) -> dict[str, int]:
    """Delete the user's rows of views keyed by the user from the serving store, in one transaction."""
    removed: dict[str, int] = {}
    with engine.begin() as conn:
        for table, column in ((session_rows, session_rows.c.user_id), (speed_contrib, speed_contrib.c.entity)):
            outputs = [o for o in conn.execute(select(table.c.view).where(column == user_id).distinct()).scalars() if keyed_by_user(o)]
            for output in outputs:
                count = conn.execute(table.delete().where(and_(table.c.view == output, column == user_id))).rowcount
                removed[owner(output)] = removed.get(owner(output), 0) + count
    return removed


def _sql_string(value: str) -> str:
    """A SQL string literal for a Delta predicate (deltalake takes no bound parameters): quotes doubled."""
    return "'" + value.replace("'", "''") + "'"


def _delta(location: str):
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        return DeltaTable(location)
    except TableNotFoundError:
        return None


def _vacuum(table) -> None:
    table.vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)


class PurgeError(RuntimeError):
    """A store could not be purged; the message is one line naming it. The request stays pending."""


def purge_lake(settings: Settings, user_id: str) -> dict[str, int]:
    """Gold rows keyed by the user deleted, silver's PII of the user nulled, both vacuumed."""
    from deltalake.exceptions import DeltaError

    try:
        return _purge_lake(settings, user_id)
    except (DeltaError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise PurgeError(f"the lake at {settings.lake_root} could not be purged ({first}); the request stays pending: "
                         "`lklab forget process` retries it") from None


def _purge_lake(settings: Settings, user_id: str) -> dict[str, int]:
    from lklab.lake.tables import SILVER, gold_table, path

    is_user = lambda column: f"{column} = {_sql_string(user_id)}"  # noqa: E731
    removed = {"gold": 0, "silver": 0}
    for spec in user_keyed_specs():
        table = _delta(path(settings, gold_table(spec.name)))
        if table is not None and (count := int(table.delete(is_user(spec.entity))["num_deleted_rows"])):
            removed["gold"] += count
            _vacuum(table)
    silver = _delta(path(settings, SILVER))
    if silver is not None:
        count = int(silver.update(updates={"pii": "CAST(NULL AS STRING)"}, predicate=f"{is_user('user_id')} AND pii IS NOT NULL")["num_updated_rows"])
        if count:
            removed["silver"] = count
            _vacuum(silver)
    return removed


def redact_snapshots(engine: Engine, user_id: str, now: datetime) -> int:
    """Retire every snapshot of a view keyed by the user that holds the user's rows."""
    retired = 0
    for spec in user_keyed_specs():
        for snap in snapshots.listing(engine, spec.name):
            if snap.redacted_at is None and snapshot_rows(snap, user_id):
                shutil.rmtree(Path(snap.location.removeprefix("file://")), ignore_errors=True)
                with engine.begin() as conn:
                    conn.execute(update(view_snapshots).where(view_snapshots.c.snapshot_id == snap.snapshot_id).values(redacted_at=now))
                retired += 1
    return retired


def purge(settings: Settings, engine: Engine, user_id: str, on_step: Step | None = None) -> Purge:
    """Every store purged of the user, then scanned; the request is closed if all are clean.
    `on_step(name)` is called as each step ends: serving, snapshots, lake lock (the batch lock
    taken: a running batch ends first), lake, scan. The quick steps go first."""
    step = on_step or (lambda _name: None)
    done = Purge(user_id, removed=purge_serving(engine, user_id))
    step("serving")
    done.removed["snapshots"] = redact_snapshots(engine, user_id, datetime.now(timezone.utc))
    step("snapshots")
    settings.home.mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(settings.home / BATCH_LOCK, time.monotonic() + LAKE_LOCK_WAIT_S):
            step("lake lock")  # a running `lklab batch` finishes first
            done.removed.update(purge_lake(settings, user_id))
    except LockBusy:
        raise PurgeError(f"a `lklab batch` held the lab's batch lock for {LAKE_LOCK_WAIT_S:.0f} s; the lake was not purged and "
                         "the request stays pending: `lklab forget process` retries it") from None
    step("lake")
    done.removed.update({k: v + done.removed.get(k, 0) for k, v in purge_serving(engine, user_id).items()})  # a fold in flight
    done.findings = scan(settings, engine, user_id)
    requests.mark_purged(engine, user_id, {k: v for k, v in done.removed.items() if v}, done.clean)
    step("scan")
    return done


def forget(settings: Settings, engine: Engine, user_id: str, why: str, within: timedelta = requests.DEFAULT_DEADLINE,
           on_step: Step | None = None) -> tuple[requests.DeletionRequest, bool, Purge]:
    """`lklab forget`: record the request and destroy the key (step "key"), then purge (see purge)."""
    request, destroyed = requests.record(engine, user_id, why, within)
    (on_step or (lambda _name: None))("key")
    return request, destroyed, purge(settings, engine, user_id, on_step)


def process_pending(settings: Settings, engine: Engine) -> list[Purge]:
    """Purge every request not yet found clean (what the Dagster asset runs)."""
    return [purge(settings, engine, request.user_id) for request in requests.listing(engine, pending_only=True)]
