"""`lklab ps` and `lklab down` on a lab that is not up, and the record `up` keeps: one line each,
and `down` stops only what the record names."""
import json
from pathlib import Path

from typer.testing import CliRunner

from lklab.cli import app
from lklab.core.config import Settings
from lklab.lab import up as lab


def test_ps_and_down_on_a_lab_that_is_not_up(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    ps = CliRunner().invoke(app, ["ps"], env=settings.to_env())
    assert ps.exit_code == 1 and "the lab is not up" in ps.output and len(ps.output.strip().splitlines()) == 1
    down = CliRunner().invoke(app, ["down"], env=settings.to_env())
    assert down.exit_code == 0 and "nothing to stop" in down.output


def test_down_stops_only_what_the_record_names_and_forgets_it(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home")
    path = lab.state_file(settings)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"started_at": "2026-12-03T06:00:00+00:00", "services": [{"kind": "api"}, {"kind": "traffic"}]}))
    rows = lab.ps(settings)
    assert [(r.name, r.pid, r.healthy, r.detail) for r in rows] == [("api + dashboard", None, False, "not running"),
                                                                       ("traffic", None, False, "not running")]
    assert lab.running_services(settings) == []  # nothing recorded runs: a new `up` is not refused
    said: list[str] = []
    assert lab.down(settings, said.append) == [] and said == []  # none was running: nothing stopped
    assert not path.exists()
