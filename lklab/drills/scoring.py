"""Every read scored against the oracle over what the log held when it was read, and the
figures derived from the scored timeline.

A live answer is never at the log's exact end: a correct pipeline answers as of some recent
position, and per partition (a produced batch lands on every partition, and is consumed part
by part). So a read is compared with the oracle over everything the log held when it was
asked, leaving out the windows in flight: those touched, in their new or their superseded
version, by the events produced during the `grace_s` before the read, by those delivered while
it was answered (a slow answer may hold them) and by the batch being acknowledged as it was
made. Every other window must be exact; the error is the sum of absolute differences over them
(a missing window counting as 0), as the cutover's diff leaves out what is in flight between two
positions."""
from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from lklab import views
from lklab.core import oracle
from lklab.core.events import Event, parse_time
from lklab.drills.readers import RawRead
from lklab.drills.result import Action, Fault, Figures, Read, Signal
from lklab.drills.stream import LogTimeline

Answer = dict[tuple[str, datetime], Any]
Forgotten = tuple[float, frozenset[str]]  # (seconds into the run the request was made, the users forgotten then)
BEHIND_LOOKBACK_S = 30.0  # how far back a wrong answer is looked for as an earlier position's whole state
ADDITIVE = ("revenue_per_minute", "driver_earnings_daily")  # a sum over final events: folded one event at a time


def parse_rows(view: str, rows: list[dict[str, Any]]) -> Answer:
    """An answer's rows (the measure's JSON shape) keyed like the oracle."""
    spec = views.view(view)
    columns = spec.value_columns
    out: Answer = {}
    for row in rows:
        values = tuple(row[c] for c in columns)
        out[(row[spec.entity], parse_time(row["window_start"]))] = values if len(values) > 1 else values[0]
    return out


class PrefixOracle:
    """The oracle's answer over the first n delivered events, for each n a mark names. Money
    views are folded incrementally (the oracle's own rule on one event at a time: retract the
    superseded version, add the new one); other views are recomputed per position asked for."""

    def __init__(self, view: str, events: list[Event], logic_version: int = 1, forgotten: frozenset[str] = frozenset()) -> None:
        self.view, self.events, self.logic_version, self.forgotten = view, events, logic_version, forgotten
        self._cache: dict[int, Answer] = {}
        self._additive = view in ADDITIVE
        self._folded_to = 0
        self._best: dict[str, Event] = {}
        self._totals: dict[tuple, int] = {}
        self._events_in: dict[tuple, int] = {}  # final events per window: a window whose payments sum to 0 is still a row
        self._keys_of_id: dict[str, set] = {}

    def touched(self, first: int, last: int) -> set:
        """The windows events[first:last] touch, with every earlier version of theirs (a correction
        retracts from the window its superseded version is in)."""
        keys: set = set()
        for event in self.events[first:last]:
            keys |= self.keys_of(event.event_id)
        return keys

    def keys_of(self, event_id: str) -> set:
        if not self._keys_of_id:
            for event in self.events:
                self._keys_of_id.setdefault(event.event_id, set()).update(self._of([event]).keys())
        return self._keys_of_id.get(event_id, set())

    def at(self, n: int) -> Answer:
        if n not in self._cache:
            self._cache[n] = self._fold_to(n) if self._additive and n >= self._folded_to else self._of(self.events[:n])
        return self._cache[n]

    def _of(self, events: list[Event]) -> Answer:
        return oracle.for_view(self.view, events, self.logic_version, self.forgotten)

    def _fold_to(self, n: int) -> Answer:
        for event in self.events[self._folded_to:n]:
            held = self._best.get(event.event_id)
            if held is not None and event.event_version <= held.event_version:
                continue
            for old_or_new, sign in ((held, -1), (event, 1)):
                if old_or_new is not None:
                    for key, value in self._of([old_or_new]).items():
                        self._totals[key] = self._totals.get(key, 0) + sign * value
                        self._events_in[key] = self._events_in.get(key, 0) + sign
            self._best[event.event_id] = event
        self._folded_to = n
        return {k: v for k, v in self._totals.items() if self._events_in[k] > 0}


