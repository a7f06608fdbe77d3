"""A Kappa job's held state, checkpointed as compact chunks instead of one SQL row per event.

The state a consumer holds (each event's highest version and, per view, what that version
contributes) changes for every event it applies. The Lambda speed layer keeps it as rows
(`speed_event_state`, `speed_contrib`) because it looks events up batch by batch. A Kappa job holds
all of it in memory (lklab.engine.checkpoint) and only needs the store to restart from, so each
checkpoint writes what changed as a changelog of chunks (table `held_chunks`): per event-time
bucket (lklab.engine.horizon), one msgpack chunk of the versions and one per view of the
contributions, stamped with the checkpoint's sequence number. A few dozen inserts per checkpoint
replace a row upsert per event and per contribution.

Reading the chunks back folds them in sequence order, last write wins:

- an entry `[event_id, value]` holds the event in that bucket with that value;
- a deletion `[event_id]` written in bucket B removes the event if it is held in B. A checkpoint
  writes one where an event's contribution went away, and a tombstone in the bucket an event left
  when a correction moved its event time to another bucket: otherwise, once the newer bucket
  expired, the older one's entry would come back.

Compaction keeps the changelog short. A live job checkpoints every fraction of a second, so
the bucket at the head of event time gets a chunk per checkpoint, and late events add chunks to
older buckets. Once a bucket is behind the head (cold), its chunks of one view are merged into
one (compact): each event's last entry or deletion in that bucket, stamped with the newest
chunk's sequence number. That equals folding them because of the invariant above: an event that
leaves a bucket gets a deletion there in the same checkpoint, so nothing written to another
bucket between the merged chunks can be overtaken. A deletion is kept (it may still remove what
a row holds). A bucket is merged when it has COMPACT_MIN_CHUNKS chunks and what came after its
first holds COMPACT_SHARE of its entries (or COMPACT_MAX_CHUNKS chunks): each entry is
re-encoded a bounded number of times, and a replay, whose checkpoints are large and few, rarely
merges at all.

The horizon drops a bucket's chunks whole. Contributions that SQL reads stay rows
(`ViewSpec.contribs_as_rows`): a user's rows are purged by `lklab forget`, and sessions re-read a
rider's times.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

import msgspec
from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from lklab.serving.store import held_chunks
from lklab.views import Contrib
from lklab.views.windows import EPOCH

VERSIONS = ""  # the view column of the versions' chunks

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list).decode

Held = dict[str, tuple[int | None, object]]  # event_id -> (bucket, value); bucket None: read from a row


def _micros(at: datetime) -> int:
    return (at - EPOCH) // timedelta(microseconds=1)


def version_entry(event_id: str, version: int) -> list:
    return [event_id, version]


def contrib_entry(event_id: str, contrib: Contrib) -> list:
    return [event_id, contrib.entity, _micros(contrib.window), contrib.amount, contrib.member]


class ChunkWriter:
    """One checkpoint's chunks: entries and deletions per (view, bucket), written in one INSERT."""

    def __init__(self, *, replaces_rows: bool = False) -> None:
        self.entries: dict[tuple[str, int], list[list]] = {}
        self.replaces_rows = replaces_rows  # the whole state: the scope's rows are deleted with it

    def add(self, view: str, bucket: int, entry: list) -> None:
        self.entries.setdefault((view, bucket), []).append(entry)

    def delete(self, view: str, bucket: int, event_id: str) -> None:
        self.add(view, bucket, [event_id])

    def contrib(self, view: str, bucket: int, event_id: str, contrib: Contrib | None) -> None:
        """The event's contribution to `view` held in `bucket`, or its deletion (None)."""
        if contrib is None:
            self.delete(view, bucket, event_id)
        else:
            self.add(view, bucket, contrib_entry(event_id, contrib))

    def moved_out(self, event_id: str, left: int, views: Iterable[str]) -> None:
        """Tombstones where a correction moved the event out of bucket `left` (see the module)."""
        for view in (VERSIONS, *views):
            self.delete(view, left, event_id)

    def write(self, conn: Connection, scope: str, seq: int, cutoff: int | None = None) -> None:
        """Insert the chunks, but none of a bucket before `cutoff` (expired in this same transaction)."""
        rows = [{"scope": scope, "view": view, "time_bucket": bucket, "seq": seq, "entries": len(entries),
                 "payload": _encode(entries)}
                for (view, bucket), entries in self.entries.items() if cutoff is None or bucket >= cutoff]
        if rows:
            conn.execute(held_chunks.insert(), rows)


