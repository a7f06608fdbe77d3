"""The divergence drill on the real stack: refunds added in the stream code only. Lambda's
divergence gate catches it and flags the rows readers get; Kappa's readers are wrong until the
cutover's diff shows it, and correct again once the fixed replay is cut over to."""
from __future__ import annotations

import pytest

from lklab.core.config import Settings
from lklab.drills import DrillContext
from lklab.drills.catalog import drill
from lklab.drills.result import KAPPA, LAMBDA, ArchRun, DrillResult

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1200)]  # a drill of ~4 min idle, ~9 min on a loaded 2-core machine


@pytest.fixture
def result(isolated: Settings, spark) -> DrillResult:
    return drill("divergence").run(DrillContext(name="divergence", settings=isolated, size="small", seed=13, spark=spark))


def wrong_after(run: ArchRun, t: float) -> int:
    return sum(1 for r in run.reads if r.t >= t and r.answered and (r.error or 0) > 0)


def test_divergence_drill_shows_who_catches_a_one_engine_bug(result: DrillResult) -> None:
    lam, kap, fault = result.run(LAMBDA), result.run(KAPPA), result.fault
    assert wrong_after(lam, fault.start_s) > 0 and lam.figures.wrong_reader_s > 0
    assert any(s.name == "gate" and "divergence" in s.detail and s.t >= fault.start_s for s in lam.signals), lam.signals
    assert lam.evidence["reads_flagged_diverged"] > 0  # readers were told which rows
    assert not lam.evidence["detecting_batch_promoted"] and lam.evidence["forced_batch_promoted"]

    assert wrong_after(kap, fault.start_s) > 0 and kap.figures.wrong_reader_s > 0
    assert any(s.name in ("ledger", "diff") and s.t >= fault.start_s for s in kap.signals), kap.signals
    assert wrong_after(kap, fault.end_s) > 0  # the in-place fix of v1 does not repair what it wrote
    repaired = [r for r in kap.reads if r.t > kap.evidence["cut_over_at"] + 2]
    assert repaired and all(r.correct for r in repaired)  # the fixed v2, cut over to, is right
    assert kap.figures.events_reprocessed > 0
