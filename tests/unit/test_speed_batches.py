"""streaming.batches: how the batch source orders one fetch across partitions (in_timestamp_order),
and what it keeps of a fetch that overlapped a rebalance (not_raced)."""
from __future__ import annotations

from aiokafka import ConsumerRecord, TopicPartition
from hypothesis import given, strategies as st

from streaming.batches import in_timestamp_order, not_raced

timestamps = st.lists(st.integers(min_value=0, max_value=10_000), max_size=30)


def fetch(per_partition: list[list[int]]) -> dict[TopicPartition, list[ConsumerRecord]]:
    return {TopicPartition("t", p): [ConsumerRecord("t", p, offset, ts, 0, None, b"", None, 0, 0, ())
                                     for offset, ts in enumerate(stamps)]
            for p, stamps in enumerate(per_partition)}


@given(st.lists(timestamps, min_size=1, max_size=5))
def test_every_record_once_and_each_partition_in_offset_order(per_partition: list[list[int]]) -> None:
    merged = in_timestamp_order(fetch(per_partition))
    assert len(merged) == sum(map(len, per_partition))
    for p, stamps in enumerate(per_partition):
        assert [m.offset for m in merged if m.partition == p] == list(range(len(stamps)))


@given(st.lists(timestamps.map(sorted), min_size=1, max_size=5))
def test_partitions_interleave_by_timestamp(per_partition: list[list[int]]) -> None:
    """Arrival order across partitions, not a partition at a time: the watermark is the slowest
    partition's, so applying one partition whole first judges the last one's events late."""
    merged = in_timestamp_order(fetch(per_partition))
    assert [m.timestamp for m in merged] == sorted(ts for stamps in per_partition for ts in stamps)


def test_a_burst_of_one_millisecond_interleaves_its_partitions() -> None:
    merged = in_timestamp_order(fetch([[7] * 4, [7] * 4, [7] * 2]))
    assert [m.partition for m in merged] == [0, 1, 2, 0, 1, 0, 1, 2, 0, 1]


def test_a_fetch_that_overlapped_an_assignment_keeps_only_partitions_it_cannot_have_read_twice() -> None:
    """Partition 0 was sought to the store's offset during the fetch (its records may be Kafka's
    older copy), 1 has no progress in the store (not sought), 2 went to another worker."""
    fetched = fetch([[1, 2], [3], [4]])
    tp = [TopicPartition("t", p) for p in range(3)]
    kept = not_raced(fetched, assigned={tp[0], tp[1]}, sought={tp[0]: 1}, reassigned=True)
    assert kept == {tp[1]: fetched[tp[1]]}
    same_generation = not_raced(fetched, assigned={tp[0], tp[1]}, sought={tp[0]: 1}, reassigned=False)
    assert same_generation == {tp[0]: fetched[tp[0]], tp[1]: fetched[tp[1]]}
