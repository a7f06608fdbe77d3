"""Per-user data keys, wrapped by the master key, kept in the serving store's `user_keys` table.

Destroying a key (`lklab forget`) is what makes every copy of the user's PII unreadable: the
Kafka log, bronze, silver and snapshots keep their ciphertext, and no key opens it any more."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import Engine, select, update
from sqlalchemy.engine import Connection

from lklab.core.config import Settings
from lklab.core.pii import ForgottenUser, PiiCipher, PiiUnreadable, master_key
from lklab.serving.store import dialect_insert, make_engine, user_keys


class KeyStore:
    """The KeyRing of lklab.core.pii over `user_keys`. A key read is cached for CACHE_S, so a
    long-lived producer stops sealing with a key within that long of its destruction."""

    CACHE_S = 2.0

    def __init__(self, settings: Settings, engine: Engine):
        self._master, self._engine = Fernet(master_key(settings)), engine
        self._cache: dict[str, Fernet | None] = {}
        self._read_at: dict[str, float] = {}

    def _fresh(self, user_id: str) -> bool:
        return user_id in self._cache and time.monotonic() - self._read_at[user_id] < self.CACHE_S

    def _remember(self, user_id: str, key: Fernet | None) -> None:
        self._cache[user_id], self._read_at[user_id] = key, time.monotonic()

    def _held(self, conn: Connection, user_id: str) -> tuple[bool, Fernet | None]:
        row = conn.execute(select(user_keys.c.wrapped_key).where(user_keys.c.user_id == user_id)).first()
        if row is None:
            return False, None
        return True, None if row.wrapped_key is None else Fernet(self._master.decrypt(row.wrapped_key.encode()))

    def sealing(self, user_id: str) -> Fernet | None:
        if not self._fresh(user_id):
            with self._engine.begin() as conn:  # durable before any token it seals reaches Kafka
                if user_id not in self._cache:
                    wrapped = self._master.encrypt(Fernet.generate_key()).decode()
                    stmt = dialect_insert(conn)(user_keys).values(user_id=user_id, wrapped_key=wrapped, created_at=_now())
                    conn.execute(stmt.on_conflict_do_nothing(index_elements=["user_id"]))
                self._remember(user_id, self._held(conn, user_id)[1])
        return self._cache[user_id]

    def opening(self, user_id: str) -> Fernet:
        if not self._fresh(user_id):
            with self._engine.connect() as conn:
                try:
                    held, key = self._held(conn, user_id)
                except InvalidToken:
                    raise PiiUnreadable(f"user {user_id!r}'s data key is not wrapped by this lab's master key") from None
            if not held:
                raise PiiUnreadable(f"user {user_id!r} has no data key: no PII was ever sealed for them")
            self._remember(user_id, key)
        key = self._cache[user_id]
        if key is None:
            raise ForgottenUser(f"user {user_id!r} was forgotten: their data key is destroyed and their PII unreadable")
        return key


def destroy(conn: Connection, user_id: str, at: datetime) -> bool:
    """Destroy the user's data key (keeping the row, so they never get a new one); True if a key was held."""
    held = conn.execute(update(user_keys).where(user_keys.c.user_id == user_id, user_keys.c.wrapped_key.is_not(None))
                        .values(wrapped_key=None, destroyed_at=at)).rowcount
    stmt = dialect_insert(conn)(user_keys).values(user_id=user_id, wrapped_key=None, created_at=at, destroyed_at=at)
    conn.execute(stmt.on_conflict_do_nothing(index_elements=["user_id"]))
    return bool(held)


def cipher(settings: Settings, engine: Engine | None = None) -> PiiCipher:
    """The edge's cipher: each user's PII sealed with their own data key from the serving store."""
    return PiiCipher(settings, KeyStore(settings, engine or make_engine(settings)))


def _now() -> datetime:
    return datetime.now(timezone.utc)
