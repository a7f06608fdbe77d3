"""Blue/green on a live stream, on real services: v1's live job is published; events keep
arriving; v2 is started with `lklab replay` (a new consumer group from earliest), hydrates and is
swapped in while a reader polls; a candidate that is not hydrated is refused; a rollback inside
the rollback window lands on v1's still-running job; after the window v2's job retires itself and
a rollback to it is refused until it is hydrated again. Outputs are compared with the oracle."""
from __future__ import annotations

import threading
import time

import pytest

from expectations.runner import run_suite
from lklab import kappa, views
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.kappa import cutover as co
from lklab.kappa import hydration, jobs
from lklab.kappa.query import query as kappa_query
from lklab.log.generator import GeneratorConfig, generate, write_ledger
from lklab.log.produce import produce_events
from lklab.serving.progress import read_counters
from lklab.serving.store import make_engine
from tests.integration.test_cli_args import lklab
from tests.integration.test_kappa_live import caught_up, output

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
VIEW = "revenue_per_minute"
V1, V2, V3 = (kappa.output_name(VIEW, v) for v in (1, 2, 3))
WINDOW_S = 20.0  # the rollback window of this test's jobs


def stream(settings: Settings, events: list, stop: threading.Event, per_batch: int = 10, pause_s: float = 0.25) -> None:
    """A live producer: small batches at a steady pace, until done or stopped."""
    for i in range(0, len(events), per_batch):
        if stop.is_set():
            return
        produce_events(settings, events[i:i + per_batch])
        time.sleep(pause_s)


