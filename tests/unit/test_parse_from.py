"""`--from` for replays: lklab.kappa.planner.parse_from (the text) and check_start (against the log's
end offsets). Every error names the offending pair."""
from __future__ import annotations

import pytest

from lklab.kappa.planner import ReplayError, check_start, parse_from

TOPIC = "rides.events"
END = {0: 100, 1: 50, 2: 0}  # three partitions; partition 2 is empty
EXPECTED = "expected 'earliest' or pairs like 0:120,1:98"


@pytest.mark.parametrize(("value", "offsets"), [
    ("earliest", None),
    ("0:120,1:98", {0: 120, 1: 98}),
    ("1:98,0:120", {0: 120, 1: 98}),
    ("3:0", {3: 0}),
    ("0:120, 1:98", {0: 120, 1: 98}),  # spaces around pairs
    (" 0:120 ,1:98 ", {0: 120, 1: 98}),
    ("0 : 120", {0: 120}),  # and around the colon
])
def test_parses(value: str, offsets: dict[int, int] | None) -> None:
    assert parse_from(value) == offsets


@pytest.mark.parametrize(("value", "pair"), [
    ("noon", "noon"),
    ("0", "0"),  # no offset
    ("0:", "0:"),
    (":5", ":5"),
    ("0:abc", "0:abc"),
    ("0:1.5", "0:1.5"),
    ("0:1:2", "0:1:2"),
    ("0=5", "0=5"),
    ("0:120,x:5", "x:5"),  # the bad pair, not the good one before it
    ("0:120,", ""),  # a trailing comma is an empty pair
    ("", ""),
    ("Earliest", "Earliest"),  # the keyword is exact
    ("earliest,0:5", "earliest"),  # and alone
])
def test_garbage_names_the_pair(value: str, pair: str) -> None:
    with pytest.raises(ReplayError) as error:
        parse_from(value)
    assert str(error.value) == f"--from {value!r}: {pair!r} is not partition:offset; {EXPECTED}"


def test_garbage_after_a_space_still_names_the_pair() -> None:
    with pytest.raises(ReplayError, match=r"--from '0:1, x:5': ' x:5' is not partition:offset"):
        parse_from("0:1, x:5")


@pytest.mark.parametrize(("value", "pair"), [
    ("0:-1", "0:-1"),
    ("-1:5", "-1:5"),
    ("0:5,1:-20", "1:-20"),
])
def test_negatives_name_the_pair(value: str, pair: str) -> None:
    with pytest.raises(ReplayError) as error:
        parse_from(value)
    assert str(error.value) == f"--from {value!r}: {pair!r}: partitions and offsets are never negative"


@pytest.mark.parametrize(("value", "partition"), [
    ("0:1,0:2", 0),
    ("0:1,1:5,1:5", 1),  # even with the same offset
    ("2:1, 2:1", 2),
])
def test_duplicates_name_the_partition(value: str, partition: int) -> None:
    with pytest.raises(ReplayError) as error:
        parse_from(value)
    assert str(error.value) == f"--from {value!r}: partition {partition} is given twice"


@pytest.mark.parametrize("start", [None, {}, {0: 0}, {0: 100, 1: 50}, {2: 0}, {1: 49}])
def test_start_within_the_log(start: dict[int, int] | None) -> None:
    check_start(start, END, TOPIC)  # up to and including each end offset


@pytest.mark.parametrize(("start", "message"), [
    ({0: 101}, "--from 0:101: partition 0 of rides.events ends at offset 100; 101 is past its end"),
    ({2: 1}, "--from 2:1: partition 2 of rides.events ends at offset 0; 1 is past its end"),
    ({3: 0}, "--from 3:0: topic rides.events has 3 partitions (0..2); there is no partition 3"),
    ({7: 5, 0: 10}, "--from 7:5: topic rides.events has 3 partitions (0..2); there is no partition 7"),
    # Several bad pairs: the lowest partition is named first.
    ({3: 0, 1: 51}, "--from 1:51: partition 1 of rides.events ends at offset 50; 51 is past its end"),
])
def test_start_outside_the_log_names_the_pair(start: dict[int, int], message: str) -> None:
    with pytest.raises(ReplayError) as error:
        check_start(start, END, TOPIC)
    assert str(error.value) == message


def test_parsed_text_checked_against_the_log() -> None:
    check_start(parse_from("0:100, 1:7"), END, TOPIC)
    with pytest.raises(ReplayError, match=r"^--from 1:51: partition 1 of rides\.events ends at offset 50; 51 is past its end$"):
        check_start(parse_from("0:100,1:51"), END, TOPIC)
