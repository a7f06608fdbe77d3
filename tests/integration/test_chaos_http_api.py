"""The http-api chaos check at size small, on real services (broker, Faust worker, the API as its
own process, Spark for the cutovers' GX suites): Schemathesis finds no 5xx, no multi-line error
and no conformance failure; reads during batch promotions and Kappa swaps are all whole."""
from __future__ import annotations

import pytest

from lklab.chaos.catalog import check
from lklab.chaos.registry import ChaosContext
from lklab.chaos.result import CheckResult
from lklab.core.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def result(isolated: Settings, spark) -> CheckResult:
    return check("http-api").run(ChaosContext(name="http-api", settings=isolated, size="small", seed=7, spark=spark))


def test_the_api_never_fails_a_request_and_never_serves_a_mix(result: CheckResult) -> None:
    figures = {f.name: f for f in result.figures}
    assert result.passed, [(f.name, f.shown(), f.bound) for f in result.figures if not f.ok]
    assert figures["requests Schemathesis made"].value >= 100
    for name in ("5xx answers", "error answers without a one-line detail", "Schemathesis conformance failures",
                 "mixed answers", "partial answers", "empty answers", "failed reads"):
        assert figures[name].value == 0, (name, result.evidence)
    assert figures["reads during swaps"].value >= 500
    swaps = result.evidence["swaps"]
    assert swaps["promotions"] >= 3 and swaps["cutovers"] >= 1 and swaps["rollbacks"] >= 1, swaps
    # every reference answer is distinct, so a mix of two would have been told apart
    assert result.evidence["references"]["distinct_per_architecture"], result.evidence["references"]
    assert len(result.evidence["exact_answers_by_source"]) == 4, result.evidence["exact_answers_by_source"]
