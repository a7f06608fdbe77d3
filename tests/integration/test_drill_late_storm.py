"""The late-storm drill on real services (broker, Faust worker, Kappa job processes, Spark batch,
the HTTP API), small size: allowed lateness 60 s and 48 h, each its own live lab on the same
workload and storm. With 60 s the speed layer leaves the storm to batch and Lambda readers are
wrong until the batch run; with 48 h nothing is left to batch; Kappa never closes a window, so it
is right under both, and its state is measured in bytes. Every read is scored against the oracle."""
from __future__ import annotations

import pytest

from lklab.core.config import Settings
from lklab.drills import DrillContext
from lklab.drills.catalog import drill
from lklab.drills.result import DrillResult

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


@pytest.fixture
def result(isolated: Settings, spark) -> DrillResult:
    return drill("late-storm").run(DrillContext(name="late-storm", settings=isolated, size="small", seed=7, spark=spark))


def test_late_storm_sweep(result: DrillResult, tmp_path) -> None:
    short_lam, short_kap = result.run("lambda@60s"), result.run("kappa@60s")
    long_lam, long_kap = result.run("lambda@48h"), result.run("kappa@48h")
    assert result.workload["storm_events"] > 0 and short_lam.evidence["storm_events_in_view"] > 0

    # 60 s: the speed layer left events to batch, and Lambda readers saw wrong windows before the batch run fixed them
    assert short_lam.evidence["left_to_batch_live"] > 0 and short_lam.evidence["revenue_windows_left_to_batch"] > 0
    batch_ended = max(a.t for a in short_lam.actions if a.by == "system")
    before = [r for r in short_lam.reads if result.fault.start_s <= r.t < batch_ended]
    assert any((r.wrong_windows or 0) > 0 for r in before), "Lambda@60s was never wrong during the storm"
    assert short_lam.figures.recovery_s is not None and short_lam.reads[-1].correct
    assert short_lam.evidence["correction_p50_s"] > short_kap.evidence["correction_p50_s"]

    # 48 h: nothing left to batch; Lambda right from the speed layer alone
    assert long_lam.evidence["left_to_batch_live"] == 0 < short_lam.evidence["left_to_batch_live"]
    assert long_lam.evidence["never_corrected"] == 0 and long_lam.figures.wrong_reader_s < short_lam.figures.wrong_reader_s

    # Kappa never closes a window: every storm event is reflected within seconds, under both settings
    for kap in (short_kap, long_kap):
        assert kap.evidence["never_corrected"] == 0 and kap.evidence["correction_max_s"] < 15, kap.evidence
        assert kap.figures.wrong_reader_s < short_lam.figures.wrong_reader_s / 4
        assert kap.evidence["state_bytes"] > 0 and kap.evidence["state_rows"] > 0
    # what a window-closing job would hold grows with the lateness; lklab's Kappa holds it all
    assert short_kap.evidence["open_window_state_bytes"] < long_kap.evidence["open_window_state_bytes"] <= long_kap.evidence["state_bytes"]

    # the result round-trips and plots
    plot = drill("late-storm").plot
    assert DrillResult.load(result.write(tmp_path / "r.json")) == result
    assert plot is not None and plot(result, tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"
