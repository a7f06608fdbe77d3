"""The demo path end to end: produce → Faust speed + Dagster batch → Lambda merge == oracle."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from lklab.core.config import Settings
from lklab.scenarios.demo import DEMO_SEGMENT_BYTES, run_demo

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_demo_merged_view_and_the_hybrid_path_equal_the_oracle(isolated: Settings, spark) -> None:
    small_segments = isolated.model_copy(update={"topic": isolated.topic + ".demo", "dlq_topic": isolated.dlq_topic + ".demo",
                                                 "topic_segment_bytes": DEMO_SEGMENT_BYTES})
    console = Console(record=True, width=200)
    assert run_demo(minutes=6, seed=17, console=console, settings=small_segments) == 0
    text = console.export_text()
    assert "every merged view equals the oracle exactly" in text
    assert "dead-lettered 9" in text
    assert "bronze still holds everything below them" in text and "demo complete" in text
    from_bronze = re.search(r"replay plan: (\d+) records from bronze, (\d+) from Kafka, 0 lost", text)
    assert from_bronze and int(from_bronze[1]) > 0 and int(from_bronze[2]) > 0


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
