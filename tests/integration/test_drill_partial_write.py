"""The partial-write drill on real services (broker, Faust worker, Kappa job processes, Spark,
`lklab batch` and `lklab cutover` as processes, the HTTP API): each kill -9 really happened
(inside the promote and swap transactions, and repeatedly on the live Kappa job), readers of
both architectures saw no empty and no mixed answer, the alias stayed on a whole version, and
every rebuild (Lambda from gold, Kappa by replay and by snapshot + replay) equals the oracle."""
from __future__ import annotations

import pytest

from lklab.core.config import Settings
from lklab.drills import DrillContext
from lklab.drills.catalog import drill
from lklab.drills.result import KAPPA, LAMBDA, DrillResult
from lklab.kappa.names import output_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]
V1 = output_name("revenue_per_minute", 1)


@pytest.fixture
def result(isolated: Settings, spark) -> DrillResult:
    return drill("partial-write").run(DrillContext(name="partial-write", settings=isolated, size="small", seed=11, spark=spark))


def test_partial_write_on_both_architectures(result: DrillResult) -> None:
    windows = {w["name"]: w for w in result.evidence["kill_windows"]}
    assert set(windows) == {"Kappa checkpoints", "batch promotion", "cutover"}

    # every kill happened: a SIGKILLed pid, gone; the batch and the cutover inside their transaction
    for window in windows.values():
        assert window["kills"] and all(k["killed"] for k in window["kills"]), window["kills"]
    assert len(windows["Kappa checkpoints"]["kills"]) >= 3
    assert len({k["pid"] for k in windows["Kappa checkpoints"]["kills"]}) == len(windows["Kappa checkpoints"]["kills"])
    for name in ("batch promotion", "cutover"):
        assert windows[name]["kills"][0]["in_transaction"], windows[name]

    # readers of both architectures: answers throughout, none empty, none mixed
    for window in windows.values():
        for arch in (LAMBDA, KAPPA):
            counts = window["reads"][arch]
            assert counts["reads"] > 0, (window["name"], arch)
            assert counts["empty"] == 0 and counts["mixed"] == 0, (window["name"], arch, counts)
    # the killed swap left the alias on the whole old version
    assert windows["cutover"]["after"] == V1
    assert windows["cutover"]["reads"][KAPPA]["sources"] == [V1]
    assert len(windows["batch promotion"]["reads"][LAMBDA]["sources"]) == 1  # the killed build never reached a reader

    # each rebuild equals the oracle, and no reader saw it before it was published
    rebuilds = result.evidence["rebuilds"]
    assert [r["arch"] for r in rebuilds] == [LAMBDA, KAPPA, KAPPA]
    for rebuild in rebuilds:
        assert rebuild["rows_deleted"] > 0 and rebuild["equals_oracle"], rebuild
        assert rebuild["seen_before_publish"] == 0, rebuild
    replay, snapshot = rebuilds[1], rebuilds[2]
    assert 0 < snapshot["events_reprocessed"] < replay["events_reprocessed"], (snapshot, replay)
