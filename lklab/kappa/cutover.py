"""Blue/green cutover for Kappa views: validate `<view>__v<N>` (GX suite, ledger, diff against
the published version, and a readable history when its logic reads a field some schema version
lacks), then swap the alias `<view>` atomically. Every swap is recorded in the
publish log with who, when, why and the checks; rollback swaps back. Readers read the alias and its rows in one transaction."""
from __future__ import annotations

import dataclasses
import getpass
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, select

from lklab import kappa
from lklab.evolution import history as log_history
from lklab.lake import reconcile
from lklab.engine import snapshots
from lklab import views
from lklab.serving.publish import KAPPA, attach_snapshot, record_publish
from lklab.core.config import Settings
from lklab.core.gates import Severity, SuiteRunner, severity, suite_severities
from lklab.serving import gate_log
from lklab.serving.store import publish_log, serving_aliases, upsert
from lklab.engine.snapshots import Snapshot
from lklab.kappa import hydration
from lklab.kappa.query import published
from lklab.kappa.retirement import alias_moves
from lklab.log import kafka_io
from lklab.log.kafka_io import Offsets
from lklab.lake.spark import ensure_spark
from lklab.serving.progress import read_progress
from lklab.views.faults import stall_in_commit

DEFAULT_TOLERANCE_PCT = 0.5  # the diff gate: total |change| / total |published value|


class CutoverError(RuntimeError):
    """A cutover or rollback that cannot be done; the alias is unchanged."""


@dataclass(frozen=True)
class Check:
    """One cutover check. `passed` is False only for a failure that blocks (severity fail);
    `warned` marks a failure of a warn-severity gate (shown, not blocking)."""

    name: str
    passed: bool
    summary: str
    lines: tuple[str, ...] = ()
    warned: bool = False
    data_docs: str | None = None  # a GX check's validation page, relative to the Data Docs site

    @property
    def status(self) -> str:
        return "fail" if not self.passed else ("warn" if self.warned else "pass")


@dataclass(frozen=True)
class CutoverResult:
    view: str
    from_target: str | None
    to_target: str
    swapped: bool
    checks: list[Check]


def _gx_check(settings: Settings, spark, view: str, rows: list[tuple], run_suite: SuiteRunner) -> Check:
    """The view's GX suite, on the output's rows shaped as its gold table."""
    spec = views.view(view)
    table = f"gold_{view}"
    result = run_suite(settings.home, table, spec.measure.gx_frame(spark, spec, rows), **suite_severities(settings, table))
    return Check("gx", result.passed, f"GX suite {result.summary()}", (*result.failures, *result.warnings), bool(result.warnings),
                 result.data_docs_page)


def ledger_check(settings: Settings, engine: Engine, view: str, at: hydration.Position, rows: list[tuple],
                 version: int | None = None) -> Check:
    """The output's money per day (and per driver-day) at `at` against the payments ledger, with
    tips where the version's logic counts them; a difference blocks only on a closed day
    (lklab.lake.reconcile.compare_to_ledger)."""
    spec = views.view(view) if version is None else views.spec_at(view, version)
    if not spec.measure.carries_money:
        return Check("ledger", True, f"{view} carries no money: nothing to reconcile")
    per_day, per_driver = defaultdict(int), defaultdict(int)
    for entity, window, value in rows:
        per_day[window.date()] += value
        per_driver[(entity, window.date())] += value
    report = reconcile.compare_to_ledger(engine, settings, dict(per_day),
                                         dict(per_driver) if spec.entity == "driver_id" else None, at.watermark,
                                         revenue_tips=spec.measure.with_tips)
    blocks = severity(settings.gate_severity, "ledger_reconciliation") == Severity.FAIL
    first = f" | {report.differences[0]}" if not report.passed and report.differences else ""
    return Check("ledger", report.passed or not blocks, f"{report.summary}{first}", tuple(report.differences),
                 warned=not report.passed and not blocks)


def history_check(settings: Settings, spec: views.ViewSpec) -> Check:
    """A logic that reads a field some registered schema version lacks (revenue v2 reads tip_cents)
    reads every older record with that field's default: the whole history must decode with the
    current code first (lklab.evolution.history). Other logic reads nothing new: passes unread."""
    fields = log_history.new_fields(spec)
    if not fields:
        return Check("history", True, f"logic v{spec.logic_version} reads no field an older schema version lacks")
    try:
        report = log_history.verify_history(settings)
    except log_history.HistoryError as exc:
        return Check("history", False, f"reads {', '.join(fields)}, and the history could not be read: {exc}")
    lines = tuple(log_history.gate_lines(report))
    verdict = "every record decodes" if report.readable else f"{len(report.blocking)} records do not decode"
    return Check("history", report.readable, f"reads {', '.join(fields)} (older versions read the default): {verdict}; "
                                              f"{report.summary()}", lines[1:])


