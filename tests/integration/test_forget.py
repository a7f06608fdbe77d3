"""Deletion requests on the real stack: riders' PII sealed per user through `lklab produce`, the
batch layer (bronze, silver, gold), the speed layer (which holds no sessions: user_sessions is
batch-only in Lambda), a Kappa replay and its snapshot; then
`lklab forget`. A scan of every store finds nothing of the user readable, and still nothing after
a batch rebuild and a full Kappa replay; unrelated users and the aggregates are unchanged."""
from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest
from dagster import DagsterInstance, build_sensor_context, materialize
from typer.testing import CliRunner

from assets.privacy.deletion import deletion_requests
from orchestration.resources import LabSettings, build_resources
from orchestration.sensors import deletion_deadline_sensor

from lklab import kappa, views
from lklab.cli import app
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.core.pii import ForgottenUser
from lklab.deletion.scan import scan
from lklab.engine import outputs, snapshots
from lklab.engine.sink import apply_records
from lklab.hybrid import audit
from lklab.lambda_arch.builds import BatchBuild, promote
from lklab.lake import tables as lake
from lklab.log import kafka_io
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import produce_lines
from lklab.privacy import keys, requests
from lklab.serving.publish import KAPPA, LAMBDA, record_publish
from lklab.serving.store import make_engine

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

WORKLOAD = GeneratorConfig(seed=81, start=datetime(2026, 11, 17, 22, 30, tzinfo=timezone.utc), duration_s=3600,
                           rides_per_minute=6, users=40, pii_fraction=0.5, late_fraction=0)
SESSIONS = "user_sessions"


def _records(settings: Settings) -> list[tuple[int, int, bytes]]:
    first, end = kafka_io.run(kafka_io.log_range(settings))
    return [(r.partition, r.offset, r.value) for r in kafka_io.run(kafka_io.read_range(settings, first, end))]


def _gold(spark, settings: Settings, name: str) -> dict:
    spec = views.view(name)
    lake.build_gold(spark, settings, spec)
    rows = spark.read.format("delta").load(lake.path(settings, lake.gold_table(spec.name))).toArrow().to_pylist()
    value = spec.measure.value if name == SESSIONS else (lambda r: r[spec.value_column])
    return {(r[spec.entity], r["window_start"].replace(tzinfo=timezone.utc)):
            (r["sessions"], r["duration_ms"]) if name == SESSIONS else value(r) for r in rows}


def _publish(settings: Settings, engine, snap: snapshots.Snapshot) -> datetime:
    """A promoted batch build of gold as it is now, and a Kappa cutover that recorded `snap`, as
    the lab publishes them; returns a time at which both are in force, for `lklab audit`."""
    from deltalake import DeltaTable

    now, table = datetime.now(timezone.utc), lake.gold_table(SESSIONS)
    promote(engine, BatchBuild(build_id="b-before-forget", created_at=now, status="promoted", git_sha="x", logic_version=2,
                               schema_version=1, offsets={}, watermark=now, final_through=now, row_counts={}, validation={},
                               delta_versions={table: DeltaTable(lake.path(settings, table)).version()}), [])
    with engine.begin() as conn:
        record_publish(conn, at=now, view=SESSIONS, arch=KAPPA, action="cutover", target=kappa.output_name(SESSIONS, 2),
                       from_target=None, why="before the forget", build={}, delta_versions={}, snapshot_id=snap.snapshot_id)
    return datetime.now(timezone.utc)


def _served(engine, output: str, view: str = SESSIONS) -> dict:
    return {(e, w): v for e, w, v in outputs.read_output(engine, view, output)}