COMPACT_MIN_CHUNKS = 8
COMPACT_MAX_CHUNKS = 64
COMPACT_SHARE = 0.25


def merged(payloads: Iterable[bytes]) -> list[list]:
    """The entries of one chunk equal to these chunks of one (view, bucket), in sequence order:
    each event's last entry or deletion (see the module for why that equals folding them)."""
    last: dict[str, list] = {}
    for payload in payloads:
        for entry in _decode(payload):
            last[entry[0]] = entry
    return list(last.values())


def due(entries: Sequence[int], min_chunks: int = COMPACT_MIN_CHUNKS) -> bool:
    """Whether a cold bucket's chunks (their entry counts, oldest first) are worth merging."""
    if len(entries) < min_chunks:
        return False
    return len(entries) >= COMPACT_MAX_CHUNKS or sum(entries[1:]) >= COMPACT_SHARE * entries[0]


def compact(conn: Connection, scope: str, before: int, *, min_chunks: int = COMPACT_MIN_CHUNKS) -> int:
    """Merge the chunks of each (view, bucket) of `scope` before bucket `before` (the head of
    event time) that are due; returns the chunks removed. Run inside a checkpoint's transaction."""
    t = held_chunks
    counts = conn.execute(
        select(t.c.view, t.c.time_bucket).where(t.c.scope == scope, t.c.time_bucket < before)
        .group_by(t.c.view, t.c.time_bucket).having(func.count() >= min_chunks)).all()
    removed = 0
    for view, bucket in counts:
        mine = (t.c.scope == scope, t.c.view == view, t.c.time_bucket == bucket)
        found = conn.execute(select(t.c.seq, t.c.entries, t.c.payload).where(*mine).order_by(t.c.seq)).all()
        if not due([row.entries for row in found], min_chunks):
            continue
        entries = merged(row.payload for row in found)
        conn.execute(t.delete().where(*mine))
        conn.execute(t.insert(), [{"scope": scope, "view": view, "time_bucket": bucket, "seq": found[-1].seq,
                                   "entries": len(entries), "payload": _encode(entries)}])
        removed += len(found) - 1
    return removed


def next_seq(conn: Connection, scope: str) -> int:
    """The sequence number of the scope's next checkpoint."""
    last = conn.execute(select(func.max(held_chunks.c.seq)).where(held_chunks.c.scope == scope)).scalar_one()
    return 0 if last is None else last + 1


def expire(conn: Connection, scope: str, cutoff: int) -> None:
    """Drop the scope's chunks of buckets before `cutoff` (lklab.engine.horizon.cutoff)."""
    conn.execute(held_chunks.delete().where(held_chunks.c.scope == scope, held_chunks.c.time_bucket < cutoff))


def _rows(conn: Connection, scope: str | None, views: Sequence[str]):
    t = held_chunks
    query = select(t.c.view, t.c.time_bucket, t.c.payload).where(t.c.view.in_(views))
    if scope is not None:
        query = query.where(t.c.scope == scope)
    return conn.execute(query.order_by(t.c.seq, t.c.view, t.c.time_bucket))


def fold_into(held: dict[str, Held], chunks: Iterable[tuple[str, int, bytes]]) -> None:
    """Apply chunks (view, bucket, payload), in sequence order, to `held` (view -> Held)."""
    for view, bucket, payload in chunks:
        mine = held.setdefault(view, {})
        for entry in _decode(payload):
            event_id = entry[0]
            if len(entry) == 1:
                found = mine.get(event_id)
                if found is not None and found[0] in (bucket, None):
                    del mine[event_id]
            else:
                mine[event_id] = (bucket, entry[1] if len(entry) == 2 else entry[1:])


