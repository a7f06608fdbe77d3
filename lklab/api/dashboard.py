"""The dashboard the API serves at `/`: Lambda and Kappa side by side for one view, updating live.

The page (static/dashboard.html and .js, no build step) reads the same JSON API every reader
uses (/views/{view}, /kappa/views/{view}), so what it shows is what readers get; what readers
do not need comes from /dashboard/state: T and the build's age, the speed layer's and the Kappa
job's lag, watermark and heartbeat, the latest gate results (with their GX Data Docs pages,
served under /quality/, and their Dagster runs), the publish log, and a few minutes of history
sampled here every SAMPLE_S for the charts. Plotly draws them, served from the installed plotly
package (no CDN: the lab has no internet). /drills/ lists the drill results with their plots."""
from __future__ import annotations

import html
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine

from lklab import views
from lklab.core.config import Settings
from lklab.core.gates import data_docs_site
from lklab.kappa import KAPPA_VIEWS
from lklab.kappa import jobs as kappa_jobs
from lklab.kappa import query as kappa
from lklab.lambda_arch import merge
from lklab.lambda_arch.builds import current_build
from lklab.serving import gate_log, publish

STATIC = Path(__file__).parent / "static"
DRILL_RESULTS = Path(__file__).resolve().parents[2] / "drills" / "results"
SAMPLE_S = 2.0
HISTORY = 300  # samples kept: ten minutes at SAMPLE_S


def _age_s(at: datetime | None, now: float) -> float | None:
    return None if at is None else round(now - at.timestamp(), 1)


