"""The broker-faults check at size small, on real brokers it starts itself (one single broker,
one 3-broker KRaft cluster), the Faust speed worker and a live Kappa job: a kill -9 of the single
broker mid-import, of a partition leader mid-import and of a broker the consumers depend on
mid-stream loses no acknowledged event, writes none twice and counts none twice."""
from __future__ import annotations

import pytest

from lklab.chaos.catalog import check
from lklab.chaos.registry import ChaosContext
from lklab.chaos.result import CheckResult
from lklab.core.config import Settings
from lklab.kappa.freshness import running_pid
from lklab.kappa.names import output_name
from lklab.lambda_arch import speed
from lklab.log import broker as kafka_runtime

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def result(isolated: Settings) -> CheckResult:
    # no Spark: the check reads the log, the serving store and the oracle only
    return check("broker-faults").run(ChaosContext(name="broker-faults", settings=isolated, size="small", seed=5))


def test_broker_faults_lose_nothing_acknowledged(result: CheckResult, isolated: Settings) -> None:
    figures = {f.name: f for f in result.figures}
    assert result.passed, [(f.name, f.value, f.bound) for f in result.figures if not f.ok]
    for name in ("acknowledged events lost (single broker kill -9 + restart)",
                 "acknowledged events lost (leader killed during produce, RF 3, min ISR 2, acks=all)",
                 "records duplicated in the log (a producer's retries written twice)",
                 "events lost in the views (leader killed during consumption)",
                 "events double-counted in the views",
                 "batches refused during a cluster failover (the import had to be re-run)"):
        assert figures[name].value == 0, name
    assert figures["consumer failovers without a restart"].value == 2  # the speed worker and the Kappa job, one kill
    assert figures["kills (each with batches still to send)"].value == 3 == result.trials
    assert figures["longest produce stall during failover"].value <= 30

    evidence = result.evidence
    # every kill hit an import in flight, and the import went on to acknowledge every batch
    trials = evidence["single_broker"] + evidence["leader_killed_during_produce"] + evidence["leader_killed_during_consumption"]
    assert all(t["batches_left_at_kill"] > 0 for t in trials), trials
    for part in ("single", "cluster"):
        log = evidence["log"][part]
        assert log["acknowledged"] > 0 and log["records"] == log["acknowledged"] + log["records_written_again_by_a_new_import"], log
    # the single broker really went down and came back on its own data
    assert evidence["single_broker"][0]["restart_s"] > 1
    # on the cluster the killed broker led the partition, and a survivor took over
    produce = evidence["leader_killed_during_produce"][0]
    assert produce["new_leader"] != produce["victim"] and any(r.startswith("leader of partition") for r in produce["roles"])
    consume = evidence["leader_killed_during_consumption"][0]
    assert "leader of partition 0" in consume["roles"], consume
    assert all(consume["went_on_without_restart"].values()) and consume["pids_before"] == consume["pids_after"], consume
    assert all(v["equal"] and v["lost"] == 0 == v["double_counted"] for v in consume["verdicts"].values()), consume["verdicts"]

    # nothing the check started is left running
    for home in (isolated.home / "single", isolated.home / "cluster"):
        assert kafka_runtime.read_pid(Settings(home=home)) is None, home
    cluster = Settings(home=isolated.home / "cluster")
    assert speed.read_pid(cluster) is None and running_pid(cluster, output_name("revenue_per_minute", 1)) is None
