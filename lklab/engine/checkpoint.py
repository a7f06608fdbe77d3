"""A Kafka consumer's sink whose state lives in memory: a Kappa job's (lklab.kappa.job)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime

from sqlalchemy import Engine

from lklab import views
from lklab.core.config import Settings
from lklab.engine.fold import ApplyStats, BatchDeltas, InputRecord, fence_and_parse, fold
from lklab.engine import horizon
from lklab.engine.horizon import HeldBuckets
from lklab.engine import chunks
from lklab.engine.chunks import ChunkWriter
from lklab.engine.sink import HeldState, drop_rows, drop_users, expire_held, has_rows, load_held, persist
from lklab.privacy import requests
from lklab.serving import progress


class CheckpointedSink:
    """A replay's sink: its state lives in memory and is checkpointed to the serving store, with
    the offsets, in one transaction every `every` records (and at checkpoint()).

    Same effect as apply_records batch by batch (the same fence, fold and writes), but a replay
    owns its scope alone, so the state is read once at start instead of per batch, and each
    event's state is written once per checkpoint instead of once per batch. A crash loses only
    the work since the last checkpoint: the offsets committed with it are where a re-run resumes,
    and the offset fence makes that exactly-once. The output moves checkpoint by checkpoint.

    The held state is checkpointed as compact chunks (lklab.engine.chunks): per event-time bucket,
    the versions and contributions the checkpoint changed, a few dozen inserts instead of a row
    per event; contributions that SQL reads stay rows (`ViewSpec.contribs_as_rows`). State a
    scope holds as rows (written before chunks, or a snapshot's install) is rewritten as chunks
    by its first checkpoint.

    Checkpoints are written by one background thread while the next records are folded (the
    driver releases the GIL while it writes); at most one is in flight, and they commit in order.
    Memory: one entry per event held, per view (a heap state backend, as in Flink), within the horizon.

    `before_commit(stats)`, if given, runs inside each checkpoint's open transaction (a job sends
    the checkpoint's dead letters there); if it raises, the checkpoint is not committed.
    `restored`, if given, is the scope's state as just restored from a snapshot
    (lklab.engine.snapshots.held_state): it is taken as is instead of read back.
    The held state is bounded by the correction horizon (lklab.engine.horizon): at each
    checkpoint, the event-time buckets the watermark has left behind by the horizon are dropped,
    from memory and, in the checkpoint's transaction, from the store."""

    def __init__(self, engine: Engine, settings: Settings, topic: str, specs: Sequence[views.ViewSpec], scope: str,
                 *, close_windows: bool = False, every: int = 100_000,
                 before_commit: Callable[[ApplyStats], None] | None = None,
                 restored: HeldState | None = None) -> None:
        self.engine, self.topic, self.specs, self.scope, self.every = engine, topic, list(specs), scope, every
        self.before_commit = before_commit
        self.lateness, self.partitions = (settings.allowed_lateness_s if close_windows else None), settings.partitions
        self.horizon_s = settings.correction_horizon_s
        self.chunked = [spec.name for spec in self.specs if not spec.contribs_as_rows]
        self.row_views = [spec.name for spec in self.specs if spec.contribs_as_rows]
        with engine.connect() as conn:
            held = progress.load(conn, scope, topic)
            if restored is None:
                restored = load_held(conn, scope, [spec.name for spec in self.specs])
            self.seq, self.rows_to_convert = chunks.next_seq(conn, scope), has_rows(conn, scope)
        self.versions, self.contribs = restored.versions, restored.contribs
        self.committed = {p: nxt for p, (nxt, _) in held.items()}
        self.max_time: dict[int, datetime] = {p: mt for p, (_, mt) in held.items() if mt is not None}
        self.buckets = HeldBuckets(self.horizon_s)
        # State held before buckets were kept is dated at the progress it was held at: no record
        # of it can be later, so it expires no sooner than it should (in memory; the store keeps it).
        latest = max(self.max_time.values(), default=None)
        undated = None if latest is None else horizon.bucket_of(latest)
        self.buckets.hold_all((eid, undated if bucket is None else bucket) for eid, bucket in restored.buckets
                              if bucket is not None or undated is not None)
        self.next_offset = dict(self.committed)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"checkpoint-{scope}")
        self._in_flight: Future | None = None
        self.forgotten: frozenset[str] | None = None  # the tombstone list, read per checkpoint
        self._reset()

    def _reset(self) -> None:
        """A new checkpoint's accumulators; the tombstone list is re-read, so a user forgotten
        while a replay runs stops counting from the next checkpoint."""
        forgotten = requests.forgotten_users(self.engine) if any(s.keyed_by_user for s in self.specs) else frozenset()
        if self.forgotten is not None and (new := forgotten - self.forgotten):  # at start: the state loaded was purged already
            drop_users(self.contribs, new, self.specs)  # the purge deleted them from the store; the sink scrubs any written back
        self.forgotten = forgotten
        self.pending, self.deltas, self.changed, self.since = ApplyStats(topic=self.topic), BatchDeltas(), {}, 0

    def apply(self, records: Sequence[InputRecord]) -> None:
        fresh = fence_and_parse(records, self.next_offset, self.pending)
        fold(fresh, self.specs, self.versions, self.contribs, self.max_time, self.deltas, self.changed,
              self.pending, self.lateness, self.partitions, self.forgotten, horizon_s=self.horizon_s, buckets=self.buckets)
        self.since += len(records)
        if self.since >= self.every:
            self.start_checkpoint()

    def start_checkpoint(self) -> None:
        """Hand what was applied so far to the writer thread (after the previous checkpoint is
        written) and go on: the caller keeps folding while it is written."""
        self._wait()
        done = self.pending
        if done.next_offsets:
            cut, expired = self._expire()
            changes = self._whole_state() if self.rows_to_convert else self._changes(self.buckets.take_moved())
            self.rows_to_convert = False
            self._in_flight = self._writer.submit(self._write, done, self.deltas, changes, dict(self.max_time),
                                                  cut, expired, self.seq)
            self.seq += 1
        self._reset()

    def _expire(self) -> tuple[int | None, list[str]]:
        """Drop the buckets past the correction horizon from memory; returns the cutoff, by which
        the checkpoint drops their state from the store (None: no watermark yet), and the events dropped."""
        watermark = views.watermark(self.max_time, self.partitions)
        if watermark is None:
            return None, []
        cut = horizon.cutoff(watermark, self.horizon_s)
        expired = self.buckets.expire(cut)
        for event_id in expired:
            self.versions.pop(event_id, None)
            for spec in self.specs:
                self.contribs.pop((spec.name, event_id), None)
        return cut, expired

    def _changes(self, moved: dict[str, int]) -> ChunkWriter:
        """This checkpoint's chunks: each changed event's version and chunked contributions in its
        bucket, and a tombstone where a correction moved one out of a bucket. The chunked views'
        contributions leave the deltas (the rest are written as rows)."""
        writer, changed, chunked = ChunkWriter(), self.changed, set(self.chunked)
        for event_id, (version, bucket) in changed.items():
            writer.add(chunks.VERSIONS, bucket, chunks.version_entry(event_id, version))
        for key in [key for key in self.deltas.contribs if key[0] in chunked]:
            view, event_id = key
            writer.contrib(view, changed[event_id][1], event_id, self.deltas.contribs.pop(key))
        for event_id, left in moved.items():
            writer.moved_out(event_id, left, self.chunked)
        return writer

    def _whole_state(self) -> ChunkWriter:
        """Everything held, as chunks (replacing the scope's rows: see _write)."""
        self.buckets.take_moved()
        chunked = set(self.chunked)
        for key in [key for key in self.deltas.contribs if key[0] in chunked]:
            del self.deltas.contribs[key]
        return chunks.state_writer(self.versions, self.buckets.bucket_of, self.contribs, self.chunked)

    def _write(self, done: ApplyStats, deltas: BatchDeltas, changes: ChunkWriter, max_time: dict[int, datetime],
               cut: int | None, expired: list[str], seq: int) -> None:
        with self.engine.begin() as conn:
            if changes.replaces_rows:
                drop_rows(conn, self.scope, self.chunked)
            persist(conn, self.scope, self.topic, deltas, {}, done, dict(self.committed), max_time)
            changes.write(conn, self.scope, seq, cut)
            if cut is not None:  # after the writes: an event applied in this checkpoint may already be past it
                expire_held(conn, self.scope, self.row_views, cut, expired if self.row_views else ())
            if max_time:  # the buckets behind the head of event time: their changelogs merged (lklab.engine.chunks)
                chunks.compact(conn, self.scope, horizon.bucket_of(max(max_time.values())))
            if self.before_commit is not None:
                self.before_commit(done)
        self.committed.update(done.next_offsets)

    def _wait(self) -> None:
        if self._in_flight is not None:
            in_flight, self._in_flight = self._in_flight, None
            in_flight.result()  # re-raises a failed checkpoint here, in the replay's thread

    def checkpoint(self) -> dict[int, int]:
        """Write everything applied so far and wait for it; returns the committed offsets."""
        self.start_checkpoint()
        self._wait()
        return dict(self.committed)

    def close(self) -> None:
        """Stop the writer thread; what was not checkpointed is dropped (a re-run redoes it)."""
        try:
            self._wait()
        finally:
            self._writer.shutdown(wait=True)
