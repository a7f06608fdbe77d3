"""Per-user data keys, wrapped by the master key, kept in the serving store's `user_keys` table.

Destroying a key (`lklab forget`) is what makes every copy of the user's PII unreadable: the
Kafka log, bronze, silver and snapshots keep their ciphertext, and no key opens it any more."""
from __future__ import annotations

from datetime import datetime, timezone

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy import Engine, select, update
from sqlalchemy.engine import Connection

from lklab.core.config import Settings
from lklab.core.pii import ForgottenUser, PiiCipher, PiiUnreadable, master_key
from lklab.serving.store import dialect_insert, make_engine, user_keys


class KeyStore:
    """The KeyRing of lklab.core.pii over `user_keys`. Keys are cached for the life of the object
    (one import, one scan): a key destroyed meanwhile is still held here until it ends."""

    def __init__(self, settings: Settings, engine: Engine):
        self._master, self._engine = Fernet(master_key(settings)), engine
        self._cache: dict[str, Fernet | None] = {}

    def _held(self, conn: Connection, user_id: str) -> tuple[bool, Fernet | None]:
        row = conn.execute(select(user_keys.c.wrapped_key).where(user_keys.c.user_id == user_id)).first()
        if row is None:
            return False, None
        return True, None if row.wrapped_key is None else Fernet(self._master.decrypt(row.wrapped_key.encode()))

    def sealing(self, user_id: str) -> Fernet | None:
        if user_id not in self._cache:
            wrapped = self._master.encrypt(Fernet.generate_key()).decode()
            with self._engine.begin() as conn:  # durable before any token it seals reaches Kafka
                stmt = dialect_insert(conn)(user_keys).values(user_id=user_id, wrapped_key=wrapped, created_at=_now())
                conn.execute(stmt.on_conflict_do_nothing(index_elements=["user_id"]))
                self._cache[user_id] = self._held(conn, user_id)[1]
        return self._cache[user_id]

    def opening(self, user_id: str) -> Fernet:
        if user_id not in self._cache:
            with self._engine.connect() as conn:
                try:
                    held, key = self._held(conn, user_id)
                except InvalidToken:
                    raise PiiUnreadable(f"user {user_id!r}'s data key is not wrapped by this lab's master key") from None
            if not held:
                raise PiiUnreadable(f"user {user_id!r} has no data key: no PII was ever sealed for them")
            self._cache[user_id] = key
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
