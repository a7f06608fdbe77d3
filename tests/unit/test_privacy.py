"""Envelope encryption and deletion requests against a real SQLite serving store: each user's PII
under their own data key, and a forgotten user's PII unreadable with a typed error, never garbage."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from cryptography.fernet import Fernet

from lklab.core.config import Settings
from lklab.core.pii import ForgottenUser, PiiUnreadable
from lklab.privacy import keys, requests
from lklab.serving.store import make_engine, user_keys

PII = {"name": "Zoë Qvix-1", "phone": "+999 555 1"}


@pytest.fixture
def engine(tmp_path):
    engine = make_engine(Settings(home=tmp_path))
    yield engine
    engine.dispose()


def test_each_user_gets_their_own_wrapped_key(tmp_path, engine) -> None:
    cipher = keys.cipher(Settings(home=tmp_path), engine)
    ada, bob = (cipher.seal({"user_id": u, "pii": PII})["pii"] for u in ("ada", "bob"))
    assert "Qvix" not in ada and cipher.open("ada", ada) == PII and cipher.open("bob", bob) == PII
    with pytest.raises(PiiUnreadable, match="not a token sealed with user 'ada'"):
        cipher.open("ada", bob)  # bob's token under ada's key: refused, not garbage
    with engine.connect() as conn:
        wrapped = dict(conn.execute(user_keys.select().with_only_columns(user_keys.c.user_id, user_keys.c.wrapped_key)).all())
    master = Fernet((tmp_path / "pii.key").read_bytes())
    assert set(wrapped) == {"ada", "bob"} and Fernet(master.decrypt(wrapped["ada"].encode())).decrypt(ada.encode())
    with pytest.raises(PiiUnreadable, match="no data key"):
        cipher.open("nobody", ada)


def test_forget_destroys_the_key_for_good(tmp_path, engine) -> None:
    settings = Settings(home=tmp_path)
    token = keys.cipher(settings, engine).seal({"user_id": "ada", "pii": PII})["pii"]
    request, destroyed = requests.record(engine, "ada", "GDPR art. 17 request #1")
    assert destroyed and request.pending and request.deadline - request.requested_at == timedelta(days=7)
    fresh = keys.cipher(settings, engine)
    with pytest.raises(ForgottenUser, match="'ada' was forgotten"):
        fresh.open("ada", token)
    assert fresh.seal({"user_id": "ada", "pii": PII})["pii"] is None and fresh.dropped == 1  # never a new key
    again, destroyed_again = requests.record(engine, "ada", "asked twice", within=timedelta(days=1))
    assert not destroyed_again and again.deadline == request.deadline and again.why == request.why
    assert requests.forgotten_users(engine) == {"ada"}
    requests.record(engine, "never-seen ☃", "no PII ever sealed")
    assert fresh.seal({"user_id": "never-seen ☃", "pii": PII})["pii"] is None


def test_a_forgotten_users_dead_letter_drops_the_pii(tmp_path, engine) -> None:
    cipher = keys.cipher(Settings(home=tmp_path), engine)
    requests.record(engine, "ada", "request")
    reason, line = cipher.seal_dead_letter("field 'city': missing", json.dumps({"user_id": "ada", "pii": PII}))
    assert json.loads(line)["pii"] is None and reason == "field 'city': missing"
    reason, line = cipher.seal_dead_letter("field 'city': missing", json.dumps({"user_id": "bob", "pii": PII}))
    assert cipher.open("bob", json.loads(line)["pii"]) == PII