def read(conn: Connection, views: Sequence[str], scope: str | None = None) -> dict[str, Held]:
    """The held entries per view ('' for the versions) in the chunks of `scope` (None: any).
    Contributions come back as [entity, window µs, amount, member] lists: see contribs()."""
    held: dict[str, Held] = {}
    fold_into(held, _rows(conn, scope, views))
    return held


def contribs(view: str, held: Held) -> dict[tuple[str, str], Contrib]:
    """A view's held contributions as the sink keeps them."""
    windows: dict[int, datetime] = {}  # window starts repeat: convert each once

    def window(micros: int) -> datetime:
        found = windows.get(micros)
        if found is None:
            found = windows[micros] = EPOCH + timedelta(microseconds=micros)
        return found

    out: dict[tuple[str, str], Contrib] = {}
    for event_id, (_, value) in held.items():
        out[(view, event_id)] = Contrib(value[0], window(value[1]), value[2], value[3])
    return out


def state_writer(versions: Mapping[str, int], buckets: Mapping[str, int],
                 contribs_by_view: Mapping[tuple[str, str], Contrib | None], views: Iterable[str]) -> ChunkWriter:
    """A whole held state as one checkpoint's chunks, to replace the scope's rows (`replaces_rows`).
    An event with no bucket (held before buckets were kept, with no progress to date it by) is left out."""
    writer = ChunkWriter(replaces_rows=True)
    for event_id, version in versions.items():
        if (bucket := buckets.get(event_id)) is not None:
            writer.add(VERSIONS, bucket, version_entry(event_id, version))
    wanted = set(views)
    for (view, event_id), contrib in contribs_by_view.items():
        if view in wanted and contrib is not None and (bucket := buckets.get(event_id)) is not None:
            writer.add(view, bucket, contrib_entry(event_id, contrib))
    return writer


def arrow_state_writer(state, contrib, view: str | None, undated: int | None) -> ChunkWriter:
    """state_writer() straight from a snapshot's Arrow pieces: `state` (event_id, event_version,
    time_bucket) and, for a chunked view, `contrib` (event_id, entity, window_start, amount,
    member) of `view`. Buckets are grouped in Arrow, and no Contrib or datetime is built per
    event. A null bucket (a snapshot from before buckets were kept) is `undated`, or left out."""
    import pyarrow.compute as pc

    buckets = state.column("time_bucket")
    if undated is not None:
        buckets = pc.fill_null(buckets, undated)
    state = state.set_column(state.schema.get_field_index("time_bucket"), "time_bucket", buckets).filter(pc.is_valid(buckets))
    writer = ChunkWriter(replaces_rows=True)
    _add_by_bucket(writer, VERSIONS, state, ("event_id", "event_version"))
    if contrib is not None and view is not None and contrib.num_rows:
        joined = contrib.join(state.select(["event_id", "time_bucket"]), "event_id", join_type="inner")
        window_micros = pc.cast(joined.column("window_start"), "int64")  # µs since the epoch, as _micros
        joined = joined.set_column(joined.schema.get_field_index("window_start"), "window_start", window_micros)
        _add_by_bucket(writer, view, joined, ("event_id", "entity", "window_start", "amount", "member"))
    return writer


def _add_by_bucket(writer: ChunkWriter, view: str, table, columns: Sequence[str]) -> None:
    """The rows of `table` as entries (tuples of `columns`), one list per time_bucket."""
    import numpy as np

    if not table.num_rows:
        return
    table = table.sort_by("time_bucket")
    buckets = table.column("time_bucket").to_numpy()
    starts = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]]).tolist() + [table.num_rows]
    rows = list(zip(*(table.column(c).to_pylist() for c in columns)))
    for start, end in zip(starts, starts[1:]):
        writer.entries[(view, int(buckets[start]))] = rows[start:end]
