"""Freshness and the reader policy on real services: a live Kappa job on the real broker, read
through the HTTP API (FastAPI's TestClient over the real app) and the real CLI in a child process.
While the job is caught up its answer equals the oracle and is not stale; once it is stopped past
the heartbeat budget, serve-stale answers flagged (the rows still there) and error refuses: 503
with one line, exit 3 with one line. The same policy decides for the Lambda merge, where stale is
the batch-only mode (the speed layer never run, or down)."""
from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from lklab import kappa, views
from lklab.api.app import create_app
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.kappa import jobs
from lklab.lambda_arch.builds import BatchBuild, promote
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import produce_events
from lklab.serving.progress import beat
from lklab.serving.store import make_engine, serving_aliases, upsert
from tests.integration.test_cli_args import lklab
from tests.integration.test_kappa_live import caught_up

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
VIEW = "revenue_per_minute"
SESSIONS = "user_sessions"


def expected_rows(view: str, truth) -> list[dict]:
    """The oracle's answer in the API's row shape."""
    spec = views.view(view)
    answer = oracle.user_sessions(truth) if view == SESSIONS else oracle.for_view(view, truth)
    return sorted((spec.measure.row_json(spec, e, w, v) for (e, w), v in answer.items()), key=_order(spec))


def served_rows(view: str, body: dict) -> list[dict]:
    spec = views.view(view)
    columns = (spec.entity, "window_start", *spec.value_columns)
    return sorted(({c: row[c] for c in columns} for row in body["rows"]), key=_order(spec))


def _order(spec: views.ViewSpec):
    return lambda row: (row[spec.entity], row["window_start"])


def one_line_refusal(result, view: str, why: str) -> None:
    assert result.returncode == 3 and result.stdout == "", result
    assert result.stderr.startswith(f"error: {view} is stale: ") and why in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1 and "reader policy error" in result.stderr, result.stderr


def test_a_kappa_answer_carries_its_freshness_and_a_stopped_job_is_served_flagged_or_refused(isolated: Settings) -> None:
    settings = isolated.model_copy(update={"kappa_checkpoint_interval_s": 0.2})
    workload = generate(GeneratorConfig(seed=97, duration_s=120, rides_per_minute=30))
    produce_events(settings, workload.deliveries)
    engine = make_engine(settings)
    output = kappa.output_name(VIEW, 1)
    with engine.begin() as conn:  # publish v1 the way a cutover's swap does (its checks need Spark and GX, not tested here)
        upsert(conn, serving_aliases, [{"view": VIEW, "target": output, "updated_at": datetime.now(timezone.utc)}])
    jobs.start(settings, VIEW, 1)
    try:
        caught_up(settings, VIEW, 1)
        api = TestClient(create_app(settings))
        fresh = api.get(f"/kappa/views/{VIEW}").json()
        assert served_rows(VIEW, fresh) == expected_rows(VIEW, workload.truth)
        assert (fresh["version"], fresh["running"], fresh["lag"], fresh["stale"], fresh["stale_reason"], fresh["policy"]) == (
            output, True, 0, False, None, "serve-stale"), fresh
        assert fresh["heartbeat_age_s"] < settings.kappa_heartbeat_timeout_s
        times = [d.event_time for d in workload.deliveries]
        assert min(times) <= datetime.fromisoformat(fresh["watermark"]) <= max(times), fresh["watermark"]
        shown = lklab(settings, "query", VIEW, "--arch", "kappa")
        assert shown.returncode == 0 and json.loads(shown.stdout)["rows"] == fresh["rows"], shown
        [job] = api.get("/kappa/status").json()["jobs"]
        assert (job["output"], job["running"], job["lag"], job["published"], job["stale"]) == (output, True, 0, True, False), job
        listed = {v["name"]: v["version"] for v in api.get("/kappa/views").json()["views"]}
        assert listed == {name: output if name == VIEW else None for name in views.VIEWS}, listed
    finally:
        jobs.stop(settings, VIEW, 1)

    late = settings.model_copy(update={"kappa_heartbeat_timeout_s": 1.0})
    time.sleep(1.5)  # past the heartbeat budget: the stopped job's last beat is now too old
    flagged = TestClient(create_app(late)).get(f"/kappa/views/{VIEW}")
    body = flagged.json()
    assert flagged.status_code == 200 and body["stale"] is True and body["running"] is False, body
    assert body["stale_reason"].startswith(f"Kappa job {output}: heartbeat is ") and "over the 1s timeout" in body["stale_reason"]
    assert served_rows(VIEW, body) == expected_rows(VIEW, workload.truth)  # stale, still answered
    shown = lklab(late, "query", VIEW, "--arch", "kappa")
    assert shown.returncode == 0 and json.loads(shown.stdout)["stale"] is True, shown

    strict = late.model_copy(update={"reader_policy_views": {VIEW: "error"}})
    api = TestClient(create_app(strict))
    refused = api.get(f"/kappa/views/{VIEW}")
    assert refused.status_code == 503 and list(refused.json()) == ["detail"], refused.text
    detail = refused.json()["detail"]
    assert detail.startswith(f"{VIEW} is stale: Kappa job {output}: heartbeat is ") and "\n" not in detail, detail
    assert detail.endswith("s old, over the 1s timeout (down?) (reader policy error)"), detail
    other = api.get("/kappa/views/daily_active_users").json()  # no override: serve-stale (and unpublished: no rows)
    assert (other["stale"], other["stale_reason"], other["policy"], other["rows"]) == (
        True, "no version is published (`lklab cutover`)", "serve-stale", [])
    one_line_refusal(lklab(strict, "query", VIEW, "--arch", "kappa"), VIEW, "heartbeat is")