def diff(old: list[tuple], new: list[tuple], tolerance_pct: float, size: Callable[[Any], int] = int) -> Check:
    """Changed, added and removed windows/keys, with totals; fails past the stated tolerance.
    `size` is the number compared per row (the view's measure's: a session count for sessions)."""
    before = {(e, w): size(v) for e, w, v in old}
    after = {(e, w): size(v) for e, w, v in new}
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after.keys())
    moved = sum(abs(after.get(k, 0) - before.get(k, 0)) for k in set(changed) | set(added) | set(removed))
    base = sum(abs(v) for v in before.values()) or 1
    pct = 100.0 * moved / base
    lines = [f"{e} {w.isoformat()}: {before[(e, w)]} → {after[(e, w)]} ({after[(e, w)] - before[(e, w)]:+d})" for e, w in changed[:20]]
    lines += [f"{e} {w.isoformat()}: new row {after[(e, w)]}" for e, w in added[:10]]
    lines += [f"{e} {w.isoformat()}: row gone (was {before[(e, w)]})" for e, w in removed[:10]]
    summary = (f"{len(changed)} changed, {len(added)} added, {len(removed)} removed of {len(before)} published rows; "
               f"total {sum(before.values())} → {sum(after.values())}; |change| {moved} = {pct:.3f}% (tolerance {tolerance_pct}%)")
    return Check("diff", pct <= tolerance_pct, summary, tuple(lines))


def check_args(view: str, version: int, tolerance_pct: float) -> None:
    """The arguments of a cutover, checked before anything is read or started."""
    if view not in kappa.KAPPA_VIEWS:
        raise CutoverError(f"unknown view {view!r}; one of: {', '.join(kappa.KAPPA_VIEWS)}")
    if version < 1:
        raise CutoverError(f"--to {version}: versions start at 1")
    if not 0 <= tolerance_pct <= 100:
        raise CutoverError(f"--tolerance-pct {tolerance_pct:g}: must be between 0 and 100 (% of the published total)")


def cutover(settings: Settings, engine: Engine, view: str, version: int, why: str,
            tolerance_pct: float = DEFAULT_TOLERANCE_PCT, spark=None, who: str | None = None, *,
            run_suite: SuiteRunner) -> CutoverResult:
    """Validate `<view>__v<N>` and, only if every check passes, point `<view>` at it atomically.
    A candidate that is not hydrated is refused before any check runs (CutoverError, saying why).
    The diff compares both versions at a common input position (lklab.kappa.hydration.comparable).
    `run_suite` runs the view's GX suite (expectations.runner.run_suite: the core does not import GX)."""
    check_args(view, version, tolerance_pct)
    output = kappa.output_name(view, version)
    record = kappa.build_record(engine, output)
    if record is None or record["status"] != "complete":
        raise CutoverError(f"{output} has not finished hydrating (no complete replay); `lklab replay {view} --version {version}` "
                           f"starts it, `lklab kappa status` shows its progress")
    with engine.connect() as conn:
        current = published(conn, view)
    if current == output:
        raise CutoverError(f"{view} already points at {output}")
    new, old = hydration.position(settings, engine, view, version), hydration.published_position(settings, engine, view)
    ready = hydration.hydration(settings, new, old, _end_offsets(settings))
    if not ready.hydrated:
        raise CutoverError(f"{view} stays on {current or 'nothing published'}: {ready.summary}")
    spark = ensure_spark(settings, spark)
    checks = [
        Check("hydration", True, ready.summary),
        _gx_check(settings, spark, view, new.rows, run_suite),
        ledger_check(settings, engine, view, new, new.rows, version),
        _diff_check(settings, engine, view, old, new, tolerance_pct) if old else Check("diff", True, "nothing published yet"),
        history_check(settings, views.spec_at(view, version)),
    ]
    for c in checks:
        gate_log.record(engine, arch=KAPPA, subject=output, gate=c.name, status=c.status, summary=c.summary, data_docs=c.data_docs)
    swapped = all(c.passed for c in checks)
    if swapped:
        snap = publish_snapshot(settings, engine, spark, view, output)
        _swap(settings, engine, view, current, output, "cutover", who, why, checks, snap)
    return CutoverResult(view, current, output, swapped, checks)


def _end_offsets(settings: Settings) -> Offsets:
    ends = kafka_io.end_offsets_or_none(settings)
    if ends is None:  # without the log's end, hydration cannot be judged: refuse
        raise CutoverError(f"Kafka at {settings.bootstrap} did not answer: cannot judge hydration without the log's end offsets")
    return ends