def test_forget_purges_every_store_and_no_replay_brings_the_user_back(isolated: Settings, spark) -> None:
    settings = isolated.model_copy(update={"allowed_lateness_s": 30 * 86_400})  # no window closes: every row compares
    work = generate(WORKLOAD)
    by_user = Counter(e.user_id for e in work.truth if e.user_id in work.riders)
    gone, kept = [u for u, _ in by_user.most_common(2)]
    engine = make_engine(settings)
    report = kafka_io.run(produce_lines(settings, work.lines(), "riders.jsonl"))
    assert (report.accepted, report.dead_lettered) == (len(work.deliveries), 0)

    # Every layer holds the user: lake, speed, a Kappa output and its snapshot.
    lake.append_bronze(spark, settings, {}, kafka_io.run(kafka_io.end_offsets(settings)))
    lake.build_silver(spark, settings)
    gold = {name: _gold(spark, settings, name) for name in (SESSIONS, "revenue_per_minute", "daily_active_users")}
    records = _records(settings)
    for start in range(0, len(records), 500):
        apply_records(engine, settings, settings.topic, records[start:start + 500])
    kappa.replay(settings, engine, SESSIONS, 2)
    snap = snapshots.take(settings, engine, spark, SESSIONS, kappa.spec_for(SESSIONS, 2), kappa.replay_scope(SESSIONS, 2))
    as_of = _publish(settings, engine, snap)
    window, served = next((w, v) for (u, w), v in sorted(gold[SESSIONS].items()) if u == gone)
    assert {arch: audit.answer(settings, engine, spark, SESSIONS, gone, window, as_of, arch).value for arch in (LAMBDA, KAPPA)} == \
        {LAMBDA: served, KAPPA: served}
    speed_revenue = _served(engine, "revenue_per_minute", "revenue_per_minute")
    before = {f.store: f for f in scan(settings, engine, gone)}
    assert {s: before[s].readable > 0 for s in before} == {s: s not in ("dead letters", "speed state", "serving (batch builds)") for s in before}, before
    assert gold[SESSIONS] == oracle.for_view(SESSIONS, work.truth)

    cli = CliRunner().invoke(app, ["forget", gone, "--why", "GDPR art. 17, ticket 4711"], env=settings.to_env())
    assert cli.exit_code == 0, cli.output + str(cli.exception)
    assert "nothing readable in any store" in cli.output and "done after: key" in cli.output, cli.output

    after = scan(settings, engine, gone)
    assert [f for f in after if not f.clean] == [], after
    assert next(f for f in after if f.store == "kafka").rows == before["kafka"].rows  # the log is immutable: the key was its deletion
    token = next(json.loads(v)["pii"] for _, _, v in records if json.loads(v)["user_id"] == gone and json.loads(v)["pii"])
    with pytest.raises(ForgottenUser):
        keys.cipher(settings, engine).open(gone, token)
    for arch in (LAMBDA, KAPPA):  # the policy: what was published before the purge is audited as redacted
        with pytest.raises(audit.AuditError, match="redacted"):
            audit.answer(settings, engine, spark, SESSIONS, gone, window, as_of, arch)
    status = CliRunner().invoke(app, ["forget", "status", gone], env=settings.to_env())
    assert status.exit_code == 0 and "purged" in status.output, status.output

    # Unrelated users and the aggregates are unchanged; the user has no session rows anywhere.
    expected = oracle.for_view(SESSIONS, work.truth, forgotten=frozenset({gone}))
    assert any(user == kept for user, _ in expected)
    assert _served(engine, kappa.output_name(SESSIONS, 2)) == expected
    assert _served(engine, "revenue_per_minute", "revenue_per_minute") == speed_revenue
    assert [f.readable for f in scan(settings, engine, kept) if f.store == "kafka"] == [before_kept := by_user[kept] and
                                                                                       sum(1 for line in work.lines() if f'"user_id":"{kept}"' in line and '"pii":{' in line)]
    assert before_kept > 0

    # No rebuild or replay brings the user back: batch, a full Kappa replay, and the speed layer on new events.
    for name in (SESSIONS, "revenue_per_minute", "daily_active_users"):
        rebuilt = _gold(spark, settings, name)
        assert rebuilt == (expected if name == SESSIONS else gold[name]), name
    kappa.replay(settings, engine, SESSIONS, 3)
    assert _served(engine, kappa.output_name(SESSIONS, 3)) == expected
    with pytest.raises(kappa.ReplayError, match="no usable snapshot"):
        kappa.replay(settings, engine, SESSIONS, 4, snapshot="latest", spark=spark)
    later = kafka_io.run(produce_lines(settings, [_request_again(work, gone)], "later.jsonl"))
    assert (later.accepted, later.pii_dropped) == (1, 1)  # the event counts; the PII of a forgotten user is never sealed again
    v3 = kappa.output_name(SESSIONS, 3)  # the v3 replay, streaming on: the new request adds no session of the user
    apply_records(engine, settings, settings.topic, _records(settings)[-1:], specs=[kappa.spec_for(SESSIONS, 3)],
                  scope=kappa.replay_scope(SESSIONS, 3), close_windows=False)
    assert _served(engine, v3) == expected
    assert [f for f in scan(settings, engine, gone) if not f.clean] == []

    # A request recorded without its purge (a key destroyed by hand, a lab down meanwhile): the sensor
    # warns before the deadline and asks for a run; the Dagster asset purges it and closes it.
    requests.record(engine, kept, "a request left to Dagster", within=timedelta(hours=2))
    resources = build_resources(LabSettings.from_settings(settings))
    with build_sensor_context(instance=DagsterInstance.ephemeral(), resources=resources) as context:
        tick = deletion_deadline_sensor(context)
    assert len(tick.run_requests) == 1 and tick.asset_events[0].metadata["due_within_a_day"].value == 1
    run = materialize([deletion_requests], resources=resources)
    assert run.success and run.asset_materializations_for_node("deletion_requests")[0].metadata["closed"].value == 1
    assert [f for f in scan(settings, engine, kept) if not f.clean] == [] and not requests.find(engine, kept).pending
    with build_sensor_context(instance=DagsterInstance.ephemeral(), resources=resources) as context:
        assert deletion_deadline_sensor(context).run_requests == []
    engine.dispose()


def _request_again(work, user: str) -> str:
    """A new ride request of `user`, with their PII, an hour after the workload."""
    event = next(e for e in work.truth if e.user_id == user and e.event_type.value == "ride_requested")
    line = json.loads(event.to_json())
    return json.dumps({**line, "event_id": "again-" + event.event_id, "ride_id": "again-" + event.ride_id,
                       "event_time": "2026-11-18T00:10:00Z", "pii": work.riders[user]})
