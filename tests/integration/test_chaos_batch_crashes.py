"""The batch-crashes chaos check at small size on real services (broker, Spark, the serving store,
`lklab batch` as its own process): the batch is killed with kill -9 inside its promotion
transaction, after its gates passed; a reader thread never sees anything but the previous build,
whole; the Delta tables read at their last commit; the killed run's lease is taken over and the
next run, with no new event, serves exactly the oracle."""
from __future__ import annotations

import pytest

from lklab.chaos.catalog import check
from lklab.chaos.registry import ChaosContext
from lklab.chaos.result import CheckResult
from lklab.core.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def result(isolated: Settings, spark) -> CheckResult:
    return check("batch-crashes").run(ChaosContext(name="batch-crashes", settings=isolated, size="small", seed=7, spark=spark))


def test_a_batch_killed_in_its_promotion_leaves_the_previous_build_served_and_the_next_run_converges(result: CheckResult) -> None:
    assert result.passed, [f.model_dump() for f in result.figures if not f.ok]
    assert result.trials == 1 and result.figure("kills landed in their phase").value == 1
    assert result.figure("reads that saw a partial or mixed build").value == 0
    assert result.figure("reads that saw anything but the previous build during a killed run").value == 0
    assert result.figure("next run equals the oracle").ok
    assert result.figure("Delta tables readable at their last commit after every kill").ok
    assert result.figure("killed runs still holding a lease after the next run").value == 0

    [trial] = result.evidence["trials"]
    assert trial["phase"] == "between gates and promotion" and trial["returncode"] == -9, trial
    assert trial["reads_after_kill"] >= 5 and trial["reads"] > trial["reads_after_kill"], trial
    # the kill left the run holding its dates; the next run took them over (the lease timeout is short here)
    assert trial["lease_after_kill"] == "running", trial
    assert trial["lease_after_next_run"].startswith("failed (lease expired"), trial
    # the killed run committed bronze, silver and gold before it died: versions no served build references
    assert all(trial["commits_at_kill"][t] > trial["commits_before"][t] for t in trial["commits_before"]), trial
    assert result.evidence["final_build"] not in (None, result.evidence["previous_build"])
