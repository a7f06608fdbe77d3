"""The Lambda serving merge: batch for windows that are final at T, speed for the rest.

T comes from the record of the promoted batch build, never from a clock.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any
from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine

from lklab.log import kafka_io
from lklab.lambda_arch import runs
from lklab import views
from lklab.lambda_arch.builds import BatchBuild, current_build
from lklab.core.config import SERVE_STALE, Settings
from lklab.core.staleness import apply_reader_policy, stale_reason
from lklab.log.kafka_io import Offsets
from lklab.lambda_arch.runs import BatchBlocked
from lklab.serving import progress
from lklab.engine.outputs import late_windows


@dataclass(frozen=True)
class MergedRow:
    entity: str
    window_start: datetime
    value: Any  # the view's measure's value: an int, or (sessions, duration_ms)
    source: str  # batch | speed
    diverged: bool = False  # a speed row in a window the blocked batch run found different from batch
    # a speed row in a window the speed layer closed and then left a late event of to batch, which
    # this build's T does not reach yet: the value lacks that event until a batch passes it
    left_to_batch: bool = False


SERVE_FLAGGED, REFUSE = "serve-flagged", "refuse"  # Settings.blocked_windows_policy


@dataclass(frozen=True)
class SpeedHealth:
    """Whether speed rows may be merged. Judged from the worker's heartbeat and its lag."""

    healthy: bool
    reason: str | None
    heartbeat_age_s: float | None
    lag: int | None  # None: Kafka end offsets unknown


@dataclass(frozen=True)
class MergedAnswer:
    view: str
    rows: list[MergedRow]
    T: datetime | None
    build_id: str | None
    mode: str = "lambda"  # lambda (batch < T, speed ≥ T) | batch-only (speed unhealthy)
    stale: bool = False
    stale_reason: str | None = None
    batch_blocked: BatchBlocked | None = None  # the batch layer's latest run did not promote
    policy: str = SERVE_FLAGGED  # what this answer did with speed rows of diverged windows
    withheld: int = 0  # speed rows of diverged windows left out (policy refuse)
    reader_policy: str = SERVE_STALE  # the view's reader policy (a stale answer refused by `error` is never built)
    # how far the answer's input reaches in event time: the speed layer's watermark when speed rows
    # are merged, else the batch build's (serve() fills it; query() gives the build's)
    watermark: datetime | None = None


def speed_health(engine: Engine, settings: Settings, end_offsets: Offsets | None, now: datetime | None = None) -> SpeedHealth:
    """Healthy when the worker beat within the timeout and its lag is within the threshold."""
    now = now or datetime.now(timezone.utc)
    with engine.connect() as conn:
        beat = progress.last_beat(conn, settings.speed_group)
        done = progress.next_offsets(conn, settings.speed_group, settings.topic)
    age = None if beat is None else (now - beat).total_seconds()
    lag = None if end_offsets is None else progress.lag(done, end_offsets)
    reason = stale_reason("the speed layer", age, lag, settings.speed_heartbeat_timeout_s, settings.speed_max_lag)
    return SpeedHealth(reason is None, reason, age, lag)


def query(
    engine: Engine, view: str, entity: str | None = None, start: datetime | None = None, end: datetime | None = None,
    health: SpeedHealth | None = None, policy: str = SERVE_FLAGGED,
) -> MergedAnswer:
    """A merged view over window starts in [start, end), read in one transaction (one consistent T).
    With an unhealthy `health`, it answers batch-only (every row of the promoted build, windows
    after T included) and flags the answer stale: stale speed rows are never mixed in.
    While the batch layer is blocked, `batch_blocked` says since when, by which gate and why;
    speed rows in the windows the divergence gates named are flagged `diverged` (policy
    serve-flagged) or left out and counted in `withheld` (policy refuse)."""
    spec = views.view(view)
    measure = spec.measure
    degraded = measure.speed_layer and health is not None and not health.healthy  # batch-only views never use speed
    with engine.begin() as conn:
        build = current_build(conn)
        T = build.final_through if build else None
        rows: list[MergedRow] = []
        if build is not None and (T is not None or not measure.speed_layer):
            cut = T if measure.speed_layer and not degraded else None  # batch serves every window without speed
            batch = conn.execute(measure.batch_query(spec, build.build_id, cut, entity, start, end))
            rows += [MergedRow(r[0], r[1], measure.value(r), "batch") for r in batch]
        blocked = runs.blocked(conn)
        suspect = blocked.windows(view) if blocked else set()
        withheld = 0
        if measure.speed_layer and not degraded:
            late = late_windows(conn, spec.name, entity)
            for e, w, v in conn.execute(measure.output_query(spec, entity, start, end, not_final_after=T)):
                if (e, w) in suspect and policy == REFUSE:
                    withheld += 1
                else:
                    rows.append(MergedRow(e, w, v, "speed", diverged=(e, w) in suspect, left_to_batch=(e, w) in late))
    rows.sort(key=lambda r: (r.entity, r.window_start))
    return MergedAnswer(
        view=view, rows=rows, T=T, build_id=build.build_id if build else None, watermark=build.watermark if build else None,
        mode="batch-only" if degraded else "lambda", stale=degraded, stale_reason=health.reason if degraded else None,
        batch_blocked=blocked, policy=policy, withheld=withheld,
    )


