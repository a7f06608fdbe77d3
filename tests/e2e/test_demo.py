"""The demo path end to end: produce → Faust speed + live Kappa jobs + Dagster batch → Lambda and
Kappa readers == oracle, a blue/green cutover under a polling reader, the hybrid path."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from lklab.core.config import Settings
from lklab import views
from lklab.kappa import jobs
from lklab.log.generator import bad_lines
from lklab.scenarios.side_by_side import KAPPA_READERS, LAMBDA_READERS
from lklab.scenarios.demo import BATCH_ROWS, DEMO_SEGMENT_BYTES, FULL_REPLAY, MERGE, SNAPSHOT_REPLAY, SPEED_ROWS, run_demo

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
MERGED_VIEWS = {"revenue_per_minute", "daily_active_users", "driver_earnings_daily"}  # the views the oracle answers


def assert_equals_oracle(c, what: str) -> None:
    """A comparison with the oracle that found the view exactly right, and not empty."""
    assert c.equal, f"{what} differs from the oracle: {c}"
    assert (c.missing, c.unexpected, c.mismatched, c.max_abs_error) == ([], [], [], 0), what
    assert c.rows_expected > 0 and c.rows_actual == c.exact_matches == c.rows_expected, f"{what}: {c}"


def test_demo_merged_view_and_the_hybrid_path_equal_the_oracle(isolated: Settings, spark) -> None:
    small_segments = isolated.model_copy(update={"topic": isolated.topic + ".demo", "dlq_topic": isolated.dlq_topic + ".demo",
                                                 "topic_segment_bytes": DEMO_SEGMENT_BYTES})
    console = Console(record=True, width=200)
    result = run_demo(minutes=6, seed=17, console=console, settings=small_segments)
    assert result.exit_code == 0, result.message
    text = console.export_text()
    assert "every merged view equals the oracle exactly" in text
    assert f"dead-lettered {len(bad_lines())}" in text  # the demo imports every catalogued bad line
    assert "bronze still holds everything below them" in text and "demo complete" in text
    from_bronze = re.search(r"replay plan: (\d+) records from bronze, (\d+) from Kafka, 0 lost", text)
    assert from_bronze and int(from_bronze[1]) > 0 and int(from_bronze[2]) > 0

    # The structured oracle checks behind the exit code and the tables.
    assert result.T is not None and result.build_id and result.hybrid_ran
    merged = {c.view: c.comparison for c in result.part(MERGE)}
    assert set(merged) == MERGED_VIEWS and len(result.part(MERGE)) == len(MERGED_VIEWS)
    for view, c in merged.items():
        assert_equals_oracle(c, f"{view} (Lambda merge)")
        # The merge is its batch rows (final at T) plus its speed rows (after T), nothing else.
        batch = next(x.comparison for x in result.part(BATCH_ROWS) if x.view == view)
        speed = next(x.comparison for x in result.part(SPEED_ROWS) if x.view == view)
        assert batch.rows_actual + speed.rows_actual == c.rows_actual, view
        assert batch.rows_expected + speed.rows_expected == c.rows_expected, view
    # Lambda and Kappa side by side on the same live events: every view, both readers, after the blue/green
    readers = [c for c in result.comparisons if c.part in (LAMBDA_READERS, KAPPA_READERS)]
    assert sorted((c.view, c.part) for c in readers) == sorted((v, p) for v in views.VIEWS for p in (LAMBDA_READERS, KAPPA_READERS))
    for c in readers:
        assert_equals_oracle(c.comparison, c.label)
    assert "versions seen in order user_sessions__v1 → user_sessions__v2, 0 empty or without a version" in text
    assert not [j.output for j in jobs.status(small_segments) if j.running]  # the demo stopped every job it started
    replays = {c.part: c for c in result.comparisons if c.part in (SNAPSHOT_REPLAY, FULL_REPLAY)}
    assert set(replays) == {SNAPSHOT_REPLAY, FULL_REPLAY}
    for part, c in replays.items():
        assert c.view == "revenue_per_minute", part
        assert_equals_oracle(c.comparison, f"{c.label} ({part})")


def test_dagster_definitions_validate() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "All code locations passed validation" in result.stderr + result.stdout


def test_cli_reports_bad_flags_in_one_line(tmp_path) -> None:
    lklab = str(Path(sys.executable).parent / "lklab")
    env = {"LKLAB_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([lklab, "query", "revenue_per_minute", "--from", "noon"], capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --from 'noon' is not an ISO-8601 time like 2026-11-17T10:00Z"
    result = subprocess.run([lklab, "query", "revenue_per_day"], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "unknown view 'revenue_per_day'" in result.stderr
    result = subprocess.run([lklab, "produce", "--file", str(tmp_path / "missing.jsonl")], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "no such file" in result.stderr
    bad = {
        ("replay", "revenue_per_minute", "--version", "2", "--from", "0:5", "--from-snapshot", "latest", "--plan"):
            "error: --from and --from-snapshot exclude each other: a snapshot fixes the start offsets",
        ("replay", "revenue_per_minute", "--version", "0", "--plan"): "error: --version 0: versions start at 1",
        ("audit", "revenue_per_minute", "--key", "berlin", "--window", "2026-11-17T10:00:30Z", "--as-of", "2026-11-18T00:00Z"):
            "error: --window 2026-11-17T10:00:30+00:00: not the start of a revenue_per_minute window (60 s wide, UTC)",
        ("audit", "revenue_per_minute", "--key", "berlin", "--window", "2026-11-17T10:00Z", "--as-of", "2026-11-18T00:00Z"):
            "error: nothing of lambda@batch (lambda) was published at or before 2026-11-18T00:00:00+00:00",
        ("snapshot", "revenue_per_day"): "error: unknown view 'revenue_per_day'; one of: revenue_per_minute, daily_active_users, "
                                         "driver_earnings_daily, user_sessions",
        ("snapshot", "revenue_per_minute"): "error: revenue_per_minute has no published version: pass --version N",
    }
    for args, message in bad.items():
        result = subprocess.run([lklab, *args], capture_output=True, text=True, env=env)
        assert (result.returncode, result.stderr.strip()) == (2, message), args
