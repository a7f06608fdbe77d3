"""`lklab forget status`: store by store, what of one user is still stored and what is still readable.

The log tiers (Kafka, its dead letters, bronze, silver) keep the user's events: they are immutable,
and the aggregates that hold no personal data are built from them. What must be unreadable there
is the PII, which only the user's destroyed data key opened. The derived stores hold rows keyed by
the user: there any row is still personal data, so the count must be 0."""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Engine, func, select

from lklab.core.config import Settings
from lklab.core.pii import PiiCipher, PiiUnreadable
from lklab.deletion.outputs import keyed_by_user, owner, user_keyed_specs
from lklab.engine import snapshots
from lklab.evolution import history
from lklab.log.produce import read_dead_letters
from lklab.privacy import keys
from lklab.serving.store import session_rows, speed_contrib

LOG_TIERS = ("kafka", "dead letters", "bronze", "silver")
DERIVED = ("gold", "snapshots", "speed state", "kappa outputs", "serving (batch builds)")


@dataclass
class Finding:
    store: str
    rows: int = 0  # the user's records or rows held there
    pii: int = 0  # PII values held (sealed)
    readable: int = 0  # PII values that still open, or (derived stores) rows keyed by the user
    note: str = ""
    error: str = ""  # the store could not be read: nothing is known about it

    @property
    def clean(self) -> bool:
        return not self.error and self.readable == 0


def scan(settings: Settings, engine: Engine, user_id: str) -> list[Finding]:
    """Every store, in the order data flows: log tiers, lake, snapshots, serving. A store that
    cannot be read is reported as such (never clean), and the others are still scanned."""
    cipher = keys.cipher(settings, engine)
    readers = [
        ("kafka", lambda: _events("kafka", (v for _, v in history.kafka_records(settings)), user_id, cipher)),
        ("dead letters", lambda: _events("dead letters", _dead_letter_lines(settings), user_id, cipher)),
        ("bronze", lambda: _events("bronze", (v for _, v in history.bronze_records(settings)), user_id, cipher)),
        ("silver", lambda: _silver(settings, user_id, cipher)),
        ("gold", lambda: _gold(settings, user_id)),
        ("snapshots", lambda: _snapshots(engine, user_id)),
    ]
    return [_guarded(store, read) for store, read in readers] + _serving(engine, user_id)


def _guarded(store: str, read) -> Finding:
    try:
        return read()
    except Exception as exc:  # noqa: BLE001 - one store unreadable: say so on its line, scan the rest
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        return Finding(store, error=first)


def _dead_letter_lines(settings: Settings) -> Iterator[bytes]:
    for letter in read_dead_letters(settings):  # a failure is the store's error line (scan's _guarded)
        yield str(letter.get("raw", "")).encode("utf-8", "surrogateescape")


def _events(store: str, values: Iterable[bytes | None], user_id: str, cipher: PiiCipher) -> Finding:
    finding = Finding(store)
    for value in values:
        try:
            data = json.loads(value) if value else None
        except ValueError:
            continue  # not an event: the log's own readers dead-letter it
        if isinstance(data, dict) and data.get("user_id") == user_id:
            _count(finding, user_id, data.get("pii"), cipher)
    return finding


def _count(finding: Finding, user_id: str, pii, cipher: PiiCipher) -> None:
    finding.rows += 1
    if pii is None:
        return
    finding.pii += 1
    try:
        cipher.open(user_id, pii)
        finding.readable += 1
    except PiiUnreadable:
        pass


def delta_rows(location: str, column: str, user_id: str, columns: list[str]) -> list[dict] | None:
    """The rows of a Delta table whose `column` is the user (compared in Arrow, no SQL); None: no table.
    Read whole and cast: files written by Spark and by deltalake hold strings as string or
    string_view, which a dataset filter will not compare with each other."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(location).to_pyarrow_table(columns=sorted({column, *columns}))
    except TableNotFoundError:
        return None
    return table.filter(pc.equal(table[column].cast(pa.string()), user_id)).select(columns).to_pylist()


def _silver(settings: Settings, user_id: str, cipher: PiiCipher) -> Finding:
    from lklab.lake.tables import SILVER, path

    finding = Finding("silver")
    for row in delta_rows(path(settings, SILVER), "user_id", user_id, ["pii"]) or []:
        _count(finding, user_id, row["pii"], cipher)
    return finding


def _gold(settings: Settings, user_id: str) -> Finding:
    from lklab.lake.tables import gold_table, path

    finding = Finding("gold")
    for spec in user_keyed_specs():
        rows = delta_rows(path(settings, gold_table(spec.name)), spec.entity, user_id, [spec.entity]) or []
        finding.rows += len(rows)
    finding.readable = finding.rows
    return finding


def _snapshots(engine: Engine, user_id: str) -> Finding:
    finding = Finding("snapshots")
    held = [snap for spec in user_keyed_specs() for snap in snapshots.listing(engine, spec.name)]
    for snap in held:
        if snap.redacted_at is None:
            finding.rows += snapshot_rows(snap, user_id)
    finding.readable = finding.rows
    redacted = sum(snap.redacted_at is not None for snap in held)
    finding.note = f"{redacted} of {len(held)} redacted" if redacted else ""
    return finding


def snapshot_rows(snap: snapshots.Snapshot, user_id: str) -> int:
    """The user's rows in a snapshot's pieces keyed by entity: the held contributions and the output."""
    return sum(len(delta_rows(snap.piece_location(piece), "entity", user_id, ["entity"]) or []) for piece in ("contrib", "output"))


def _serving(engine: Engine, user_id: str) -> list[Finding]:
    """Session rows and the speed/Kappa state of views keyed by the user, by the store that owns them."""
    found = {store: Finding(store) for store in ("speed state", "kappa outputs", "serving (batch builds)")}
    with engine.connect() as conn:
        rows = conn.execute(select(session_rows.c.view, func.count()).where(session_rows.c.user_id == user_id)
                            .group_by(session_rows.c.view)).all()
        state = conn.execute(select(speed_contrib.c.view, func.count()).where(speed_contrib.c.entity == user_id)
                             .group_by(speed_contrib.c.view)).all()
    for output, count in [*rows, *state]:
        if keyed_by_user(output):
            found[owner(output)].rows += count
    for finding in found.values():
        finding.readable = finding.rows
    return list(found.values())
