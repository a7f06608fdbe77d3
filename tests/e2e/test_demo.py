"""The demo path end to end: produce → Faust speed + Dagster batch → Lambda merge == oracle."""
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from lklab.config import Settings
from lklab.demo import run_demo

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_demo_merged_view_equals_the_oracle(isolated: Settings, spark) -> None:
    console = Console(record=True, width=160)
    assert run_demo(minutes=6, seed=17, console=console, settings=isolated) == 0
    text = console.export_text()
    assert "every merged view equals the oracle exactly" in text
    assert "dead-lettered 9" in text


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
