"""Deletion requests (`deletion_requests`) and the tombstone list they make: every user with a
request is forgotten for good, and every fold (speed, Kappa replay, batch) drops them from the
views keyed by the user, so no replay brings them back."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from pydantic import BaseModel
from sqlalchemy import Engine, select, update
from sqlalchemy.engine import Connection

from lklab.privacy.keys import destroy
from lklab.core.config import Settings
from lklab.serving.store import deletion_requests, dialect_insert, make_engine

DEFAULT_DEADLINE = timedelta(days=7)


class DeletionRequest(BaseModel):
    """One row of `deletion_requests`."""

    user_id: str
    why: str
    requested_at: datetime
    deadline: datetime
    purged_at: datetime | None = None
    report: dict[str, Any] | None = None

    @property
    def pending(self) -> bool:
        return self.purged_at is None


def record(engine: Engine, user_id: str, why: str, within: timedelta = DEFAULT_DEADLINE,
           now: datetime | None = None) -> tuple[DeletionRequest, bool]:
    """Record the request (a repeated one keeps its first deadline) and destroy the user's data key,
    in one transaction. Returns the request and whether a key was destroyed now."""
    now = now or datetime.now(timezone.utc)
    with engine.begin() as conn:
        stmt = dialect_insert(conn)(deletion_requests).values(user_id=user_id, why=why, requested_at=now, deadline=now + within)
        conn.execute(stmt.on_conflict_do_nothing(index_elements=["user_id"]))
        destroyed = destroy(conn, user_id, now)
        return _one(conn, user_id), destroyed


def _one(conn: Connection, user_id: str) -> DeletionRequest:
    row = conn.execute(select(deletion_requests).where(deletion_requests.c.user_id == user_id)).one()
    return DeletionRequest.model_validate(row._asdict())


def find(engine: Engine, user_id: str) -> DeletionRequest | None:
    with engine.connect() as conn:
        row = conn.execute(select(deletion_requests).where(deletion_requests.c.user_id == user_id)).first()
    return None if row is None else DeletionRequest.model_validate(row._asdict())


def listing(engine: Engine, pending_only: bool = False) -> list[DeletionRequest]:
    query = select(deletion_requests).order_by(deletion_requests.c.deadline, deletion_requests.c.user_id)
    if pending_only:
        query = query.where(deletion_requests.c.purged_at.is_(None))
    with engine.connect() as conn:
        return [DeletionRequest.model_validate(row._asdict()) for row in conn.execute(query)]


def forgotten(conn: Connection) -> frozenset[str]:
    """The tombstone list: every user with a deletion request."""
    return frozenset(conn.execute(select(deletion_requests.c.user_id)).scalars())


def forgotten_users(engine: Engine) -> frozenset[str]:
    with engine.connect() as conn:
        return forgotten(conn)


def tombstones(settings: Settings) -> frozenset[str]:
    """The tombstone list, read from the configured serving store (for a Spark job's filter)."""
    engine = make_engine(settings)
    try:
        return forgotten_users(engine)
    finally:
        engine.dispose()


def mark_purged(engine: Engine, user_id: str, report: dict[str, Any], clean: bool, now: datetime | None = None) -> None:
    """Store the purge's report; `clean` (every store found clean) closes the request."""
    values: dict[str, Any] = {"report": report}
    if clean:
        values["purged_at"] = now or datetime.now(timezone.utc)
    with engine.begin() as conn:
        conn.execute(update(deletion_requests).where(deletion_requests.c.user_id == user_id).values(**values))
