"""PII is encrypted at the edge (before it reaches the log) with Fernet, one data key per user;
plaintext is never stored."""
from __future__ import annotations

import json
import os
from typing import Any, Protocol

from cryptography.fernet import Fernet, InvalidToken

from lklab.core.config import Settings

PII_KEY = '"pii"'  # how a JSON line names its PII (the event's `pii` field)
CUT = '"pii": … (cut: the line is not a JSON object, so its PII could not be sealed)'
WITHHELD = "field 'pii' (or a field inside it) is not valid; the value is withheld, as it may be PII"


class PiiUnreadable(ValueError):
    """A `pii` value that cannot be opened; the message is one line."""


class ForgottenUser(PiiUnreadable):
    """The user's data key was destroyed by `lklab forget`: their PII is unreadable for good."""


def master_key(settings: Settings) -> bytes:
    """The lab's master key (LKLAB_PII_KEY, or a 0600 file made once in the lab's home): it wraps
    the per-user data keys and seals PII that names no valid user (dead letters only)."""
    if settings.pii_key:
        return settings.pii_key.encode()
    key_file = settings.home / "pii.key"
    if not key_file.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())
    return key_file.read_bytes().strip()


class KeyRing(Protocol):
    """Where a user's data key comes from (lklab.privacy.keys keeps them in the serving store)."""

    def sealing(self, user_id: str) -> Fernet | None:
        """The user's data key, made on first use; None: the user was forgotten."""

    def opening(self, user_id: str) -> Fernet:
        """The user's data key; ForgottenUser if it was destroyed, PiiUnreadable if it never existed."""


def names_a_user(value: Any) -> bool:
    """Is `value` a user_id the schema accepts (so PII beside it belongs to that user)?"""
    return isinstance(value, str) and 0 < len(value) <= 128


class PiiCipher:
    """Seals a record's `pii` at the edge with its user's own data key (envelope encryption), so
    destroying one key makes every copy of that user's PII unreadable (crypto-shredding). PII of a
    forgotten user is dropped, never sealed; PII beside no valid user_id (a bad line's, on its way
    to the dead-letter topic) is sealed with the master key."""

    def __init__(self, settings: Settings, keys: KeyRing):
        self._master, self._keys = Fernet(master_key(settings)), keys
        self.dropped = 0  # PII values of forgotten users dropped at the edge

    def _sealer(self, data: dict[str, Any]) -> Fernet | None:
        user = data.get("user_id")
        return self._keys.sealing(user) if names_a_user(user) else self._master

    def _sealed(self, data: dict[str, Any], pii: Any) -> str | None:
        key = self._sealer(data)
        if key is None:
            self.dropped += 1
            return None
        return key.encrypt(json.dumps(pii, sort_keys=True).encode()).decode()

    def seal(self, record: dict[str, Any]) -> dict[str, Any]:
        """Replace a plaintext `pii` object by its token (None for a forgotten user); tokens and nulls pass through."""
        pii = record.get("pii")
        return {**record, "pii": self._sealed(record, pii)} if isinstance(pii, dict) else record

    def open(self, user_id: Any, token: str) -> dict[str, str]:
        """The PII `token` holds, sealed with `user_id`'s key (the master key's if `user_id` names
        no valid user, as in a bad line's dead letter): ForgottenUser once the key is destroyed,
        PiiUnreadable for anything else that is not such a token. Never garbage."""
        key = self._keys.opening(user_id) if names_a_user(user_id) else self._master
        try:
            return json.loads(key.decrypt(token.encode()))
        except (InvalidToken, ValueError, UnicodeEncodeError, AttributeError):
            raise PiiUnreadable(f"the pii value is not a token sealed with user {user_id!r}'s key") from None

    def is_token(self, value: Any, data: dict[str, Any]) -> bool:
        """Is `value` a token sealed with the key PII beside this record's user_id gets?"""
        key = self._sealer(data) if isinstance(value, str) else None
        if key is None:
            return False
        try:
            key.decrypt(value.encode())
        except (InvalidToken, ValueError, UnicodeEncodeError):
            return False
        return True

    def seal_dead_letter(self, reason: str, line: str) -> tuple[str, str]:
        """A dead letter's reason and line with no plaintext PII: the line's `pii` value (anything
        but a token of its key) sealed, or dropped for a forgotten user; a line that is not a JSON
        object cut where it names "pii" (nothing tells which of its bytes are PII); a reason that
        quotes the PII replaced by WITHHELD. Lines without PII come back unchanged."""
        try:
            data = json.loads(line)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            cut = line.find(PII_KEY)
            return (reason, line) if cut < 0 else (WITHHELD if PII_KEY[1:-1] in reason else reason, line[:cut] + CUT)
        pii = data.get("pii")
        if pii is None or self.is_token(pii, data):
            return reason, line
        token = self._sealed(data, pii)
        quoted = "'pii'" in reason or any(word in reason for word in _words(pii))
        return (WITHHELD if quoted else reason), json.dumps({**data, "pii": token}, ensure_ascii=False, separators=(",", ":"))


def _words(value: Any) -> set[str]:
    """The words (3+ characters) of every string and number inside a PII value, as written and as
    a reason's repr quotes them (escaped), so a reason quoting any part of the value is caught."""
    if isinstance(value, dict):
        return set().union(*(_words(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_words(v) for v in value))
    words = {w for w in str(value).split() if len(w) >= 3} if value is not None else set()
    return words | {repr(w)[1:-1] for w in words}
