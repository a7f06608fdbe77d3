"""A snapshot of the Dagster asset graph (assets, checks, jobs, schedules, sensors), kept in
tests/unit/asset_graph.json: a change to the graph shows up as a diff of that file in review.

After an intended change, regenerate it and review the diff:
    LKLAB_UPDATE_SNAPSHOTS=1 pytest tests/unit/test_asset_graph.py

The definitions are loaded in a child process with no LKLAB_* variables (so LKLAB_PARTITIONS_START
or LKLAB_SCHEDULES_RUNNING in your shell cannot move the snapshot), a fresh home, and Kafka
pointed at a port nothing listens on: loading them must only import, never start Spark or Kafka.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = Path(__file__).with_name("asset_graph.json")
UPDATE = "LKLAB_UPDATE_SNAPSHOTS"


def _partitions(partitions_def) -> dict | None:
    if partitions_def is None:
        return None
    from dagster import TimeWindowPartitionsDefinition

    described = {"type": type(partitions_def).__name__}
    if isinstance(partitions_def, TimeWindowPartitionsDefinition):
        described |= {"start": partitions_def.start.isoformat(), "timezone": partitions_def.timezone,
                      "cron": partitions_def.cron_schedule, "end_offset": partitions_def.end_offset}
    return described


def _user(key) -> str:
    return key.to_user_string()


def _check(key) -> str:
    return f"{_user(key.asset_key)}:{key.name}"


def describe(defs) -> dict:
    """Everything about the graph a reviewer should see change, as plain sorted JSON data."""
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assets[_user(key)] = {
            "group": node.group_name,
            "deps": sorted(_user(k) for k in node.parent_keys),
            "partitions": _partitions(node.partitions_def),
            "kinds": sorted(node.kinds),
            "execution": node.execution_type.value,
        }
    checks = {}
    for key in graph.asset_check_keys:
        node = graph.get(key)
        checks[_check(key)] = {"asset": _user(key.asset_key), "name": key.name, "blocking": node.blocking}
    jobs = {}
    for job in defs.resolve_all_job_defs():
        if job.name.startswith("__"):  # Dagster's implicit job over every asset
            continue
        layer = job.asset_layer
        jobs[job.name] = {
            "assets": sorted(_user(k) for k in layer.selected_asset_keys),
            "checks": sorted(_check(k) for k in layer.asset_graph.asset_check_keys),
            "partitions": _partitions(job.partitions_def),
            "tags": dict(job.tags),
        }
    schedules = {
        s.name: {"cron": s.cron_schedule, "timezone": s.execution_timezone, "job": s.job_name,
                 "default_status": s.default_status.value}
        for s in defs.schedules
    }
    sensors = {}
    for s in defs.sensors:
        sensors[s.name] = {
            "type": s.sensor_type.value,
            "jobs": sorted(t.job_name for t in s.targets) if s.has_jobs else [],
            "asset": _user(s.asset_key) if hasattr(s, "asset_key") else None,
            "minimum_interval_seconds": s.minimum_interval_seconds,
            "default_status": s.default_status.value,
        }
    return {"assets": assets, "asset_checks": checks, "jobs": jobs, "schedules": schedules, "sensors": sensors}


def _children() -> list[str]:
    """Pids of this process's children (Linux /proc): a loader that spawned a JVM or a broker shows here."""
    files = list(Path("/proc/self/task").glob("*/children"))  # empty where the kernel does not expose them
    return sorted(pid for f in files for pid in f.read_text().split())


def _load_and_describe() -> dict:
    """Run in the child process: load the definitions, describe them, and say what loading started."""
    before = _children()
    from orchestration.definitions import make_definitions

    described = describe(make_definitions())
    import pyspark

    return {"graph": described, "spark_context": pyspark.SparkContext._active_spark_context is not None,
            "children_started": sorted(set(_children()) - set(before))}


def _describe_in_child(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LKLAB_")}
    env |= {"PYTHONPATH": str(ROOT), "LKLAB_HOME": str(tmp_path / "home"), "LKLAB_KAFKA_PORT": "1",
            "DAGSTER_HOME": str(tmp_path / "dagster"), "PYTHONWARNINGS": "ignore"}
    (tmp_path / "dagster").mkdir()
    result = subprocess.run([sys.executable, "-m", "tests.unit.test_asset_graph"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _dump(graph: dict) -> str:
    return json.dumps(graph, indent=2, sort_keys=True) + "\n"


def test_asset_graph_matches_the_snapshot(tmp_path: Path) -> None:
    loaded = _describe_in_child(tmp_path)
    assert not loaded["spark_context"], "loading the definitions started Spark"
    assert loaded["children_started"] == [], "loading the definitions started processes"
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").iterdir()), "loading wrote under LKLAB_HOME"
    text = _dump(loaded["graph"])
    if os.environ.get(UPDATE) == "1":
        SNAPSHOT.write_text(text)
        pytest.skip(f"{UPDATE}=1: rewrote {SNAPSHOT.relative_to(ROOT)}; review its diff")
    assert SNAPSHOT.exists(), f"no snapshot yet: run with {UPDATE}=1 to write {SNAPSHOT.relative_to(ROOT)}"
    expected = json.loads(SNAPSHOT.read_text())
    # Compare section by section, so a failure names what changed.
    for section in sorted(set(expected) | set(loaded["graph"])):
        assert loaded["graph"].get(section) == expected.get(section), (
            f"the asset graph's {section} changed; if intended, regenerate with {UPDATE}=1 and review the diff")
    assert text == SNAPSHOT.read_text(), f"snapshot formatting drifted; regenerate with {UPDATE}=1"


def test_the_snapshot_is_sorted_json() -> None:
    text = SNAPSHOT.read_text()
    assert text == _dump(json.loads(text))


if __name__ == "__main__":
    print(json.dumps(_load_and_describe(), sort_keys=True))
