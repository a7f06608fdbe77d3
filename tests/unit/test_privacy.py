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


def test_a_live_job_never_writes_back_a_user_forgotten_between_its_fold_and_its_checkpoint(tmp_path, engine) -> None:
    """The race the deletion drill found: a live Kappa job folds a rider's new events, `lklab forget`
    purges the rider's rows, then the job's checkpoint lands. The job reads the tombstone list once
    per checkpoint, so its checkpoint must drop them, or it writes the rider back. Afterwards the
    output equals the oracle without the rider, and the job holds none of their state in memory."""
    from collections import Counter

    from lklab.core import oracle
    from lklab.deletion.purge import purge_serving
    from lklab.engine.checkpoint import CheckpointedSink
    from lklab.kappa.names import spec_for
    from lklab.log.generator import GeneratorConfig, generate

    settings = Settings(home=tmp_path)
    workload = generate(GeneratorConfig(seed=41, duration_s=3 * 3600, rides_per_minute=6, users=8))
    records = [(0, offset, e.to_json().encode()) for offset, e in enumerate(workload.deliveries)]
    first, second = len(records) // 3, 2 * len(records) // 3
    user = Counter(json.loads(r[2])["user_id"] for r in records[first:second]).most_common(1)[0][0]
    spec = spec_for("user_sessions", 2)

    def rows() -> dict:
        with engine.connect() as conn:
            return {(r[0], r[1]): spec.measure.value(r) for r in conn.execute(spec.measure.output_query(spec))}

    sink = CheckpointedSink(engine, settings, "rides.events.unit", [spec], "lklab-live-unit", every=10**9)
    sink.apply(records[:first])
    sink.checkpoint()
    assert any(u == user for u, _ in rows()), "the rider must be served before the request, or this tests nothing"
    sink.apply(records[first:second])  # folded before the request: no checkpoint has re-read the tombstones
    requests.record(engine, user, "asked while the job was folding")
    purge_serving(engine, user)
    assert not any(u == user for u, _ in rows())
    sink.checkpoint()
    assert not any(u == user for u, _ in rows()), "the checkpoint wrote the forgotten rider back"
    sink.apply(records[second:])
    sink.checkpoint()
    sink.close()
    comparison = oracle.compare(rows(), oracle.for_view("user_sessions", workload.truth, forgotten=frozenset({user})))
    assert comparison.equal, comparison
    assert not [key for key, c in sink.contribs.items() if c is not None and c.entity == user]


def test_a_batch_build_begun_before_a_request_is_promoted_without_the_user(tmp_path, engine) -> None:
    """A build reads the tombstones when it starts; one running when `lklab forget` purges the
    serving store promotes later, so promotion drops the rows of users forgotten meanwhile.
    Views not keyed by the user keep every row (aggregates hold no personal data)."""
    from datetime import datetime, timezone

    from lklab import views
    from lklab.lambda_arch import merge
    from lklab.lambda_arch.builds import BatchBuild, promote

    day = datetime(2026, 11, 17, tzinfo=timezone.utc)
    build = BatchBuild(build_id="b1", created_at=day, status="promoted", git_sha="x", logic_version=1, schema_version=1,
                       offsets={0: [0, 10]}, watermark=day, final_through=day + timedelta(days=1), row_counts={}, validation={}, delta_versions={})
    requests.record(engine, "ada", "asked while the build ran")
    promote(engine, build, [(views.view("user_sessions"), [("ada", day, 2, 60_000), ("bob", day, 1, 5_000)]),
                            (views.view("revenue_per_minute"), [("berlin", day, 1250)])])
    assert [r.entity for r in merge.query(engine, "user_sessions").rows] == ["bob"]
    assert [r.value for r in merge.query(engine, "revenue_per_minute").rows] == [1250]
