"""Lambda batch runs as the serving store records them (table `batch_runs`): the one-writer lease
on event dates, the gate that blocked a run and the windows it found diverged, the dates a later
run must rebuild, and the blocked-batch signal readers see.

A run holds its dates while its row is `running`; it ends `promoted`, `blocked` (a fail-severity
gate stopped it) or `failed` (anything else). A `running` row older than the lease timeout is
taken over (its run died) and marked failed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from sqlalchemy import Engine, and_, select, text, update
from sqlalchemy.engine import Connection

from lklab.serving.store import batch_runs

RUNNING, PROMOTED, BLOCKED, FAILED = "running", "promoted", "blocked", "failed"
FINISHED = (PROMOTED, BLOCKED, FAILED)


class DatesBusy(RuntimeError):
    """Another batch run holds (some of) these event dates."""

    def __init__(self, holder: str, first: str, last: str, started_at: datetime) -> None:
        super().__init__(f"event dates {first}…{last} are being rebuilt by batch run {holder} "
                         f"(started {started_at.isoformat(timespec='seconds')})")
        self.holder = holder


class LabBusy(DatesBusy):
    """Another `lklab batch` holds this lab (its home's batch lock)."""

    def __init__(self) -> None:
        RuntimeError.__init__(self, "another `lklab batch` is running on this lab")
        self.holder = "another `lklab batch`"


@dataclass(frozen=True)
class BatchBlocked:
    """The blocked-batch signal: since when the batch layer has not promoted, which gate stopped
    its latest run and why, and the windows the divergence gates named."""

    since: datetime
    gate: str | None
    reason: str
    run_id: str
    first_date: str | None
    last_date: str | None
    diverged: list[dict] = field(default_factory=list)  # [{view, entity, window_start}]

    def windows(self, view: str) -> set[tuple[str, datetime]]:
        return {(d["entity"], datetime.fromisoformat(d["window_start"])) for d in self.diverged if d["view"] == view}


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _lock(conn: Connection) -> None:
    """Serialise lease-takers. SQLite: the INSERT that follows takes the database's write lock
    (held to commit; others wait on busy_timeout). PostgreSQL needs an explicit table lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("LOCK TABLE batch_runs IN SHARE ROW EXCLUSIVE MODE"))


def take_lease(engine: Engine, run_id: str, first: str, last: str, timeout_s: float, now: datetime | None = None) -> None:
    """Record `run_id` as running on event dates [first, last] unless another live run holds an
    overlapping range (DatesBusy). Idempotent for the run that holds it."""
    now = now or _now()
    r = batch_runs.c
    with engine.begin() as conn:
        _lock(conn)
        mine = conn.execute(select(r.status).where(r.run_id == run_id)).scalar()
        if mine == RUNNING:
            return
        conn.execute(batch_runs.insert().values(run_id=run_id, started_at=now, status=RUNNING, first_date=first, last_date=last))
        overlapping = conn.execute(select(r.run_id, r.started_at, r.first_date, r.last_date).where(
            r.status == RUNNING, r.run_id != run_id, r.first_date <= last, r.last_date >= first)).all()
        for holder, started_at, a, b in overlapping:
            if started_at > now - timedelta(seconds=timeout_s):
                raise DatesBusy(holder, a, b, started_at)  # rolls the insert back
            conn.execute(update(batch_runs).where(r.run_id == holder).values(
                status=FAILED, finished_at=now, reason=f"lease expired after {timeout_s:.0f}s without finishing (run died?); taken over by {run_id}"))


def holding(engine: Engine, run_ids: list[str]) -> set[str]:
    """Those of these runs that hold a lease (their row is running)."""
    r = batch_runs.c
    with engine.connect() as conn:
        return set(conn.execute(select(r.run_id).where(r.status == RUNNING, r.run_id.in_(run_ids))).scalars()) if run_ids else set()


def record_gate(engine: Engine, run_id: str, gate: str, reason: str, diverged: list[dict] | None = None) -> None:
    """A fail-severity gate of a running run failed: keep the first gate and reason, add its windows."""
    r = batch_runs.c
    with engine.begin() as conn:
        row = conn.execute(select(r.gate, r.reason, r.diverged).where(r.run_id == run_id, r.status == RUNNING)).first()
        if row is None:  # not a Lambda batch run (e.g. the ingest job's bronze gate)
            return
        conn.execute(update(batch_runs).where(r.run_id == run_id).values(
            gate=row.gate or gate, reason=row.reason or f"{gate}: {reason}"[:2000], diverged=[*(row.diverged or []), *(diverged or [])]))


def promoted(engine: Engine, run_id: str, build_id: str) -> None:
    r = batch_runs.c
    with engine.begin() as conn:
        conn.execute(update(batch_runs).where(r.run_id == run_id).values(status=PROMOTED, finished_at=_now(), build_id=build_id))


def finish(engine: Engine, run_id: str, failure: str) -> str | None:
    """End a run that did not promote: blocked when a gate recorded itself, failed otherwise.
    Returns the final status (None when the run has no record)."""
    r = batch_runs.c
    with engine.begin() as conn:
        row = conn.execute(select(r.status, r.gate).where(r.run_id == run_id)).first()
        if row is None or row.status != RUNNING:
            return None if row is None else row.status
        status = BLOCKED if row.gate else FAILED
        values = {"status": status, "finished_at": _now()}
        if status == FAILED:
            values["reason"] = failure[:2000]
        conn.execute(update(batch_runs).where(r.run_id == run_id).values(**values))
    return status


def _days(first: str, last: str) -> list[date]:
    a, b = date.fromisoformat(first), date.fromisoformat(last)
    return [date.fromordinal(n) for n in range(a.toordinal(), b.toordinal() + 1)]


def unpromoted_dates(engine: Engine) -> list[date]:
    """Event dates whose last finished batch run did not promote: a later run must rebuild them."""
    r = batch_runs.c
    last: dict[date, str] = {}
    with engine.connect() as conn:
        for status, first, last_date in conn.execute(select(r.status, r.first_date, r.last_date)
                                                     .where(r.status.in_(FINISHED), r.first_date.is_not(None))
                                                     .order_by(r.started_at)):
            for day in _days(first, last_date):
                last[day] = status
    return sorted(d for d, status in last.items() if status != PROMOTED)


def blocked(conn: Connection) -> BatchBlocked | None:
    """The signal: set while the latest finished run did not promote; cleared by a promotion."""
    r = batch_runs.c
    last_promoted = conn.execute(select(r.finished_at).where(r.status == PROMOTED).order_by(r.finished_at.desc()).limit(1)).scalar()
    after = [r.status.in_((BLOCKED, FAILED))]
    if last_promoted is not None:
        after.append(r.finished_at > last_promoted)
    rows = conn.execute(select(batch_runs).where(and_(*after)).order_by(r.finished_at)).all()
    if not rows:
        return None
    latest = rows[-1]
    # Every window any unpromoted run found diverged: a later run stopped by an earlier gate
    # never reaches the divergence gates, and must not clear what they found.
    diverged = list({(d["view"], d["entity"], d["window_start"]): d for row in rows for d in (row.diverged or [])}.values())
    return BatchBlocked(since=rows[0].finished_at, gate=latest.gate, reason=latest.reason or latest.status, run_id=latest.run_id,
                        first_date=latest.first_date, last_date=latest.last_date, diverged=diverged)
