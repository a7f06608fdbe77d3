"""The schema drill on real services (broker, Faust worker, Kappa job processes, Spark, the
batch layer through Dagster, the HTTP API): the rename is refused by the check; records that
bypass it are dead-lettered by both architectures with their reason while readers stay exact;
revenue logic v2 (tips) reaches both architectures' readers over mixed v1/v2 history, each read
scored against the oracle of each logic, and Kappa's cutover never serves a mix of the two."""
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
    return drill("schema").run(DrillContext(name="schema", settings=isolated, size="small", seed=13, spark=spark))


def test_schema_drill_on_both_architectures(result: DrillResult) -> None:
    check = result.evidence["schema_check"]
    assert not check["compatible"] and any("'amount_cents' removed (renamed to 'amount_minor'?)" in b for b in check["breaking"])

    fault = result.fault
    for arch in (LAMBDA, KAPPA):
        run = result.run(arch)
        dead = run.evidence["dead_lettered"]
        assert dead["records"] == result.evidence["bypassed_records"] > 0, dead
        assert dead["reasons"] and all(reason for reason in dead["reasons"]), dead
        during = [r for r in run.reads if fault.start_s <= r.t <= fault.end_s and r.answered]
        assert during and all(r.correct or r.behind_s is not None for r in during), (arch, [r for r in during if not r.correct][:3])  # right, or behind but whole
        assert any(s.name == "dead-letter" and fault.start_s <= s.t <= fault.end_s for s in run.signals), run.signals
        # the end state: every reader is on the new logic, exact
        last = [r for r in run.reads if r.answered][-3:]
        assert all(r.correct and r.logic == 2 for r in last), (arch, last)

    kappa = result.run(KAPPA)
    assert kappa.evidence["cutover_checks"]["history"] == "pass", kappa.evidence
    assert kappa.evidence["logic_change"]["mixed_reader_s"] == 0, kappa.evidence["logic_change"]  # one alias swap: never a mix
    assert {r.source for r in kappa.reads if r.answered and r.logic == 2} == {output_name("revenue_per_minute", 2)}
    lam = result.run(LAMBDA)
    assert lam.evidence["backfill_promoted"] or lam.evidence["gate_override_promoted"], lam.evidence
