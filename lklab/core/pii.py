"""PII is encrypted at the edge (before it reaches the log) with Fernet; plaintext is never stored."""
from __future__ import annotations

import json
import os
from typing import Any

from cryptography.fernet import Fernet

from lklab.core.config import Settings


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