def distance(actual: Mapping, expected: Mapping, leave_out: set = frozenset()) -> tuple[int, int, int]:
    """(sum of absolute differences, windows that differ, windows in either), `leave_out` left out."""
    keys = (actual.keys() | expected.keys()) - leave_out
    total = wrong = 0
    for key in keys:
        a, e = actual.get(key), expected.get(key)
        if a != e:
            wrong += 1
            total += oracle.value_distance(a, e)
    return total, wrong, len(keys)


def watermark_of(body: dict[str, Any]) -> datetime | None:
    text = body.get("watermark")
    return parse_time(text) if text else None


def score(view: str, raw: list[RawRead], timeline: LogTimeline, grace_s: float, source: Callable[[dict], str | None],
          logics: tuple[int, ...] = (1,), forgotten: Forgotten | None = None) -> list[Read]:
    """Each raw read scored (see the module's docstring). With several `logics` (a drill that
    deploys a new logic version), a read is scored against the oracle of each and keeps the
    nearest: an answer wholly of one logic is correct, one that mixes them is wrong under both.
    With `forgotten` (t, users), a read asked at t or later is scored against the oracle without
    those users' rows in views keyed by the user: serving them after a deletion request is wrong."""
    before = {logic: PrefixOracle(view, timeline.events, logic) for logic in logics}
    after = before if forgotten is None else {logic: PrefixOracle(view, timeline.events, logic, forgotten[1]) for logic in logics}
    times = [m.t for m in timeline.marks]
    scored = []
    for read in raw:
        prefixes = after if forgotten is not None and read.t >= forgotten[0] else before
        if read.status != 200:
            detail = str(read.body.get("detail", ""))
            scored.append(Read(t=read.t, status=read.status, stale="stale" in detail))
            continue
        last = bisect_right(times, read.t) - 1
        if last < 0:
            continue  # read before the log held anything: nothing to score
        answer = parse_rows(view, read.body.get("rows", []))
        answered = bisect_right(times, read.answered_t) - 1
        by_logic = {logic: _distance_at(answer, prefix, timeline, times, last, read.t, grace_s, answered)
                    for logic, prefix in prefixes.items()}
        logic = min(by_logic, key=lambda k: by_logic[k][0])
        error, wrong, windows = by_logic[logic]
        newest, wm = timeline.marks[last].newest, watermark_of(read.body)
        staleness = None if newest is None or wm is None else max(0.0, (newest - wm).total_seconds())
        behind = None if error == 0 else _behind_s(answer, list(prefixes.values()), timeline, times, last, read.t, grace_s)
        scored.append(Read(t=read.t, status=200, stale=bool(read.body.get("stale")), staleness_s=staleness, error=error,
                           wrong_windows=wrong, windows=windows, source=source(read.body), logic=_told_apart(logic, by_logic),
                           behind_s=behind))
    return scored


def _behind_s(answer: Answer, prefixes: list[PrefixOracle], timeline: LogTimeline, times: list[float], last: int, asked: float,
              grace_s: float) -> float | None:
    """Seconds from the latest earlier log position (of the last BEHIND_LOOKBACK_S) whose oracle,
    under any scored logic, a wrong answer equals whole, to the read; None when there is none."""
    first = bisect_left(times, asked - BEHIND_LOOKBACK_S)
    k = _latest_whole_position(answer, prefixes, timeline, times, first, last - 1, grace_s)
    return None if k is None else round(asked - times[k], 3)


def _told_apart(nearest: int, by_logic: dict[int, tuple[int, int, int]]) -> int | None:
    """The nearest logic, when scoring asked for more than one and no other is as near."""
    if len(by_logic) < 2 or any(k != nearest and v[0] == by_logic[nearest][0] for k, v in by_logic.items()):
        return None
    return nearest


