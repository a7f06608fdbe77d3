"""RELIABILITY.md and reliability.json: every check result, each figure beside its bound and
the trial count, and what the most trusted systems promise for the same fault."""
from __future__ import annotations

import json
from pathlib import Path

from pydantic import ValidationError

from lklab.chaos.catalog import all_checks
from lklab.chaos.result import CheckResult
from lklab.drills.report import markdown_table

HEADER = """# Reliability

Each figure below comes from one run of `make chaos` on this lab's machine (real processes on
loopback: Kafka, Spark with Delta, Faust, the live Kappa jobs, the HTTP API, PostgreSQL), with
the number of trials. Beside each check is what the most trusted systems promise for the same
fault, and where lklab's own guarantee is narrower. `make test` runs a small version of every
check (a few trials), so a regression fails CI; the figures here are from the full run.
"""


def load_results(results_dir: Path) -> list[CheckResult]:
    loaded = []
    for path in sorted(results_dir.glob("*.json")):
        try:
            loaded.append(CheckResult.load(path))
        except ValidationError as exc:
            raise ValueError(f"{path} is not a chaos check result ({exc.error_count()} errors, first: {exc.errors()[0]['msg']})") from None
    order = {c.name: i for i, c in enumerate(all_checks())}
    return sorted(loaded, key=lambda r: (order.get(r.check, len(order)), r.check))


def write_report(results_dir: Path, out: Path) -> tuple[Path, Path]:
    results = load_results(results_dir)
    if not results:
        raise ValueError(f"no check results in {results_dir}: run `make chaos` or `lklab chaos run NAME`")
    parts = [HEADER.strip(), _summary(results), *(_section(r) for r in results)]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n\n".join(parts).rstrip() + "\n")
    as_json = out.parent / "reliability.json"
    as_json.write_text(json.dumps([json.loads(r.model_dump_json()) for r in results], indent=1) + "\n")
    return out, as_json


def _summary(results: list[CheckResult]) -> str:
    rows = [[f"[{r.check}](#{r.check})", r.fault, str(r.trials), "every bound held" if r.passed else
             "MISSED: " + ", ".join(f.name for f in r.figures if not f.ok), f"{r.wall_s:.0f} s"] for r in results]
    return markdown_table(["check", "fault", "trials", "result", "took"], rows, text_columns=4)


def _section(r: CheckResult) -> str:
    titles = {c.name: c.title for c in all_checks()}
    rows = [[f.name, f.shown(), f.bound, "ok" if f.ok else "**missed**"] for f in r.figures]
    return "\n\n".join([
        f"## {r.check}",
        f"**Claim.** {titles.get(r.check, r.check)}",
        f"**Fault.** {r.fault}: {r.trials} trials, size {r.size}, seed {r.seed}, lklab {r.git_sha[:12]}, "
        f"{r.started_at:%Y-%m-%d %H:%M} UTC, {r.wall_s:.0f} s.",
        markdown_table(["figure", "measured", "bound", ""], rows, text_columns=1),
        f"**What trusted systems promise.** {r.promise}",
        f"**lklab's guarantee, and where it is narrower.** {r.scope}",
    ])
