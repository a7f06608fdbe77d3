"""PII is encrypted at the edge (before it reaches the log) with Fernet; plaintext is never stored."""
from __future__ import annotations

import json
import os
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from lklab.core.config import Settings

PII_KEY = '"pii"'  # how a JSON line names its PII (the event's `pii` field)
CUT = '"pii": … (cut: the line is not a JSON object, so its PII could not be sealed)'
WITHHELD = "field 'pii' (or a field inside it) is not valid; the value is withheld, as it may be PII"


def _key(settings: Settings) -> bytes:
    if settings.pii_key:
        return settings.pii_key.encode()
    key_file = settings.home / "pii.key"
    if not key_file.exists():
        settings.home.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(Fernet.generate_key())
    return key_file.read_bytes().strip()


class PiiCipher:
    def __init__(self, settings: Settings):
        self._fernet = Fernet(_key(settings))

    def seal(self, record: dict[str, Any]) -> dict[str, Any]:
        """Replace a plaintext `pii` object by its Fernet token; tokens and nulls pass through."""
        pii = record.get("pii")
        if isinstance(pii, dict):
            token = self._fernet.encrypt(json.dumps(pii, sort_keys=True).encode()).decode()
            return {**record, "pii": token}
        return record

    def open(self, token: str) -> dict[str, str]:
        return json.loads(self._fernet.decrypt(token.encode()))

    def is_token(self, value: Any) -> bool:
        """Is `value` a token sealed with this lab's key?"""
        if not isinstance(value, str):
            return False
        try:
            self._fernet.decrypt(value.encode())
        except (InvalidToken, ValueError, UnicodeEncodeError):
            return False
        return True

    def seal_dead_letter(self, reason: str, line: str) -> tuple[str, str]:
        """A dead letter's reason and line with no plaintext PII: the line's `pii` value (anything
        but a token of this key) sealed; a line that is not a JSON object cut where it names "pii"
        (nothing tells which of its bytes are PII); a reason that quotes the PII replaced by WITHHELD.
        Lines without PII come back unchanged."""
        try:
            data = json.loads(line)
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict):
            cut = line.find(PII_KEY)
            return (reason, line) if cut < 0 else (WITHHELD if PII_KEY[1:-1] in reason else reason, line[:cut] + CUT)
        pii = data.get("pii")
        if pii is None or self.is_token(pii):
            return reason, line
        token = self._fernet.encrypt(json.dumps(pii, sort_keys=True).encode()).decode()
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