def _distance_at(answer: Answer, prefix: PrefixOracle, timeline: LogTimeline, times: list[float], last: int, asked: float,
                 grace_s: float, answered: int | None = None) -> tuple[int, int, int]:
    """distance() from the oracle over what the log held at mark `last`, the windows in flight
    around it left out: those of the events of the `grace_s` before `asked`, of the batches
    delivered while the read was answered (to mark `answered`: a slow answer may already hold
    them), and of the next batch."""
    first = max(0, min(last, bisect_left(times, asked - grace_s) - 1))
    until = timeline.marks[min(max(last, answered or 0) + 1, len(timeline.marks) - 1)].delivered
    in_flight = prefix.touched(timeline.marks[first].delivered, until)
    return distance(answer, prefix.at(timeline.marks[last].delivered), in_flight)


def matches_some_position(view: str, rows: list[dict[str, Any]], timeline: LogTimeline, since: float, asked: float,
                          grace_s: float, prefix: PrefixOracle | None = None) -> bool:
    """Whether an answer equals the oracle over what the log held at some mark between `since`
    and `asked` (windows in flight at that mark left out, as in score): an answer that is behind
    but whole. A torn write (part of one commit) or a double-applied one matches no position."""
    prefix = prefix or PrefixOracle(view, timeline.events)
    times = [m.t for m in timeline.marks]
    first = max(0, bisect_left(times, since) - 1)
    return _latest_whole_position(parse_rows(view, rows), [prefix], timeline, times, first, bisect_right(times, asked) - 1, grace_s) is not None


def _latest_whole_position(answer: Answer, prefixes: list[PrefixOracle], timeline: LogTimeline, times: list[float], first: int,
                           last: int, grace_s: float) -> int | None:
    """The latest mark in [first, last] whose oracle, under any of `prefixes`, the answer equals
    whole (the windows in flight at that mark left out); None when there is none."""
    for k in range(last, first - 1, -1):
        if any(_distance_at(answer, prefix, timeline, times, k, times[k], grace_s)[0] == 0 for prefix in prefixes):
            return k
    return None


def reader_seconds(reads: list[Read], picked: Callable[[Read], bool], interval_s: float) -> float:
    """Seconds of reads that `picked`: each read stands for the time to the next (at most 2 intervals)."""
    total = 0.0
    for i, read in enumerate(reads):
        if picked(read):
            gap = reads[i + 1].t - read.t if i + 1 < len(reads) else interval_s
            total += min(gap, 2 * interval_s)
    return round(total, 2)


def figures(reads: list[Read], actions: list[Action], signals: list[Signal], fault: Fault, interval_s: float,
            stale_budget_s: float, **measured: Any) -> Figures:
    """The derived figures of one architecture's run; `measured` adds what the drill counted
    itself (events_reprocessed, events_lost, events_double_counted)."""
    stale = lambda r: r.stale or (r.staleness_s is not None and r.staleness_s > stale_budget_s)  # noqa: E731
    after_start = [s for s in signals if fault.start_s is not None and s.t >= fault.start_s]
    first = min(after_start, key=lambda s: s.t, default=None)
    recovered = next((r for r in reads if fault.end_s is not None and r.t >= fault.end_s and r.correct), None)
    return Figures(
        reads=len(reads),
        wrong_reader_s=reader_seconds(reads, lambda r: r.answered and (r.error or 0) > 0, interval_s),
        stale_reader_s=reader_seconds(reads, stale, interval_s),
        failed_reader_s=reader_seconds(reads, lambda r: not r.answered, interval_s),
        max_error=max((r.error or 0 for r in reads), default=0),
        detect_s=None if first is None else round(first.t - fault.start_s, 2),
        detected_by=None if first is None else first.name,
        recovery_s=None if recovered is None else round(recovered.t - fault.end_s, 2),
        operator_steps=sum(a.step for a in actions),
        **measured,
    )
