"""The correction horizon: dedup and correction state that does not grow with history, as
Flink's state TTL and Kafka Streams' grace periods bound theirs.

Every consumer of the log (the Lambda speed layer, each Kappa job) holds, per event, the highest
version it applied and what that version contributed to each view, so a duplicate is ignored and
a correction retracts exactly what the old version added. That state is kept only for
`Settings.correction_horizon_s` of event time:

- A partition's progress is the largest event time read from it. A record whose event time is
  more than the horizon behind its own partition's progress is **beyond the horizon**: it is not
  applied (whether new, a duplicate or a correction), it is counted (`beyond_horizon`), and the
  windows it would have touched are recorded with the output's dropped windows (the same table
  as the speed layer's late windows). The rule reads only the record and its partition, so it
  does not depend on how a consumer interleaves partitions: a replay and a live job refuse the
  same records.
  - Lambda: the speed layer's windows that old are final long before (allowed lateness), so
    the record is left to batch, which dedups across all history; nothing changes for readers.
  - Kappa: the record is refused. A new version replayed with a longer horizon repairs it.
- Held state lives in event-time buckets (`BUCKET_S`, by the held version's event time). A
  bucket is dropped whole once the watermark (the slowest partition's progress) has passed its
  end by the horizon: every later record of those events at or before their held time is then
  beyond the horizon on any partition, so dropping them changes no answer.
- What the buckets cannot see: a correction that moves an event's time from before the horizon
  into it, arriving after the original's bucket was dropped. Its original can no longer be
  retracted: the correction is applied as a new event and the original's contribution stays
  (Kappa; the speed layer's old window is batch's anyway). The generator moves a corrected time
  by at most `correction_shift_max_s` (15 min), far inside the default horizon.
"""
from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta


BUCKET_S = 3600


def beyond(event_time: datetime, partition_progress: datetime, horizon_s: int) -> bool:
    """Whether a record at `event_time` is beyond the horizon of a partition that has reached `partition_progress`."""
    return event_time < floor(partition_progress, horizon_s)


def floor(partition_progress: datetime, horizon_s: int) -> datetime:
    """The oldest event time a partition that has reached `partition_progress` still accepts (see beyond)."""
    return partition_progress - timedelta(seconds=horizon_s)


def bucket_of(event_time: datetime) -> int:
    """The event-time bucket holding `event_time`: its start, in epoch seconds (an int, as the
    store keeps it: cheap to compare and to bind)."""
    return int(event_time.timestamp()) // BUCKET_S * BUCKET_S  # aware: timestamp() is (t - EPOCH).total_seconds()


def cutoff(watermark: datetime, horizon_s: int) -> int:
    """State held in buckets before this one is dropped: the bucket of the watermark minus the
    horizon (whole buckets go)."""
    return bucket_of(watermark - timedelta(seconds=horizon_s))


class HeldBuckets:
    """Which held events fall in which event-time bucket, so that a bucket is dropped whole."""

    def __init__(self, horizon_s: int) -> None:
        self.horizon_s = horizon_s
        self.members: dict[int, set[str]] = {}
        self.bucket_of: dict[str, int] = {}
        self.moved: dict[str, int] = {}  # events moved to another bucket since take_moved(): the bucket they left

    def hold(self, event_id: str, bucket: int) -> None:
        old = self.bucket_of.get(event_id)
        if old == bucket:
            return
        if old is not None:
            self.members[old].discard(event_id)
            self.moved.setdefault(event_id, old)
        self.bucket_of[event_id] = bucket
        self.members.setdefault(bucket, set()).add(event_id)

    def hold_all(self, held: Iterable[tuple[str, int]]) -> None:
        if self.bucket_of:
            for event_id, bucket in held:
                self.hold(event_id, bucket)
            return
        # nothing held yet (a restart or a restore: every event once): no moves to track
        self.bucket_of = dict(held)
        for event_id, bucket in self.bucket_of.items():
            members = self.members.get(bucket)
            if members is None:
                members = self.members[bucket] = set()
            members.add(event_id)

    def take_moved(self) -> dict[str, int]:
        """The events a correction moved to another bucket since the last call, with the bucket each
        was in then (where a checkpoint writes its tombstone: lklab.engine.chunks); an event
        moved back to that bucket is left out."""
        moved, self.moved = self.moved, {}
        return {eid: old for eid, old in moved.items() if self.bucket_of.get(eid) != old}

    def expire(self, limit: int) -> list[str]:
        """Forget the buckets before `limit` (a cutoff); returns their event ids (to drop from
        the held versions and contributions)."""
        gone: list[str] = []
        for bucket in [b for b in self.members if b < limit]:
            for event_id in self.members.pop(bucket):
                del self.bucket_of[event_id]
                gone.append(event_id)
        return gone
