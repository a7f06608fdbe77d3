"""Daily event-date partitions: where they start, which keys a set of event dates maps to, and the
range tags a run over several dates carries (the sensor writes them, the checks read them back)."""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from pydantic import ValidationError

from assets.lambda_arch.checks import RANGE_TAGS as CHECKS_RANGE_TAGS
from assets.lambda_arch.checks import run_dates
from orchestration.partitions import dates_to_partition_keys
from lklab.core.config import Settings
from orchestration.partitions import PARTITIONS_START, RANGE_END, RANGE_START, RANGE_TAGS, event_date_partitions, range_tags

REPO = Path(__file__).resolve().parents[2]
START = date.fromisoformat(PARTITIONS_START)  # 2026-01-01 unless LKLAB_PARTITIONS_START moves it
DAY = timedelta(days=1)


def test_the_partitions_start_on_the_configured_date() -> None:
    assert event_date_partitions.start.date() == START
    assert event_date_partitions.get_first_partition_key() == START.isoformat()


def test_partitions_start_defaults_to_2026_01_01_and_is_an_iso_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LKLAB_PARTITIONS_START", raising=False)
    assert Settings().partitions_start == "2026-01-01"
    monkeypatch.setenv("LKLAB_PARTITIONS_START", "2025-06-01")
    assert Settings().partitions_start == "2025-06-01"
    for bad in ("2026-02-30", "20260101", "2026-1-1", "2026-W01-1", "yesterday", ""):
        with pytest.raises(ValidationError, match="is not an ISO date"):
            Settings(partitions_start=bad)


def test_lklab_partitions_start_moves_the_partition_set() -> None:
    env = {**os.environ, "LKLAB_PARTITIONS_START": "2025-06-01", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c",
         "from orchestration.partitions import event_date_partitions as p; print(p.get_first_partition_key())"],
        env=env, cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == "2025-06-01"


def test_no_dates_is_no_range() -> None:
    assert dates_to_partition_keys([]) is None


def test_dates_before_the_partition_set_are_dropped() -> None:
    assert dates_to_partition_keys([START - DAY, START - 30 * DAY]) is None
    assert dates_to_partition_keys([START - DAY, START + 2 * DAY]) == ((START + 2 * DAY).isoformat(), (START + 2 * DAY).isoformat())
    assert dates_to_partition_keys([START - DAY, START]) == (START.isoformat(), START.isoformat())  # the first day is in


def test_one_date_is_a_one_day_range() -> None:
    day = START + 10 * DAY
    assert dates_to_partition_keys([day]) == (day.isoformat(), day.isoformat())
    assert dates_to_partition_keys([day, day, day]) == (day.isoformat(), day.isoformat())


def test_unsorted_dates_give_their_min_and_max() -> None:
    dates = [START + 9 * DAY, START + 2 * DAY, START + 40 * DAY, START + 5 * DAY]
    assert dates_to_partition_keys(dates) == ((START + 2 * DAY).isoformat(), (START + 40 * DAY).isoformat())


def test_range_tags_name_the_dagster_partition_range() -> None:
    assert RANGE_TAGS == (RANGE_START, RANGE_END) == ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")
    assert range_tags("2026-01-02", "2026-01-05") == {
        "dagster/asset_partition_range_start": "2026-01-02", "dagster/asset_partition_range_end": "2026-01-05"}
    assert CHECKS_RANGE_TAGS == RANGE_TAGS  # the checks read the tags the sensor writes


def _run(tags: dict[str, str]) -> SimpleNamespace:
    return SimpleNamespace(run=SimpleNamespace(tags=tags))


def test_range_tags_round_trip_to_the_checks_dates() -> None:
    """The dates one ingest touched → partition keys → run tags → the [first, end) range the checks scope to."""
    touched = [START + 6 * DAY, START - DAY, START + 3 * DAY]
    keys = dates_to_partition_keys(touched)
    assert keys == ((START + 3 * DAY).isoformat(), (START + 6 * DAY).isoformat())
    assert run_dates(_run({"other": "x", **range_tags(*keys)})) == (START + 3 * DAY, START + 7 * DAY)  # end exclusive


def test_run_dates_of_one_partition_and_of_no_partition() -> None:
    assert run_dates(_run({"dagster/partition": "2026-03-04"})) == (date(2026, 3, 4), date(2026, 3, 5))
    assert run_dates(_run({"dagster/partition": "2026-12-31"})) == (date(2026, 12, 31), date(2027, 1, 1))
    assert run_dates(_run({})) is None  # unpartitioned: the whole table
    assert run_dates(_run({RANGE_START: "2026-01-02"})) is None  # half a range is no range
