"""The rollback window: after a swap moves `<view>` away from a version, that version's job keeps
running for `kappa_rollback_window_s`, so a rollback lands on a current output at once; then the
job retires itself. Its output stays in the store for audit."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import Engine, select

from lklab.core.config import Settings
from lklab.kappa.names import output_name
from lklab.kappa.query import published
from lklab.serving.publish import KAPPA
from lklab.serving.store import publish_log


def alias_moves(view: str) -> tuple:
    """The publish records that moved the alias (refreshes keep it where it is)."""
    return (publish_log.c.view == view, publish_log.c.arch == KAPPA, publish_log.c.action.in_(("cutover", "rollback")))


def retire_reason(settings: Settings, engine: Engine, view: str, version: int, started_at: datetime,
                  now: datetime | None = None) -> str | None:
    """Why the job of `<view>__v<N>` (started at `started_at`) should stop now, or None: the alias
    moved away from its output after the job started, and the rollback window has passed since.
    A job started after that move (someone wants it back) is left alone."""
    output, now = output_name(view, version), now or datetime.now(timezone.utc)
    with engine.connect() as conn:
        if published(conn, view) == output:
            return None
        moved = conn.execute(select(publish_log.c.at, publish_log.c.target)
                             .where(*alias_moves(view), publish_log.c.from_target == output, publish_log.c.at >= started_at)
                             .order_by(publish_log.c.id.desc()).limit(1)).first()
    if moved is None:
        return None
    ends = moved.at + timedelta(seconds=settings.kappa_rollback_window_s)
    if now < ends:
        return None
    return (f"retiring: {view} moved from {output} to {moved.target} at {moved.at.isoformat()} and the rollback window "
            f"({settings.kappa_rollback_window_s:g}s) ended at {ends.isoformat()}; the output is kept for audit")