def _diff_check(settings: Settings, engine: Engine, view: str, old: hydration.Position, new: hydration.Position, tolerance_pct: float) -> Check:
    both = hydration.comparable(settings, engine, view, old, new)
    check = diff(both.old_rows, both.new_rows, tolerance_pct, views.view(view).measure.size)
    in_flight = f"; {both.in_flight} rows in flight left out" if both.in_flight else ""
    return dataclasses.replace(check, summary=f"{old.output} → {new.output} {both.basis}: {check.summary}{in_flight}")


def publish_snapshot(settings: Settings, engine: Engine, spark, view: str, output: str) -> Snapshot:
    """The Delta snapshot of `output` as it is now (an existing one if the output has not moved
    since): what a publish records, so audits can read exactly what was served."""
    record = kappa.build_record(engine, output)
    if record is None:
        raise CutoverError(f"{output} has no replay record")
    held = {p: progress.next_offset for p, progress in read_progress(engine, settings.topic, record["consumer_group"]).items()}
    for snap in reversed(snapshots.listing(engine, view)):
        if snap.source_output == output and snap.offsets == held:
            return snap
    return snapshots.take(settings, engine, ensure_spark(settings, spark), view, kappa.spec_for(view, record["version"]),
                          record["consumer_group"])


def rollback(settings: Settings, engine: Engine, view: str, why: str, who: str | None = None, spark=None) -> tuple[str, str]:
    """Point `<view>` back at the version it had before the last swap to its current target. Inside
    the rollback window that version's job is still running, so it is current and the swap is
    immediate; the audit snapshot of it is taken after the swap and attached to its publish record.
    A version that is no longer hydrated (its job stopped) is refused, saying how to bring it back."""
    with engine.connect() as conn:
        current = published(conn, view)
        last = conn.execute(select(publish_log.c.from_target).where(*alias_moves(view), publish_log.c.target == current)
                            .order_by(publish_log.c.id.desc()).limit(1)).scalar()
    if current is None or last is None:
        raise CutoverError(f"{view}: no earlier version to roll back to")
    version = int(kappa.build_record(engine, last)["version"])
    target, now_served = hydration.position(settings, engine, view, version), hydration.published_position(settings, engine, view)
    ready = hydration.hydration(settings, target, now_served, _end_offsets(settings))
    if not ready.hydrated:
        raise CutoverError(f"{view} stays on {current}: {ready.summary}. Its job stops when the rollback window "
                           f"({settings.kappa_rollback_window_s:g}s) ends: `lklab kappa start {view} --version {version}`, "
                           f"then roll back once it is hydrated")
    publish_id = _swap(settings, engine, view, current, last, "rollback", who, why, [Check("hydration", True, ready.summary)], None)
    snap = publish_snapshot(settings, engine, spark, view, last)
    with engine.begin() as conn:
        attach_snapshot(conn, publish_id, snap.snapshot_id, {snap.piece_location("output"): snap.delta_versions["output"]})
    return current, last


def _swap(settings: Settings, engine: Engine, view: str, old: str | None, new: str, action: str, who: str | None, why: str,
          checks: list[Check], snap: Snapshot | None) -> int:
    now, who = datetime.now(timezone.utc), who or getpass.getuser()
    with engine.begin() as conn:  # alias and its publish record (who, why, checks, build, snapshot): one atomic swap
        upsert(conn, serving_aliases, [{"view": view, "target": new, "updated_at": now}])
        publish_id = record_kappa_publish(conn, engine, now, view, old, new, action, who, why, snap, checks)
        stall_in_commit(settings, "cutover")  # drills only: a swap that hangs before its commit
        return publish_id


def record_kappa_publish(conn, engine: Engine, now: datetime, view: str, old: str | None, new: str, action: str, who: str,
                         why: str, snap: Snapshot | None, checks: list[Check] = ()) -> int:
    """Append the publish record of a Kappa swap or refresh; `snap` None: attached after the swap."""
    build = json.loads(json.dumps(kappa.build_record(engine, new), default=str))
    return record_publish(conn, at=now, view=view, arch=KAPPA, action=action, target=new, from_target=old, why=why, who=who,
                          build=build, delta_versions={snap.piece_location("output"): snap.delta_versions["output"]} if snap else {},
                          snapshot_id=snap.snapshot_id if snap else None,
                          checks=[{"name": c.name, "passed": c.passed, "summary": c.summary} for c in checks])


def history(engine: Engine, view: str) -> list[dict]:
    """Every swap of the alias `<view>`, oldest first: who, when, why, from and to, checks."""
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(publish_log).where(*alias_moves(view)).order_by(publish_log.c.id)).mappings()]
