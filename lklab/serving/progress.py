"""Consumer progress, counters and the heartbeat, as the serving store keeps them: the one
module that reads and writes speed_progress, speed_counters and speed_heartbeat.

Progress is per consumer scope (the live speed group, or a Kappa job's group) and partition:
the next offset and the highest event time consumed, committed in the same transaction as the
results (lklab.engine), so it is exact for them."""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import Engine, and_, select, update
from sqlalchemy.engine import Connection

from lklab.core.config import Settings
from lklab.serving.store import add_to, dialect_insert, speed_counters, speed_heartbeat, speed_progress, upsert

# Counter names in speed_counters.
PROCESSED = "processed"  # records that parsed into an event (whatever happened to them next)
DUPLICATES_IGNORED = "duplicates_ignored"  # event_id already held at the same or a higher version
LATE_DROPPED = "late_dropped"  # too late for at least one view's window (already final); batch owns it
DEAD_LETTERED = "dead_lettered"  # broke the event contract; sent to the DLQ topic
CORRECTIONS_APPLIED = "corrections_applied"  # a higher event_version replaced a held contribution
REDELIVERED_SKIPPED = "redelivered_skipped"  # offset below the committed next_offset (Kafka re-delivery)
# Offsets the log no longer held when this consumer reached them: retention outran it (the consumer
# resets to the log start). Those events are not in this state; batch or a replay from bronze must cover them.
OFFSETS_MISSED = "offsets_missed"
# Older than the correction horizon (lklab.engine.horizon): refused by Kappa, left to batch by Lambda.
BEYOND_HORIZON = "beyond_horizon"
COUNTERS = (PROCESSED, DUPLICATES_IGNORED, LATE_DROPPED, DEAD_LETTERED, CORRECTIONS_APPLIED, REDELIVERED_SKIPPED, OFFSETS_MISSED,
            BEYOND_HORIZON)

DEFAULT_SCOPE = Settings.model_fields["speed_group"].default  # the live speed layer's consumer group


class StaleProgressError(RuntimeError):
    """Another consumer committed offsets for a partition of this batch first (a rebalance race).

    Nothing of the batch was written; applying the same records again is safe (the
    already-committed offsets are skipped)."""


@dataclass(frozen=True)
class PartitionProgress:
    partition: int
    next_offset: int
    max_event_time: datetime | None
    updated_at: datetime


def _now() -> datetime:
    return datetime.now(timezone.utc)


def load(conn: Connection, scope: str, topic: str) -> dict[int, tuple[int, datetime | None]]:
    """partition → (next offset, max event time) of a consumer, in the caller's transaction."""
    t = speed_progress
    rows = conn.execute(select(t.c.partition, t.c.next_offset, t.c.max_event_time).where(t.c.scope == scope, t.c.topic == topic))
    return {p: (next_offset, max_time) for p, next_offset, max_time in rows}


def next_offsets(conn: Connection, scope: str, topic: str) -> dict[int, int]:
    """partition → the next offset a consumer will read (partitions never consumed are absent)."""
    return {p: nxt for p, (nxt, _) in load(conn, scope, topic).items()}


def max_event_times(conn: Connection, scope: str, topic: str) -> dict[int, datetime]:
    """partition → the highest event time a consumer has seen (the input of its watermark)."""
    return {p: mt for p, (_, mt) in load(conn, scope, topic).items() if mt is not None}


def has_progress(conn: Connection, scope: str) -> bool:
    return conn.execute(select(speed_progress.c.partition).where(speed_progress.c.scope == scope).limit(1)).first() is not None


def read_progress(engine: Engine, topic: str, scope: str = DEFAULT_SCOPE) -> dict[int, PartitionProgress]:
    """Committed progress per partition of `topic` for a consumer (partitions never consumed are absent)."""
    t = speed_progress
    with engine.connect() as conn:
        rows = conn.execute(select(t.c.partition, t.c.next_offset, t.c.max_event_time, t.c.updated_at)
                            .where(t.c.scope == scope, t.c.topic == topic).order_by(t.c.partition))
        return {p: PartitionProgress(p, nxt, mt, ua) for p, nxt, mt, ua in rows}


def commit(conn: Connection, scope: str, topic: str, advanced: Mapping[int, int], committed: Mapping[int, int],
           max_time: Mapping[int, datetime]) -> None:
    """Write the new next_offset per partition, fenced on the value read at the start: if another
    consumer moved it meanwhile, the whole transaction is rolled back (StaleProgressError)."""
    if not advanced:
        return
    now = _now()
    t = speed_progress
    inserts = []
    for partition, nxt in sorted(advanced.items()):
        values = {"next_offset": nxt, "max_event_time": max_time.get(partition), "updated_at": now}
        if partition in committed:
            result = conn.execute(
                update(t)
                .where(and_(t.c.scope == scope, t.c.topic == topic, t.c.partition == partition,
                            t.c.next_offset == committed[partition]))
                .values(**values)
            )
            if result.rowcount != 1:
                raise StaleProgressError(
                    f"{topic}[{partition}]: next_offset moved past {committed[partition]} while this batch ran; batch rolled back"
                )
        else:
            inserts.append({"scope": scope, "topic": topic, "partition": partition, **values})
    if inserts:
        # RETURNING, not rowcount: psycopg reports -1 for INSERT … ON CONFLICT DO NOTHING under
        # SQLAlchemy, so a rowcount fence rolled back every first batch on PostgreSQL
        stmt = (dialect_insert(conn)(t).on_conflict_do_nothing(index_elements=["scope", "topic", "partition"])
                .returning(t.c.partition))
        for row in inserts:  # one per newly seen partition, once in the topic's lifetime
            if conn.execute(stmt, row).first() is None:
                raise StaleProgressError(f"{topic}[{row['partition']}]: progress created concurrently; batch rolled back")


def add_counters(conn: Connection, scope: str, counts: Mapping[str, int]) -> None:
    add_to(conn, speed_counters, [{"scope": scope, "name": k, "value": v} for k, v in counts.items() if v], add=("value",))


def read_counters(engine: Engine, scope: str = DEFAULT_SCOPE) -> dict[str, int]:
    """A consumer's counters, with the known ones present (0) even before they first move."""
    with engine.connect() as conn:
        found = dict(conn.execute(select(speed_counters.c.name, speed_counters.c.value).where(speed_counters.c.scope == scope)).all())
    return {**{name: 0 for name in COUNTERS}, **found}


def beat(engine: Engine, group: str) -> None:
    """A worker's liveness signal (one row per consumer group)."""
    with engine.begin() as conn:
        upsert(conn, speed_heartbeat, [{"group_id": group, "pid": os.getpid(), "beat_at": _now()}])


def last_beat(conn: Connection, group: str) -> datetime | None:
    return conn.execute(select(speed_heartbeat.c.beat_at).where(speed_heartbeat.c.group_id == group)).scalar()


def heartbeat(conn: Connection, group: str) -> tuple[int, datetime] | None:
    """(pid, beat time) of the worker that last beat for this group, or None."""
    row = conn.execute(select(speed_heartbeat.c.pid, speed_heartbeat.c.beat_at).where(speed_heartbeat.c.group_id == group)).first()
    return None if row is None else (row.pid, row.beat_at)


def lag(next_offsets: Mapping[int, int], end_offsets: Mapping[int, int]) -> int:
    """Records a consumer is behind the log's end, over every partition of the log."""
    return sum(max(end - next_offsets.get(p, 0), 0) for p, end in end_offsets.items())