class Reader(threading.Thread):
    """Polls the published Kappa view as readers do; records each answer's version and size."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings, self.stop, self.seen, self.bad = settings, threading.Event(), [], []

    def run(self) -> None:
        engine = make_engine(self.settings)
        try:
            while not self.stop.is_set():
                answer = kappa_query(engine, VIEW)
                if answer.target is None or not answer.rows:
                    self.bad.append((answer.target, len(answer.rows)))
                self.seen.append(answer.target)
                time.sleep(0.02)
        finally:
            engine.dispose()

    def versions(self) -> list[str]:
        """The versions read, consecutive repeats collapsed: the order of the swaps readers saw."""
        return [v for i, v in enumerate(self.seen) if i == 0 or self.seen[i - 1] != v]


def test_blue_green_on_a_live_stream(isolated: Settings, spark) -> None:
    settings = isolated.model_copy(update={"kappa_checkpoint_interval_s": 0.2, "kappa_rollback_window_s": WINDOW_S,
                                           "kappa_hydration_max_lag": 200})
    workload = generate(GeneratorConfig(seed=95, duration_s=900, rides_per_minute=40))  # corrections, duplicates, 48-h-late events
    chunks = [workload.deliveries[i::6] for i in range(6)]
    assert min(len(c) for c in chunks) > 2 * settings.kappa_hydration_max_lag
    engine = make_engine(settings)
    write_ledger(engine, workload.truth)
    everything = oracle.for_view(VIEW, workload.truth)

    produce_events(settings, chunks[0])
    jobs.start(settings, VIEW, 1)
    caught_up(settings, VIEW, 1)
    first = co.cutover(settings, engine, VIEW, 1, "first publication", spark=spark, run_suite=run_suite)
    assert first.swapped, [c.summary for c in first.checks]
    kappa.replay(settings, engine, VIEW, 3)  # a bounded replay: complete, then left behind by the log

    # a candidate whose replay has not finished is refused, saying why (CLI: one line, exit 2)
    jobs.start(settings, VIEW, 4, max_rate=5)
    refused = lklab(settings, "cutover", VIEW, "--to", "4")
    assert refused.returncode == 2 and "has not finished hydrating" in refused.stderr and refused.stderr.count("\n") == 1, refused
    jobs.stop(settings, VIEW, 4)

    produce_events(settings, chunks[1])
    with pytest.raises(co.CutoverError, match=f"stays on {V1}: {V3} is not hydrated: lag {len(chunks[1])} records"):
        co.cutover(settings, engine, VIEW, 3, "behind the log", spark=spark, run_suite=run_suite)

    reader, done = Reader(settings), threading.Event()
    producer = threading.Thread(target=stream, args=(settings, chunks[2] + chunks[3], done), daemon=True)
    reader.start()
    producer.start()
    try:
        started = lklab(settings, "replay", VIEW, "--version", "2", "--wait", "120")  # the live job, from earliest
        assert started.returncode == 0 and f"{V2} hydrated" in started.stdout, started
        busy = lklab(settings, "replay", VIEW, "--version", "2", "--until-end")
        assert busy.returncode == 2 and "already running" in busy.stderr, busy  # one writer per output
        hydration.wait_until_hydrated(settings, engine, VIEW, 2, timeout_s=120)
        swapped = co.cutover(settings, engine, VIEW, 2, "blue/green", spark=spark, run_suite=run_suite)
        assert swapped.swapped, [c.summary for c in swapped.checks]
        assert [c.name for c in swapped.checks] == ["hydration", "gx", "ledger", "diff", "history"]
        assert jobs.job_status(settings, VIEW, 1).running  # the replaced version keeps running: its rollback window
        assert co.rollback(settings, engine, VIEW, "instant rollback", spark=spark) == (V2, V1)
        producer.join(timeout=120)
        caught_up(settings, VIEW, 1)
        assert kappa_query(engine, VIEW).target == V1
    finally:
        done.set()
        reader.stop.set()
        reader.join(timeout=10)
    assert not reader.bad, reader.bad[:5]  # never an empty answer, never no version
    assert reader.versions() == [V1, V2, V1], reader.versions()

    # v2 was swapped away by the rollback: its job retires once the window has passed, output kept
    deadline = time.monotonic() + WINDOW_S + 60
    while jobs.job_status(settings, VIEW, 2).running:
        assert time.monotonic() < deadline, "v2's job did not retire after its rollback window"
        time.sleep(0.5)
    assert "retiring" in jobs.log_file(settings, V2).read_text()
    assert output(settings, VIEW, 2)  # kept for audit
    produce_events(settings, chunks[4])
    with pytest.raises(co.CutoverError, match=f"stays on {V1}: {V2} is not hydrated.*lklab kappa start {VIEW} --version 2"):
        co.rollback(settings, engine, VIEW, "v2 is gone", spark=spark)

    produce_events(settings, chunks[5])
    caught_up(settings, VIEW, 1)
    assert output(settings, VIEW, 1) == everything  # the live published job, through cutover and rollback
    counters = read_counters(engine, kappa.replay_scope(VIEW, 1))
    assert counters["processed"] == len(workload.deliveries) and counters["offsets_missed"] == 0, counters
    assert [(h["action"], h["target"]) for h in co.history(engine, VIEW)] == [("cutover", V1), ("cutover", V2), ("rollback", V1)]
    assert all(h["snapshot_id"] for h in co.history(engine, VIEW))  # the rollback's snapshot is attached after the swap
    jobs.stop(settings, VIEW, 1)
    engine.dispose()


def test_two_versions_at_different_offsets_are_compared_without_the_progress_in_flight(isolated: Settings) -> None:
    """v1 stops at chunk 1's end, v2 at chunk 2's; chunk 2 is late for windows v1 holds as final (it
    interleaves the whole hour) and corrects events of chunk 1. The comparison leaves out every
    window those records touch, so two versions of the same logic show no change at all."""
    workload = generate(GeneratorConfig(seed=97, duration_s=3600, rides_per_minute=20))
    first, second = workload.deliveries[0::2], workload.deliveries[1::2]
    engine = make_engine(isolated)
    produce_events(isolated, first)
    kappa.replay(isolated, engine, VIEW, 1)
    produce_events(isolated, second)
    kappa.replay(isolated, engine, VIEW, 2)
    old, new = hydration.position(isolated, engine, VIEW, 1), hydration.position(isolated, engine, VIEW, 2)
    assert old.offsets != new.offsets
    assert as_map(new.rows) == oracle.for_view(VIEW, workload.truth)  # v2 has it all
    spec, cut = views.view(VIEW), min(views.final_through(p.watermark, isolated.allowed_lateness_s) for p in (old, new))
    final_only = [{k: v for k, v in as_map(p.rows).items() if spec.is_final(k[1], cut)} for p in (old, new)]
    assert final_only[0] != final_only[1]  # the second half reached windows both hold as final: watermarks alone are not enough
    both = hydration.comparable(isolated, engine, VIEW, old, new)
    assert "final in both" in both.basis and both.in_flight > 0 and both.old_rows, both
    assert as_map(both.old_rows) == as_map(both.new_rows)  # nothing in flight is reported as a change
    assert co.diff(both.old_rows, both.new_rows, tolerance_pct=0).passed
    engine.dispose()


def as_map(rows: list[tuple]) -> dict:
    return {(e, w): v for e, w, v in rows}