def serve(engine: Engine, settings: Settings, view: str, entity: str | None = None, start: datetime | None = None,
          end: datetime | None = None) -> MergedAnswer:
    """`query` as readers get it (`lklab query`, GET /views/{view}): judged by the speed layer's
    health now, with the settings' blocked-windows policy, and the view's reader policy applied
    to a degraded (batch-only) answer: lklab.core.staleness.StaleAnswer under `error`."""
    answer = query(engine, view, entity, start, end, health=health_for(engine, settings, view),
                   policy=settings.blocked_windows_policy)
    policy = apply_reader_policy(settings, view, answer.stale, answer.stale_reason)
    if answer.mode != "lambda" or not views.view(view).measure.speed_layer:
        return replace(answer, reader_policy=policy)
    return replace(answer, reader_policy=policy, watermark=_later(answer.watermark, speed_watermark(engine, settings)))


def speed_watermark(engine: Engine, settings: Settings) -> datetime | None:
    """The speed layer's event-time watermark (every partition's progress, lklab.views.watermark)."""
    with engine.connect() as conn:
        return views.watermark(progress.max_event_times(conn, settings.speed_group, settings.topic), settings.partitions)


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    return max((t for t in (a, b) if t is not None), default=None)


def blocked_json(blocked: BatchBlocked | None) -> dict | None:
    """The blocked-batch signal as readers get it (CLI --json, HTTP API, lambda status)."""
    if blocked is None:
        return None
    return {"since": blocked.since.isoformat(), "gate": blocked.gate, "reason": blocked.reason, "run_id": blocked.run_id,
            "dates": [blocked.first_date, blocked.last_date], "diverged_windows": len(blocked.diverged)}


def answer_json(answer: MergedAnswer, limit: int | None = None) -> dict:
    """One merged answer as JSON: the same shape from `lklab query --json` and the HTTP API."""
    spec = views.VIEWS[answer.view]
    rows = answer.rows if limit is None else answer.rows[:limit]
    return {
        "view": answer.view,
        "T": answer.T.isoformat() if answer.T else None,
        "build_id": answer.build_id,
        "watermark": answer.watermark.isoformat() if answer.watermark else None,
        "mode": answer.mode,
        "stale": answer.stale,
        "stale_reason": answer.stale_reason,
        "policy": answer.reader_policy,
        "batch_blocked": blocked_json(answer.batch_blocked),
        "blocked_windows_policy": answer.policy,
        "withheld_rows": answer.withheld,
        "truncated": limit is not None and len(answer.rows) > limit,
        "rows": [spec.measure.row_json(spec, r.entity, r.window_start, r.value)
                 | {"source": r.source, "diverged": r.diverged, "left_to_batch": r.left_to_batch} for r in rows],
    }


def health_for(engine: Engine, settings: Settings, view: str) -> SpeedHealth | None:
    """The speed layer's health, for a view it maintains; None for a view served by batch alone
    (its answer does not depend on the speed layer, so Kafka is not asked)."""
    return current_speed_health(engine, settings) if views.view(view).measure.speed_layer else None


def current_speed_health(engine: Engine, settings: Settings, timeout_s: float = 5.0) -> SpeedHealth:
    """speed_health with the log's end offsets read now (unknown if Kafka does not answer in time)."""
    return speed_health(engine, settings, kafka_io.end_offsets_or_none(settings, timeout_s))


@dataclass(frozen=True)
class LayerSplit:
    view: str
    batch_rows: int
    speed_rows: int
    batch_serves: str
    speed_serves: str


@dataclass(frozen=True)
class LambdaStatus:
    build: BatchBuild | None
    batch_age_s: float | None
    speed: SpeedHealth
    speed_watermark: datetime | None
    speed_final_through: datetime | None
    layers: list[LayerSplit]
    batch_blocked: BatchBlocked | None = None


def lambda_status(engine: Engine, settings: Settings) -> LambdaStatus:
    """T and where it came from, the speed layer's watermark, lag and health, and which windows
    each layer serves right now."""
    health = current_speed_health(engine, settings)
    with engine.connect() as conn:
        build = current_build(conn)
    wm = speed_watermark(engine, settings)
    T = build.final_through if build else None
    layers = []
    for name, spec in views.VIEWS.items():
        answer = query(engine, name, health=health, policy=settings.blocked_windows_policy)
        width = timedelta(seconds=spec.window_s)
        cut = "—" if T is None else f"windows ending at or before {T.isoformat()} (start ≤ {(T - width).isoformat()})"
        if not spec.measure.speed_layer:
            batch_serves, speed_serves = "every window (no speed layer for this view)", "nothing (batch only)"
        elif answer.stale:
            batch_serves, speed_serves = "every window (batch-only: speed unhealthy)", "nothing (stale)"
        else:
            batch_serves, speed_serves = cut, "every window" if T is None else "later windows"
        layers.append(LayerSplit(view=name, batch_rows=sum(r.source == "batch" for r in answer.rows),
                                 speed_rows=sum(r.source == "speed" for r in answer.rows),
                                 batch_serves=batch_serves, speed_serves=speed_serves))
    age = None if build is None else (datetime.now(timezone.utc) - build.created_at).total_seconds()
    with engine.connect() as conn:
        blocked = runs.blocked(conn)
    return LambdaStatus(build, age, health, wm, views.final_through(wm, settings.allowed_lateness_s), layers, blocked)
