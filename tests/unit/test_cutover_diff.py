"""The cutover's diff gate (lklab.kappa.cutover.diff) on hand-written published/new versions,
every expected number worked out by hand in the comments."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from lklab import views
from lklab.kappa.cutover import diff

W0 = datetime(2026, 11, 17, 10, 0, tzinfo=timezone.utc)
W1 = W0 + timedelta(minutes=1)
D0 = datetime(2026, 11, 17, tzinfo=timezone.utc)
SESSIONS = views.view("user_sessions").measure.size  # what the cutover compares for sessionized rows


def test_changed_added_and_removed_windows_with_totals() -> None:
    old = [("berlin", W0, 100), ("berlin", W1, 200), ("paris", W0, 300), ("paris", W1, 50)]
    new = [("berlin", W0, 100), ("berlin", W1, 210), ("paris", W0, 300), ("rome", W0, 45)]
    # changed: berlin W1 200 → 210 (|10|); added: rome W0 45; removed: paris W1 50.
    # |change| = 10 + 45 + 50 = 105; published total = 100 + 200 + 300 + 50 = 650;
    # new total = 100 + 210 + 300 + 45 = 655; 105 / 650 = 16.1538…%.
    check = diff(old, new, tolerance_pct=20)
    assert check.name == "diff"
    assert check.passed and check.status == "pass"
    assert check.summary == ("1 changed, 1 added, 1 removed of 4 published rows; total 650 → 655; "
                             "|change| 105 = 16.154% (tolerance 20%)")
    assert check.lines == (
        "berlin 2026-11-17T10:01:00+00:00: 200 → 210 (+10)",
        "rome 2026-11-17T10:00:00+00:00: new row 45",
        "paris 2026-11-17T10:01:00+00:00: row gone (was 50)",
    )
    # The same change against a tolerance below 16.154 % fails.
    assert not diff(old, new, tolerance_pct=16).passed
    assert diff(old, new, tolerance_pct=16.2).passed


def test_identical_versions_pass_even_at_zero_tolerance() -> None:
    rows = [("berlin", W0, 100), ("paris", W0, -40)]
    check = diff(rows, list(reversed(rows)), tolerance_pct=0)
    assert check.passed and check.lines == ()
    assert check.summary == ("0 changed, 0 added, 0 removed of 2 published rows; total 60 → 60; "
                             "|change| 0 = 0.000% (tolerance 0%)")


def test_a_decrease_counts_as_much_as_an_increase() -> None:
    old = [("berlin", W0, 100), ("berlin", W1, 100)]
    # 100 → 90 moves 10 of 200 = 5 %: the sign of the change does not matter.
    check = diff(old, [("berlin", W0, 90), ("berlin", W1, 100)], tolerance_pct=5)
    assert check.passed and check.lines == ("berlin 2026-11-17T10:00:00+00:00: 100 → 90 (-10)",)
    assert "|change| 10 = 5.000% (tolerance 5%)" in check.summary
    assert not diff(old, [("berlin", W0, 90), ("berlin", W1, 100)], tolerance_pct=4.999).passed


@pytest.mark.parametrize(("new_value", "summary_tail", "passes"), [
    # Published |values|: |-100| + |100| = 200 (a refund-heavy window counts by its size, not its sign).
    (-101, "total 0 → -1; |change| 1 = 0.500% (tolerance 0.5%)", True),  # moves 1 of 200: exactly 0.5 %, passes
    (-102, "total 0 → -2; |change| 2 = 1.000% (tolerance 0.5%)", False),  # moves 2 of 200: 1.0 %, above, fails
])
def test_tolerance_boundary_exactly_at_passes_above_fails(new_value: int, summary_tail: str, passes: bool) -> None:
    old = [("berlin", W0, -100), ("berlin", W1, 100)]
    check = diff(old, [("berlin", W0, new_value), ("berlin", W1, 100)], tolerance_pct=0.5)
    assert check.passed is passes
    assert check.status == ("pass" if passes else "fail")
    assert check.summary == "1 changed, 0 added, 0 removed of 2 published rows; " + summary_tail


def test_removing_every_row_is_a_100_percent_change() -> None:
    old = [("berlin", W0, 30), ("paris", W0, 70)]
    # |change| = 30 + 70 = 100 of 100: exactly 100 %, which only the largest tolerance admits.
    assert diff(old, [], tolerance_pct=100).passed
    check = diff(old, [], tolerance_pct=99.9)
    assert not check.passed
    assert check.summary == ("0 changed, 0 added, 2 removed of 2 published rows; total 100 → 0; "
                             "|change| 100 = 100.000% (tolerance 99.9%)")
    assert check.lines == ("berlin 2026-11-17T10:00:00+00:00: row gone (was 30)",
                           "paris 2026-11-17T10:00:00+00:00: row gone (was 70)")


def test_sessionized_values_are_compared_by_session_count() -> None:
    old = [("u1", D0, (2, 60_000)), ("u2", D0, (1, 5_000))]
    new = [("u1", D0, (2, 90_000)),  # same 2 sessions, longer: not a change
           ("u2", D0, (3, 7_000))]   # 1 → 3 sessions: changed by 2
    # Published size = 2 + 1 = 3 sessions; new = 2 + 3 = 5; |change| 2 of 3 = 66.667 %.
    check = diff(old, new, tolerance_pct=70, size=SESSIONS)
    assert check.passed
    assert check.summary == ("1 changed, 0 added, 0 removed of 2 published rows; total 3 → 5; "
                             "|change| 2 = 66.667% (tolerance 70%)")
    assert check.lines == ("u2 2026-11-17T00:00:00+00:00: 1 → 3 (+2)",)
    assert not diff(old, new, tolerance_pct=66.6, size=SESSIONS).passed


def test_sessionized_duration_alone_never_moves_the_gate() -> None:
    old = [("u1", D0, (1, 1_000))]
    check = diff(old, [("u1", D0, (1, 86_400_000))], tolerance_pct=0, size=SESSIONS)
    assert check.passed and check.lines == ()
    assert "0 changed" in check.summary and "total 1 → 1" in check.summary


def test_an_empty_published_version_against_an_empty_new_one() -> None:
    check = diff([], [], tolerance_pct=0)
    assert check.passed and check.lines == ()
    assert check.summary == ("0 changed, 0 added, 0 removed of 0 published rows; total 0 → 0; "
                             "|change| 0 = 0.000% (tolerance 0%)")


def test_rows_over_an_empty_published_version_fail_at_any_tolerance() -> None:
    # Nothing published to be relative to: 10 new cents are more than any share of nothing.
    check = diff([], [("berlin", W0, 10)], tolerance_pct=100)
    assert not check.passed
    assert check.summary.startswith("0 changed, 1 added, 0 removed of 0 published rows; total 0 → 10; |change| 10 = ")
    assert check.lines == ("berlin 2026-11-17T10:00:00+00:00: new row 10",)


def test_lines_are_capped_but_the_counts_cover_every_row() -> None:
    old = [(f"c{i:02d}", W0, 10) for i in range(25)] + [(f"r{i:02d}", W0, 1) for i in range(12)]
    new = [(f"c{i:02d}", W0, 11) for i in range(25)] + [(f"a{i:02d}", W0, 1) for i in range(12)]
    # 25 changed by 1, 12 added of 1, 12 removed of 1: |change| 49 of 25*10 + 12 = 262 → 18.702 %.
    check = diff(old, new, tolerance_pct=20)
    assert check.passed
    assert check.summary == ("25 changed, 12 added, 12 removed of 37 published rows; total 262 → 287; "
                             "|change| 49 = 18.702% (tolerance 20%)")
    assert len(check.lines) == 20 + 10 + 10
    assert check.lines[0] == "c00 2026-11-17T10:00:00+00:00: 10 → 11 (+1)"  # sorted by key
    assert check.lines[19].startswith("c19 ") and check.lines[20] == "a00 2026-11-17T10:00:00+00:00: new row 1"
    assert check.lines[-1] == "r09 2026-11-17T10:00:00+00:00: row gone (was 1)"
