"""The crash-loop drill on real services (broker, Faust worker, Kappa job processes, Spark batch,
the HTTP API): the bad deploy crash-loops both stream layers on the poison event; Lambda readers
are flagged stale (batch-only), Kappa readers fall behind; the fix recovers Kappa; the shadow
guardrail never reaches readers. Every read is scored against the oracle."""
from __future__ import annotations

import pytest

from lklab.core.config import Settings
from lklab.drills import DrillContext
from lklab.drills.catalog import drill
from lklab.drills.result import KAPPA, LAMBDA, DrillResult
from lklab.kappa.names import output_name

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
V1, V2 = output_name("revenue_per_minute", 1), output_name("revenue_per_minute", 2)


@pytest.fixture
def result(isolated: Settings, spark) -> DrillResult:
    return drill("crash-loop").run(DrillContext(name="crash-loop", settings=isolated, size="small", seed=5, spark=spark))


def test_crash_loop_on_both_architectures(result: DrillResult, tmp_path) -> None:
    lam, kap = result.run(LAMBDA), result.run(KAPPA)
    start, end = result.fault.start_s, result.fault.end_s
    assert lam.figures.reads > 40 and kap.figures.reads > 40

    # before the bad deploy Kappa answers what the log held, whole: exactly, or (a loaded machine)
    # an earlier position's state, never a wrong one (the scoring works)
    steady = [r for r in kap.reads if r.t < start]
    assert steady and all(r.correct or r.behind_s is not None for r in steady), [(r.t, r.error) for r in steady if not r.correct][:5]

    # the crash loop happened, on both, and was seen
    assert lam.evidence["restarts"] >= 1 and kap.evidence["restarts"] >= 1, (lam.evidence, kap.evidence)
    assert lam.figures.detected_by in ("health", "crash") and kap.figures.detected_by in ("lag", "crash")

    # Lambda fell back to batch-only and said so: stale-flagged answers during the fault
    during = [r for r in lam.reads if start <= r.t <= end]
    assert any(r.stale and r.source == "batch-only" for r in during), [(r.t, r.stale, r.source) for r in during]
    # Kappa kept serving v1's last answer: it fell behind the log (measured, beyond the stale budget)
    assert kap.figures.stale_reader_s > 0 and kap.figures.max_error > 0
    # the fix: Kappa is exactly right again
    assert kap.figures.recovery_s is not None
    assert lam.reads[-1].source == "lambda" and not lam.reads[-1].stale

    # the guardrail: the shadow crash-looped, the cutover refused it, readers kept v1 and stayed right
    guard = result.evidence["guardrail"]
    assert guard["shadow_restarts"] >= 1 and guard["cutover_refused"], guard
    assert guard["published_during_shadow"] == [V1]
    t0, t1 = guard["window_s"]
    shadowed = [r for r in kap.reads if t0 <= r.t <= t1]
    assert shadowed and all(r.correct or r.behind_s is not None for r in shadowed), [(r.t, r.error) for r in shadowed if not r.correct][:5]

    # the result round-trips and plots
    from lklab.drills.plot import timeline

    assert DrillResult.load(result.write(tmp_path / "r.json")) == result
    assert timeline(result, tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
