"""The bad-input chaos check on real services (broker, `lklab produce` as a process, the Faust
speed worker, a live Kappa job): hypothesis-drawn bad lines and foreign records are each
dead-lettered once, with a reason and their bytes, by the import or by each consumer; the good
ones all arrive; no consumer stops; the views equal the oracle."""
from __future__ import annotations

import pytest

from lklab.chaos.catalog import check
from lklab.chaos.registry import ChaosContext
from lklab.chaos.result import CheckResult
from lklab.core.config import Settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def result(isolated: Settings, spark) -> CheckResult:
    return check("bad-input").run(ChaosContext(name="bad-input", settings=isolated, size="small", seed=7, spark=spark))


def test_every_bad_input_is_dead_lettered_once_and_nothing_stops(result: CheckResult) -> None:
    figures = {f.name: f for f in result.figures}
    assert result.passed, [(f.name, f.value, f.bound) for f in result.figures if not f.ok]

    imported, foreign = result.evidence["import"], result.evidence["foreign"]
    bad_lines, bad_records = sum(imported["bad_by_class"].values()), sum(foreign["bad_by_class"].values())
    assert bad_lines >= 100 and bad_records >= 20 and len(imported["bad_by_class"]) >= 20
    assert figures["import: bad lines dead-lettered"].value == bad_lines
    assert figures["import: good lines on the log"].value == imported["good"] > 0
    for consumer in ("speed worker", "Kappa job"):
        assert figures[f"{consumer}: foreign bad records dead-lettered"].value == bad_records
    for name in ("dead letters naming no injected bad input, or one already named", "dead letters without a one-line reason",
                 "dead letters whose raw bytes differ from the input (input naming PII aside)",
                 "consumer processes that stopped or restarted",
                 "lklab produce: tracebacks or stderr lines that are not one dead letter each"):
        assert figures[name].value == 0, (name, result.evidence)
    assert figures["views of the good events equal the oracle (speed layer's 3, Kappa revenue_per_minute v1)"].ok

    # blank lines are skipped: neither accepted nor dead-lettered (the counts above hold without them)
    assert imported["blank"] >= 2 and imported["cli_exit"] == 0
    # what the CLI said matches what reached Kafka, and its reasons were printed whole (markup included)
    assert imported["cli_summary"][0].startswith(f"accepted {imported['good']}, dead-lettered {bad_lines} (to ")
    reasons = result.evidence["dead_letters"]["import"]["sample_reasons"]
    assert "[/bold] x" in reasons["markup in a reason (crashed the CLI's output)"]
    assert "nested deeper than" in reasons["deep nesting (RecursionError in every parser)"]
    assert "not UTF-8" in reasons["bytes not UTF-8 (replaced on import; crashed the consumers)"]
    assert "is greater than the maximum" in reasons["amount_cents 2**70 (accepted; SQLite cannot hold it)"]
    assert "accepts at most" in reasons["larger than the topic takes"] or "too long" in reasons["larger than the topic takes"]
    # the foreign record over the broker's own limit never reached lklab
    assert result.evidence["broker, record over its limit"].startswith("refused by the broker")