@dataclass
class Sampler:
    """Every SAMPLE_S: the speed layer's lag and heartbeat, each published Kappa job's lag, and
    both watermarks' age (now minus the newest event time a reader can see: the event→visible
    latency, including each event's own delivery delay)."""

    settings: Settings
    engine: Engine
    samples: deque = field(default_factory=lambda: deque(maxlen=HISTORY))
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _started: bool = False

    def sample(self) -> dict[str, Any]:
        now = time.time()
        health = merge.current_speed_health(self.engine, self.settings)
        kappa_lag, kappa_age = {}, {}
        with self.engine.connect() as conn:
            published = {view: kappa.published(conn, view) for view in KAPPA_VIEWS}
        for job in kappa_jobs.status(self.settings):
            if published.get(job.view) == job.output:
                kappa_lag[job.view], kappa_age[job.view] = job.lag, _age_s(job.watermark, now)
        return {"t": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
                "lambda_lag": health.lag, "lambda_heartbeat_age_s": health.heartbeat_age_s,
                "lambda_visible_age_s": _age_s(merge.speed_watermark(self.engine, self.settings), now),
                "kappa_lag": kappa_lag, "kappa_visible_age_s": kappa_age}

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self.sample())
            except Exception:  # noqa: BLE001 - a store or broker hiccup skips one sample; the page shows the gap
                pass
            self._stop.wait(SAMPLE_S)

    def start(self) -> None:
        """Idempotent: the first dashboard request starts it, so an API nobody watches samples nothing."""
        with self._lock:
            if not self._started:
                self._started = True
                threading.Thread(target=self.run, name="dashboard-sampler", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


def state(settings: Settings, engine: Engine, sampler: Sampler, view: str) -> dict[str, Any]:
    """What the page shows beside the answers: both architectures' status for `view`, gates,
    publishes, history, links."""
    now = time.time()
    with engine.connect() as conn:
        build = current_build(conn)
    latest = sampler.samples[-1] if sampler.samples else None
    jobs = [j for j in kappa_jobs.status(settings) if j.view == view]
    return {
        "view": view,
        "now": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        "lambda": {
            "T": build.final_through.isoformat() if build and build.final_through else None,
            "build_id": build.build_id if build else None,
            "build_age_s": _age_s(build.created_at, now) if build else None,
            "speed_layer": views.VIEWS[view].measure.speed_layer,
            "speed_lag": latest["lambda_lag"] if latest else None,
            "speed_heartbeat_age_s": latest["lambda_heartbeat_age_s"] if latest else None,
        },
        "kappa": {"jobs": [{"output": j.output, "running": j.running, "lag": j.lag, "heartbeat_age_s": j.heartbeat_age_s,
                            "watermark": j.watermark.isoformat() if j.watermark else None, "stale": j.stale} for j in jobs]},
        "gates": [_gate_json(g, settings) for g in gate_log.recent(engine, 24)],
        "publishes": [_publish_json(p) for p in publish.history(engine)[-15:]][::-1],
        "history": list(sampler.samples),
        "links": {"dagster": f"http://127.0.0.1:{settings.dagster_port}", "quality": "/quality/index.html", "drills": "/drills/"},
    }


def _gate_json(g: dict, settings: Settings) -> dict[str, Any]:
    return {"at": g["at"].isoformat(timespec="seconds"), "arch": g["arch"], "subject": g["subject"], "gate": g["gate"],
            "status": g["status"], "summary": g["summary"],
            "data_docs": f"/quality/{g['data_docs']}" if g["data_docs"] else None,
            "dagster_run": f"http://127.0.0.1:{settings.dagster_port}/runs/{g['run_id']}" if g["run_id"] else None}


def _publish_json(p: dict) -> dict[str, Any]:
    return {"at": p["at"].isoformat(timespec="seconds"), "view": p["view"], "arch": p["arch"], "action": p["action"],
            "target": p["target"], "from_target": p["from_target"], "who": p["who"], "why": p["why"]}


def plotly_js() -> Path:
    """plotly.min.js as the plotly package ships it."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def drills_page(results: Path = DRILL_RESULTS) -> str:
    """Every drill result (JSON) in `results`, with its question, fault, lessons and plot."""
    sections = []
    for path in sorted(results.glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except ValueError:
            continue
        e = html.escape
        plot = f'<img src="/drills/{e(path.stem)}.png" alt="{e(path.stem)} plot">' if path.with_suffix(".png").is_file() else ""
        lessons = "".join(f"<li>{e(str(line))}</li>" for line in result.get("lessons", []))
        fault = result.get("fault", {})
        sections.append(
            f'<section class="drill" id="{e(path.stem)}"><h2>{e(str(result.get("drill", path.stem)))}</h2>'
            f'<p class="question">{e(str(result.get("question", "")))}</p>'
            f'<p><b>Fault:</b> {e(str(fault.get("description", "")))}</p>'
            f'<p class="meta">size {e(str(result.get("size")))}, seed {e(str(result.get("seed")))}, '
            f'{e(str(result.get("wall_s")))} s, lklab {e(str(result.get("git_sha", ""))[:12])}, {e(str(result.get("started_at", "")))} · '
            f'<a href="/drills/{e(path.name)}">JSON</a></p><ul>{lessons}</ul>{plot}</section>')
    body = "".join(sections) or "<p>No drill results yet: <code>lklab drill run NAME</code> or <code>make drills</code>.</p>"
    return (f'<!doctype html><html><head><meta charset="utf-8"><title>lklab drills</title>'
            f'<link rel="stylesheet" href="/static/dashboard.css"></head><body><header><h1>lklab drills</h1>'
            f'<a href="/">dashboard</a></header><main class="drills">{body}</main></body></html>')


def mount(app: FastAPI, settings: Settings, engine: Engine, unknown_view: dict[int | str, dict[str, Any]]) -> Sampler:
    """The dashboard's routes on `app` (`unknown_view`: the documented 404 of an unknown view);
    returns its sampler (started by the first state request)."""
    sampler = Sampler(settings, engine)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "dashboard.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/dashboard/state", summary="what the dashboard shows beside the answers", responses=unknown_view)
    def dashboard_state(view: str = "revenue_per_minute") -> dict[str, Any]:
        """Both architectures' status for `view`, the latest gate results, publishes and a few minutes of history."""
        if view not in views.VIEWS:
            raise HTTPException(404, f"unknown view {view!r}; one of: {', '.join(views.VIEWS)}")
        sampler.start()
        return state(settings, engine, sampler, view)

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    def plotly() -> FileResponse:
        return FileResponse(plotly_js(), media_type="text/javascript")

    @app.get("/drills/", include_in_schema=False)
    def drills() -> HTMLResponse:
        return HTMLResponse(drills_page())

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/drills", StaticFiles(directory=DRILL_RESULTS, check_dir=False), name="drill-results")
    # Data Docs appear with the first gate; check_dir=False serves them from then on (404 before)
    app.mount("/quality", StaticFiles(directory=data_docs_site(settings.home), html=True, check_dir=False), name="quality")
    return sampler
