"""The drills' output side on synthetic results: the timeline PNG, the figures table, the report
and the `lklab drill` commands that print them."""
from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from lklab.cli import app
from lklab.drills.plot import timeline
from lklab.drills.catalog import all_drills
from lklab.drills.registry import DRILLS, Drill
from lklab.drills.report import markdown_table, write_report
from lklab.drills.result import Action, ArchRun, DrillResult, Fault, Figures, Read
from lklab.drills.table import NONE, figures_table, print_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _reads() -> list[Read]:
    """A stream of reads: right, then wrong and stale during the fault, two failures, right again."""
    reads = []
    for i in range(40):
        t, faulty = i * 0.5, 10 <= i < 30
        status = 503 if i in (12, 13) else 200
        reads.append(Read(t=t, status=status, stale=faulty, staleness_s=(i - 9) * 0.5 if faulty else 0.4,
                          error=None if status != 200 else (25 + i if faulty else 0), windows=10, source="lambda"))
    return reads


def synthetic(name: str = "speed-crash", fault_end: float | None = 15.0, reads: bool = True) -> DrillResult:
    lambda_run = ArchRun(
        arch="lambda", label="Lambda", reads=_reads() if reads else [],
        actions=[Action(t=12.0, what="restart the speed worker"), Action(t=4.0, what="inject", by="harness")],
        figures=Figures(reads=40, wrong_reader_s=12.5, stale_reader_s=10.0, max_error=54, detect_s=3.2, detected_by="lag",
                        recovery_s=1.5, operator_steps=1),
        evidence={"speed_restarts": 1})
    kappa_run = ArchRun(arch="kappa", label="Kappa", reads=_reads() if reads else [],
                        figures=Figures(reads=40, wrong_reader_s=0.0, events_reprocessed=12_345),
                        evidence={"replay_s": 4.25})
    return DrillResult(
        drill=name, question=f"What do readers see when {name} happens?", size="small", seed=7,
        started_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc), wall_s=42.0, git_sha="0123456789abcdef",
        versions={"kafka": "3.9.1", "spark": "3.5.3"}, fault=Fault(name="kill -9", description="the worker dies", start_s=5.0,
                                                                  end_s=fault_end),
        runs=[lambda_run, kappa_run], lessons=["Lambda serves wrong answers until the speed layer is back."])


@pytest.mark.parametrize("fault_end, reads", [(15.0, True), (None, True), (15.0, False), (None, False)])
def test_timeline_writes_a_png(tmp_path: Path, fault_end: float | None, reads: bool) -> None:
    path = timeline(synthetic(fault_end=fault_end, reads=reads), tmp_path / "results" / "speed-crash.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_timeline_with_no_runs(tmp_path: Path) -> None:
    result = synthetic().model_copy(update={"runs": []})
    assert timeline(result, tmp_path / "empty.png").read_bytes().startswith(PNG_MAGIC)


def _rendered(result: DrillResult) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    print_result(result, console)
    return console.export_text()


def test_figures_table_one_column_per_run_and_dashes_for_none() -> None:
    result = synthetic()
    table = figures_table(result)
    assert [c.header for c in table.columns] == ["", "Lambda", "Kappa"]
    cells = {row[0]: list(row[1:]) for row in zip(*(list(c.cells) for c in table.columns))}
    assert cells["detected"] == ["3.2 s by lag", NONE]
    assert cells["recovery"] == ["1.5 s", NONE]
    assert cells["events reprocessed"] == [NONE, "12,345"]
    assert cells["speed_restarts"] == ["1", NONE] and cells["replay_s"] == [NONE, "4.25"]
    text = _rendered(result)
    assert "12.5 s" in text and "Lambda serves wrong answers until the speed layer is back." in text


def test_markdown_table_escapes_pipes() -> None:
    assert markdown_table(["", "a"], [["x|y", "1"]]).splitlines() == ["|  | a |", "|---|---:|", "| x\\|y | 1 |"]


@pytest.fixture
def throwaway_drill(monkeypatch: pytest.MonkeyPatch) -> Drill:
    d = Drill(name="zz-throwaway", question="Does the list show a registered drill?", summary="nothing at all",
              run=lambda ctx: synthetic("zz-throwaway"))
    all_drills()  # the catalog's drills first, as the CLI sees them
    monkeypatch.setitem(DRILLS, d.name, d)  # removed again after the test
    return d


def test_report_sections_summary_and_image(tmp_path: Path, throwaway_drill: Drill) -> None:
    results = tmp_path / "drills" / "results"
    for name in ("aa-unregistered", throwaway_drill.name):
        result = synthetic(name)
        result.write(results / f"{name}.json")
        timeline(result, results / f"{name}.png")
    report = write_report(results, tmp_path / "drills" / "REPORT.md").read_text()
    # registered drills first, in registry order, then the others by name
    assert report.index("## zz-throwaway") < report.index("## aa-unregistered")
    assert "| [zz-throwaway](#zz-throwaway) | Lambda | 12.5 s | 10.0 s | 54 | 3.2 s by lag | 1.5 s | 1 |" in report
    assert "| [zz-throwaway](#zz-throwaway) | Kappa | 0.0 s | 0.0 s | 0 | — | — | 0 |" in report
    assert "![zz-throwaway timeline](results/zz-throwaway.png)" in report
    assert "**Question.** What do readers see when zz-throwaway happens?" in report
    assert "| events reprocessed | — | 12,345 |" in report
    assert "Size small, seed 7, git 0123456789ab" in report and "kafka 3.9.1, spark 3.5.3" in report


def test_report_refuses_a_foreign_json_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match=r"other.json is not a drill result") as caught:
        write_report(tmp_path, tmp_path / "REPORT.md")
    assert "\n" not in str(caught.value)


def test_drill_list_shows_registered_drills(throwaway_drill: Drill) -> None:
    shown = CliRunner().invoke(app, ["drill", "list"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert throwaway_drill.name in shown.stdout and throwaway_drill.question in shown.stdout


@pytest.mark.parametrize("args, message", [(["nosuch"], "unknown drill 'nosuch'"),
                                           (["zz-throwaway", "nosuch"], "unknown drill 'nosuch'"),
                                           (["zz-throwaway", "--size", "huge"], "unknown size 'huge'"),
                                           ([], "name the drills to run, or pass --all"),
                                           (["zz-throwaway", "--all"], "name the drills to run, or pass --all")])
def test_drill_run_refuses_in_one_line(throwaway_drill: Drill, args: list[str], message: str) -> None:
    refused = CliRunner().invoke(app, ["drill", "run", *args])
    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1 and message in refused.stderr
