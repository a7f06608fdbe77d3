"""The two-tier split of a replay's offsets (pure logic) and snapshot compatibility rules."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lklab.engine import snapshots
from lklab.lake.tiers import BRONZE, KAFKA, LOST, TierRange, needs_bronze, plan_ranges


def test_bronze_serves_below_kafka_retention_and_kafka_takes_over_at_its_first_offset() -> None:
    ranges = plan_ranges({0: 0, 1: 5}, {0: 100, 1: 50}, {0: 40, 1: 0}, {0: [(0, 60)]})
    assert ranges == [TierRange(0, 0, 40, BRONZE), TierRange(0, 40, 100, KAFKA), TierRange(1, 5, 50, KAFKA)]


def test_holes_in_bronze_below_retention_are_lost() -> None:
    ranges = plan_ranges({0: 10}, {0: 100}, {0: 80}, {0: [(0, 20), (30, 50), (60, 90)]})
    assert ranges == [TierRange(0, 10, 20, BRONZE), TierRange(0, 20, 30, LOST), TierRange(0, 30, 50, BRONZE),
                      TierRange(0, 50, 60, LOST), TierRange(0, 60, 80, BRONZE), TierRange(0, 80, 100, KAFKA)]


def test_nothing_to_read_and_a_log_fully_expired() -> None:
    assert plan_ranges({0: 100}, {0: 100}, {0: 100}, {}) == []
    assert plan_ranges({}, {0: 30}, {0: 30}, {}) == [TierRange(0, 0, 30, LOST)]
    assert needs_bronze({0: 0, 1: 30}, {0: 30, 1: 30}, {0: 30, 1: 30}) == {0: 30}


runs = st.lists(st.tuples(st.integers(0, 200), st.integers(1, 40)), max_size=5).map(
    lambda xs: sorted({(a, a + n) for a, n in xs}))


@given(start=st.integers(0, 250), length=st.integers(0, 100), first=st.integers(0, 300), bronze=runs)
def test_the_tiers_cover_the_requested_offsets_exactly_once_in_order(start, length, first, bronze) -> None:
    ranges = plan_ranges({0: start}, {0: start + length}, {0: first}, {0: bronze})
    offsets = [o for r in ranges for o in range(r.start, r.end)]
    assert offsets == list(range(start, start + length))  # no gap, no overlap, in offset order
    for r in ranges:
        held = any(a <= r.start and r.end <= b for a, b in bronze)
        assert r.tier == (KAFKA if r.start >= first else BRONZE if held else LOST)
        assert r.tier == KAFKA or r.end <= first


def _snapshot(view: str = "user_sessions", logic: int = 1, schema: int = 1) -> snapshots.Snapshot:
    return snapshots.Snapshot(snapshot_id="s1", view=view, source_output=f"{view}__v1", topic="t", created_at=datetime.now(timezone.utc),
                              git_sha="x", logic_version=logic, schema_version=schema, offsets={0: 1}, max_event_times={0: None},
                              row_counts={}, checksum="0", location="/nowhere", delta_versions={})


def test_a_snapshot_of_other_logic_or_schema_needs_a_declared_migration() -> None:
    assert snapshots.migrations_for(_snapshot(logic=1), "user_sessions", 1, 1) == []
    assert len(snapshots.migrations_for(_snapshot(logic=1), "user_sessions", 2, 1)) == 1  # the midnight fix, declared
    with pytest.raises(snapshots.SnapshotError, match="logic version 2, the replay needs 1"):
        snapshots.migrations_for(_snapshot(logic=2), "user_sessions", 1, 1)
    with pytest.raises(snapshots.SnapshotError, match="schema version 2, the replay needs 1"):
        snapshots.migrations_for(_snapshot(schema=2), "user_sessions", 1, 1)
    with pytest.raises(snapshots.SnapshotError, match="is of revenue_per_minute, not user_sessions"):
        snapshots.migrations_for(_snapshot(view="revenue_per_minute"), "user_sessions", 1, 1)


def test_the_checksum_covers_the_metadata_as_well_as_the_content() -> None:
    meta = {"view": "v", "logic_version": 1, "schema_version": 1, "topic": "t", "offsets": {"0": 10}}
    base = snapshots.checksum(meta, {"state": [3, "123"]})
    assert base != snapshots.checksum({**meta, "offsets": {"0": 11}}, {"state": [3, "123"]})
    assert base != snapshots.checksum(meta, {"state": [3, "124"]})
    assert base == snapshots.checksum(dict(reversed(list(meta.items()))), {"state": [3, "123"]})
