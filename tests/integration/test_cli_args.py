"""Bad arguments of produce, replay and cutover, through the real CLI against a real broker: one
line on stderr, exit 2, and nothing written or started. Most run in a child process (stdout and
stderr are pipes, as in a script); the long table of replay arguments runs in this process
(typer's runner, stderr apart), as the child's start-up would be most of its time."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lklab.cli import app
from lklab.log import kafka_io
from lklab.core.config import Settings
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import produce_events

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def lklab(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    env = {**settings.to_env(), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lklab.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


def in_process(settings: Settings, *args: str) -> subprocess.CompletedProcess:
    """The same invocation through typer's runner in this process, shaped like lklab()'s result."""
    result = CliRunner().invoke(app, list(args), env=settings.to_env())
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def files(home: Path) -> set[Path]:
    return {p.relative_to(home) for p in home.rglob("*")}


@pytest.fixture
def with_events(isolated: Settings) -> Settings:
    produce_events(isolated, generate(GeneratorConfig(seed=31, duration_s=60, rides_per_minute=20)).deliveries)
    return isolated


def test_bad_replay_arguments_are_one_line_before_anything_starts(with_events: Settings) -> None:
    end = kafka_io.run(kafka_io.end_offsets(with_events))
    topic = with_events.topic
    bad = {
        ("--from", "9:10"): f"error: --from 9:10: topic {topic} has 4 partitions (0..3); there is no partition 9",
        ("--from", "0:-5"): "error: --from '0:-5': '0:-5': partitions and offsets are never negative",
        ("--from", "0:99999"): f"error: --from 0:99999: partition 0 of {topic} ends at offset {end[0]}; 99999 is past its end",
        ("--from", "0:1,0:2"): "error: --from '0:1,0:2': partition 0 is given twice",
        ("--from", "0=1"): "error: --from '0=1': '0=1' is not partition:offset; expected 'earliest' or pairs like 0:120,1:98",
        ("--max-rate", "-5"): "error: --max-rate -5: must be > 0 events/s",
        ("--max-rate", "0", "--plan"): "error: --max-rate 0: must be > 0 events/s",
        ("--max-rate", "nan"): "error: --max-rate nan: must be > 0 events/s",
    }
    before = files(with_events.home)
    for extra, message in bad.items():
        result = in_process(with_events, "replay", "revenue_per_minute", "--version", "1", *extra)
        assert (result.returncode, result.stderr.strip(), result.stdout) == (2, message, ""), extra
    for args, message in {
        ("replay", "revenue_per_minute", "--version", "0"): "error: --version 0: versions start at 1",
        ("replay", "revenue_per_day", "--version", "1"): "error: unknown view 'revenue_per_day'; one of: revenue_per_minute, "
                                                         "daily_active_users, driver_earnings_daily, user_sessions",
        ("kappa", "repair", "revenue_per_minute", "--version", "0"): "error: --version 0: versions start at 1",
        ("kappa", "repair", "user_sessions", "--version", "1"):
            "error: user_sessions__v1: a view keyed by the user or sessionized is not additive per window (a rider's sessions "
            "depend on all of the rider's events), so a targeted repair cannot recompute it; replay a new version with a "
            "longer LKLAB_CORRECTION_HORIZON_S instead",
    }.items():
        result = in_process(with_events, *args)
        assert (result.returncode, result.stderr.strip(), result.stdout) == (2, message, ""), args
    assert files(with_events.home) == before  # no serving store, no build record, no checkpoint


def test_a_bad_cutover_tolerance_is_refused_before_spark_starts(with_events: Settings) -> None:
    from lklab import kappa
    from lklab.serving.store import make_engine

    kappa.replay(with_events, make_engine(with_events), "revenue_per_minute", 2)  # a cutover to v2 would go ahead
    before = files(with_events.home)
    for value, run in (("-1", in_process), ("101", in_process), ("nan", lklab)):  # one child: Spark would start in it
        result = run(with_events, "cutover", "revenue_per_minute", "--to", "2", "--tolerance-pct", value)
        assert (result.returncode, result.stdout) == (2, ""), value
        assert result.stderr.strip() == f"error: --tolerance-pct {float(value):g}: must be between 0 and 100 (% of the published total)"
    # before Spark: no Spark warehouse or metastore (a session creates them), no snapshot, no swap. (Not a
    # wall-clock bound: under four test workers on 2 cores a bare CLI start took 31 s.)
    assert files(with_events.home) == before


def test_produce_of_a_directory_is_one_line(isolated: Settings, tmp_path: Path) -> None:
    result = lklab(isolated, "produce", "--file", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path}: no such file (it is a directory; expected a JSONL file, one event per line)"


def test_piped_output_keeps_long_lines_whole(isolated: Settings, tmp_path: Path) -> None:
    """Scripts grep the CLI's output: a long line must not be cut at 80 columns when piped."""
    event = json.loads(generate(GeneratorConfig(seed=32, duration_s=60, rides_per_minute=5)).deliveries[0].to_json())
    event["event_type"] = "ride_teleported_" + "x" * 120
    path = tmp_path / ("a-rather-long-directory-name-" * 3) / "events.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(event) + "\n")
    result = lklab(isolated, "produce", "--file", str(path))
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"dead-lettered {path}:1: ") and "ride_teleported_" + "x" * 120 in line and len(line) > 200
    assert result.stdout.splitlines() == [f"accepted 0, dead-lettered 1 (to {isolated.dlq_topic})"]


def test_an_unreachable_broker_is_one_line(tmp_path: Path) -> None:
    from tests.conftest import free_port

    nowhere = Settings(home=tmp_path / "home", kafka_port=free_port())  # nothing listens there
    path = tmp_path / "events.jsonl"
    path.write_text("{}\n")
    for args in (("produce", "--file", str(path)), ("replay", "revenue_per_minute", "--version", "1", "--from", "0:1")):
        result = lklab(nowhere, *args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(f"error: Kafka at {nowhere.bootstrap} failed: KafkaConnectionError"), result.stderr


def test_an_unknown_batch_view_is_one_line_before_the_batch_runs(tmp_path: Path) -> None:
    bad = Settings(home=tmp_path / "home", batch_views=["revenue_per_hour"])
    for args in (("batch",), ("query", "revenue_per_minute")):
        result = lklab(bad, *args)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith("error: batch_views: revenue_per_hour is not a view"), result.stderr
