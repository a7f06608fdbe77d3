"""The sessionization-backfill drill on real services: v1 (the midnight split) is served by both
architectures; the fix goes out as a Lambda backfill and as a Kappa replay + cutover at once while
readers poll both. Every read is scored against the oracle's (correct) sessionization."""
from __future__ import annotations

import pytest

from lklab.core.config import Settings
from lklab.drills import DrillContext
from lklab.drills.catalog import drill
from lklab.drills.result import KAPPA, LAMBDA, DrillResult
from lklab.kappa.names import output_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture
def result(isolated: Settings, spark) -> DrillResult:
    return drill("sessionization-backfill").run(DrillContext(name="sessionization-backfill", settings=isolated,
                                                             size="small", seed=3, spark=spark))


def test_the_fix_both_ways_reaches_readers_whole(result: DrillResult) -> None:
    lam, kap = result.run(LAMBDA), result.run(KAPPA)
    fixed_at = result.fault.end_s
    for run in (lam, kap):
        before = [r for r in run.reads if r.answered and r.t < fixed_at]
        assert before and all(r.error > 0 for r in before), run.arch  # v1 is wrong against the oracle, on both
        assert run.reads[-1].correct, (run.arch, run.reads[-1])  # the fix, exact
        assert run.figures.recovery_s is not None and run.figures.events_reprocessed == result.workload["events_delivered"]
        assert run.evidence["empty_reads"] == 0 and run.evidence["new_answers_not_exact"] == 0, run.evidence
        assert len(run.evidence["served_in_order"]) == 2, run.evidence  # old, then new: never back, never a third
    assert kap.evidence["served_in_order"] == [output_name("user_sessions", 1), output_name("user_sessions", 2)]
    assert [a.what for a in kap.actions if a.step][0].startswith("start user_sessions__v2")
