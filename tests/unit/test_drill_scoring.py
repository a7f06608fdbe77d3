"""Scoring reads against the oracle at the log's position: the incremental prefix oracle equals
the oracle's own answer on every prefix; a read is exact outside the windows in flight; a read
that lags behind the grace window is wrong by what it misses; figures add up."""
from __future__ import annotations

from datetime import timedelta

from lklab.core import oracle
from lklab.drills.readers import RawRead
from lklab.drills.result import Action, Fault, Read, Signal
from lklab.drills.scoring import PrefixOracle, figures, score
from lklab.drills.stream import LogTimeline
from lklab.log.generator import GeneratorConfig, generate

VIEW = "revenue_per_minute"


def workload():
    return generate(GeneratorConfig(seed=21, duration_s=1800, rides_per_minute=20, correction_fraction=0.3))


def test_prefix_oracle_is_the_oracle_on_every_prefix() -> None:
    events = workload().deliveries
    for view in ("revenue_per_minute", "driver_earnings_daily", "daily_active_users"):
        prefix = PrefixOracle(view, events)
        for n in (0, 1, 37, len(events) // 3, len(events) // 2, len(events)):
            assert prefix.at(n) == oracle.for_view(view, events[:n]), (view, n)


def rows_of(answer: dict) -> list[dict]:
    return [{"city": city, "window_start": minute.isoformat(), "revenue_cents": cents} for (city, minute), cents in answer.items()]


def timeline_of(events, batches: int = 10, every_s: float = 1.0) -> LogTimeline:
    timeline, size = LogTimeline(), -(-len(events) // batches)
    for i in range(batches):
        timeline.add(i * every_s, events[i * size:(i + 1) * size])
    return timeline


def test_a_read_is_exact_outside_the_windows_in_flight_and_wrong_when_it_lags() -> None:
    events = workload().deliveries
    timeline = timeline_of(events)
    prefix = PrefixOracle(VIEW, events)
    at = lambda i: prefix.at(timeline.marks[i].delivered)  # noqa: E731
    newest = timeline.marks[6].newest
    current = RawRead(6.5, 200, {"rows": rows_of(at(6)), "watermark": newest.isoformat()})
    one_back = RawRead(6.5, 200, {"rows": rows_of(at(5)), "watermark": (newest - timedelta(seconds=30)).isoformat()})
    far_back = RawRead(6.5, 200, {"rows": rows_of(at(2)), "watermark": None, "stale": True})
    refused = RawRead(6.6, 503, {"detail": "revenue_per_minute is stale: heartbeat 9s old"})
    reads = score(VIEW, [current, one_back, far_back, refused], timeline, grace_s=1.2, source=lambda b: None)
    assert reads[0].correct and reads[0].staleness_s == 0
    assert reads[1].correct and reads[1].staleness_s == 30  # within the grace window: in flight, not wrong
    missed = {k: v for k, v in at(6).items() if at(2).get(k) != v}
    assert reads[2].error > 0 and reads[2].wrong_windows <= len(missed) and reads[2].stale
    assert not reads[3].answered and reads[3].stale


def test_a_slow_answer_may_hold_what_was_delivered_while_it_was_answered() -> None:
    """A read is of some state between when it was asked and when it came back (as Jepsen times
    an operation): a slow answer holding later batches is not wrong, an instant one is."""
    events = workload().deliveries
    timeline = timeline_of(events)
    prefix = PrefixOracle(VIEW, events)
    ahead = rows_of(prefix.at(timeline.marks[8].delivered))
    slow, instant = (RawRead(5.5, 200, {"rows": ahead}, answered=answered) for answered in (8.2, None))
    slow_read, instant_read = score(VIEW, [slow, instant], timeline, grace_s=0.5, source=lambda b: None)
    assert slow_read.correct
    assert not instant_read.correct and instant_read.error > 0


def test_figures_add_up() -> None:
    reads = [Read(t=t, status=200, error=0 if t < 2 or t >= 6 else 5, staleness_s=0, windows=3, wrong_windows=0 if t < 2 or t >= 6 else 1)
             for t in range(10)]
    reads[4] = Read(t=4, status=503, stale=True)
    fault = Fault(name="x", description="x", start_s=2, end_s=5)
    found = figures(reads, [Action(t=2, what="deploy"), Action(t=5, what="fix"), Action(t=3, what="restart", by="harness")],
                    [Signal(t=1, name="lag", detail="before"), Signal(t=3.5, name="crash", detail="down")], fault, 1.0, 60)
    assert (found.wrong_reader_s, found.failed_reader_s, found.stale_reader_s, found.max_error) == (3.0, 1.0, 1.0, 5)
    assert (found.detect_s, found.detected_by, found.recovery_s, found.operator_steps) == (1.5, "crash", 1.0, 2)


def test_the_monitor_reads_each_signal_off_the_answers_once_per_episode() -> None:
    from lklab.drills.readers import Monitor
    from lklab.drills.result import KAPPA, LAMBDA

    clock = iter(range(100))
    monitor = Monitor(VIEW, lambda: float(next(clock)))
    blocked = {"gate": "gold_revenue_per_minute.divergence_revenue_per_minute", "reason": "batch and speed differ"}
    lambda_answers = [(200, {"stale": False}), (200, {"stale": True, "stale_reason": "speed heartbeat 6 s old"}),
                      (200, {"stale": True, "stale_reason": "speed heartbeat 7 s old", "batch_blocked": blocked}),
                      (503, {"detail": "revenue_per_minute is stale"}), (200, {"stale": False, "batch_blocked": blocked}),
                      (0, {}), (200, {"stale": True, "stale_reason": "speed lag 60000"})]
    for status, body in lambda_answers:
        monitor.observe(LAMBDA, RawRead(0.0, status, body))
    for status, body in [(200, {"stale": False, "version": "v1"}), (503, {"detail": "stale"}), (503, {"detail": "stale"}),
                         (200, {"stale": False, "version": "v1"})]:
        monitor.observe(KAPPA, RawRead(0.0, status, body))
    # health fires on the first stale answer, stays active through the 503, clears, fires again;
    # the gate fires once: a refused answer and an unanswered read say nothing about it
    assert [(s.name, s.detail) for s in monitor.signals[LAMBDA]] == [
        ("health", "speed heartbeat 6 s old"), ("gate", f"batch blocked by {blocked['gate']}: batch and speed differ"),
        ("health", "speed lag 60000")]
    assert [s.name for s in monitor.signals[KAPPA]] == ["lag"]
    assert [s.t for s in monitor.signals[LAMBDA]] == sorted(s.t for s in monitor.signals[LAMBDA])


def test_a_read_wholly_of_one_logic_is_correct_and_one_mixing_them_is_not() -> None:
    """A drill that deploys revenue logic v2 (tips) scores against both oracles: a whole answer of
    either logic is correct and says which; an answer whose windows mix them is wrong under both."""
    events = generate(GeneratorConfig(seed=22, duration_s=1800, rides_per_minute=20, schema_v2_fraction=0.5)).deliveries
    timeline = timeline_of(events)
    without, with_tips = (oracle.for_view(VIEW, events, logic) for logic in (1, 2))
    tipped = sorted(k for k in with_tips if with_tips[k] != without.get(k))
    assert len(tipped) > 10  # the two logics differ in many windows, so the mixed answer below differs from both
    mixed = {**without, **{k: with_tips[k] for k in tipped[: len(tipped) // 2]}}
    raw = [RawRead(9.5, 200, {"rows": rows_of(answer)}) for answer in (without, with_tips, mixed)]

    one, two, both = score(VIEW, raw, timeline, grace_s=0.5, source=lambda b: None, logics=(1, 2))
    assert (one.correct, one.logic) == (True, 1)
    assert (two.correct, two.logic) == (True, 2)
    assert not both.correct and both.wrong_windows > 0  # the nearer of the two (windows in flight left out)
    assert not score(VIEW, raw[1:2], timeline, grace_s=0.5, source=lambda b: None)[0].correct  # logic 1 only: tips are wrong


def test_a_wrong_read_that_is_whole_but_behind_is_told_apart_from_a_mix() -> None:
    """A reader behind the log (an earlier position's whole answer, under either logic) gets
    behind_s; a mix of the two logics matches no position under either; look-back is bounded."""
    events = generate(GeneratorConfig(seed=22, duration_s=1800, rides_per_minute=20, schema_v2_fraction=0.5)).deliveries
    at = {logic: PrefixOracle(VIEW, events, logic) for logic in (1, 2)}

    def reads_of(timeline: LogTimeline, asked: float) -> list[Read]:
        earlier = {logic: at[logic].at(timeline.marks[3].delivered) for logic in (1, 2)}
        tipped = sorted(k for k in earlier[2] if earlier[2][k] != earlier[1].get(k))
        assert len(tipped) > 4
        mixed = {**earlier[1], **{k: earlier[2][k] for k in tipped[: len(tipped) // 2]}}
        raw = [RawRead(asked + i / 10, 200, {"rows": rows_of(answer)}) for i, answer in enumerate((earlier[1], earlier[2], mixed))]
        return score(VIEW, raw, timeline, grace_s=0.5, source=lambda b: None, logics=(1, 2))

    one, two, mixed = reads_of(timeline_of(events), 9.5)  # position 3 is 6.5 s before the reads
    assert not any(r.correct for r in (one, two, mixed))  # all three are behind the log at 9.5 s
    assert 0 < one.behind_s <= 6.5 and 0 < two.behind_s <= 6.5 and mixed.behind_s is None
    far = reads_of(timeline_of(events, every_s=10.0), 95.0)  # position 3 is 65 s back, past the look-back
    assert [r.behind_s for r in far] == [None, None, None] and not any(r.correct for r in far)