def test_the_lambda_merge_is_stale_while_the_speed_layer_is_never_run_or_down(isolated: Settings) -> None:
    workload = generate(GeneratorConfig(seed=98, duration_s=120, rides_per_minute=30))
    engine = make_engine(isolated)
    final = workload.config.start + timedelta(days=3)  # T after every window: all rows are final in batch
    build = BatchBuild(build_id="b1", created_at=datetime.now(timezone.utc), status="promoted", git_sha="x", logic_version=1,
                       schema_version=1, offsets={}, watermark=final, final_through=final, row_counts={}, validation={},
                       delta_versions={})
    revenue = [(e, w, v) for (e, w), v in oracle.for_view(VIEW, workload.truth).items()]
    sessions = [(e, w, *v) for (e, w), v in oracle.user_sessions(workload.truth).items()]
    promote(engine, build, [(views.view(VIEW), revenue), (views.view(SESSIONS), sessions)])
    expected = expected_rows(VIEW, workload.truth)

    served = TestClient(create_app(isolated)).get(f"/views/{VIEW}").json()  # the speed layer has never run
    assert (served["stale"], served["mode"], served["stale_reason"], served["policy"]) == (
        True, "batch-only", "the speed layer has never run", "serve-stale"), served
    assert served_rows(VIEW, served) == expected

    strict = isolated.model_copy(update={"reader_policy": "error", "speed_heartbeat_timeout_s": 1.0})
    api = TestClient(create_app(strict))
    refused = api.get(f"/views/{VIEW}")
    assert (refused.status_code, refused.json()) == (
        503, {"detail": f"{VIEW} is stale: the speed layer has never run (reader policy error)"})
    for table_or_json in ((), ("--json",)):
        one_line_refusal(lklab(strict, "query", VIEW, *table_or_json), VIEW, "the speed layer has never run")
    batch_only = api.get(f"/views/{SESSIONS}").json()  # served by batch alone: never stale from the speed layer
    assert (batch_only["stale"], batch_only["policy"]) == (False, "error")
    assert served_rows(SESSIONS, batch_only) == expected_rows(SESSIONS, workload.truth)

    beat(engine, strict.speed_group)  # the speed layer is up: the same policy answers
    up = api.get(f"/views/{VIEW}").json()
    assert (up["stale"], up["mode"], up["policy"]) == (False, "lambda", "error") and served_rows(VIEW, up) == expected, up
    time.sleep(1.5)  # ... and down again, past its heartbeat budget
    down = api.get(f"/views/{VIEW}")
    assert down.status_code == 503 and down.json()["detail"].startswith(f"{VIEW} is stale: the speed layer: heartbeat is ")


def test_an_unknown_view_in_the_policy_overrides_is_one_line(isolated: Settings) -> None:
    bad = isolated.model_copy(update={"reader_policy_views": {"revenue": "error"}})
    result = lklab(bad, "query", VIEW)
    assert (result.returncode, result.stdout) == (2, "") and result.stderr.count("\n") == 1, result
    assert result.stderr.startswith("error: LKLAB_READER_POLICY_VIEWS: unknown view 'revenue'; one of: revenue_per_minute"), result
    with pytest.raises(ValueError, match="^reader_policy_views: unknown view 'revenue'; one of: "):
        create_app(bad)
