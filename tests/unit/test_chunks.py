"""A Kappa job's held state checkpointed as chunks (lklab.engine.chunks) against a temporary
serving store, no Kafka: what a restart reads back is what the job held in memory, including
after corrections that move an event to another event-time bucket and buckets that expire; state
held as rows is rewritten as chunks; and the outputs equal the oracle."""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

from hypothesis import HealthCheck, given, settings, strategies as st
from sqlalchemy import func, select

from lklab import views
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.core.events import SCHEMA_VERSION, Event, EventType
from lklab.engine import chunks
from lklab.engine.checkpoint import CheckpointedSink
from lklab.engine.chunks import ChunkWriter
from lklab.engine.sink import apply_records, load_held, load_versions, read_view
from lklab.log.generator import GeneratorConfig, generate
from lklab.serving.store import held_chunks, make_engine, speed_contrib, speed_event_state
from tests.unit.test_horizon import PARTITIONS, partitioned

TOPIC = "rides.events.unit"
SPECS = list(views.SPEED_LAYER.values())
HOUR = 3600


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def payment(eid: str, when: str, version: int = 1, city: str = "berlin", amount: int = 500) -> bytes:
    return Event(event_id=eid, event_version=version, schema_version=SCHEMA_VERSION, event_type=EventType.PAYMENT_CAPTURED,
                 event_time=at(when), ride_id=eid.split("-")[0], user_id="u1", driver_id="d1", city=city,
                 amount_cents=amount).to_json().encode()


def stored(engine, scope: str) -> tuple[dict, dict]:
    """What a restarting job reads back: versions and contributions (no None: an absent one)."""
    with engine.connect() as conn:
        held = load_held(conn, scope, [s.name for s in SPECS])
    return held.versions, {k: c for k, c in held.contribs.items() if c is not None}


def in_memory(sink: CheckpointedSink) -> tuple[dict, dict]:
    return dict(sink.versions), {k: c for k, c in sink.contribs.items() if c is not None}


def count(engine, table, *where) -> int:
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one()


def test_a_correction_that_moves_an_event_to_an_older_bucket_leaves_a_tombstone(tmp_path, serving_url) -> None:
    """E is captured at 10:50 (bucket 10:00); its correction moves it to 09:55 (bucket 09:00). Once
    the watermark passes 11:00 + the horizon, bucket 09:00 expires and E with it: the chunk of
    bucket 10:00 still holds E's first version, and without the tombstone a restart would hold
    E again (and ignore a new delivery of it as a duplicate)."""
    settings = Settings(home=tmp_path, partitions=1, correction_horizon_s=HOUR, serving_url=serving_url)
    engine, scope = make_engine(settings), "lklab-replay-chunks"
    sink = CheckpointedSink(engine, settings, TOPIC, SPECS, scope, every=10_000)
    sink.apply([(0, 0, payment("E-1", "2026-03-01T10:50:00"))])
    sink.checkpoint()
    sink.apply([(0, 1, payment("E-1", "2026-03-01T09:55:00", version=2))])
    sink.checkpoint()
    assert stored(engine, scope) == in_memory(sink) and sink.versions == {"E-1": 2}
    sink.apply([(0, 2, payment("F-1", "2026-03-01T11:30:00"))])  # watermark 11:30: buckets before 10:00 expire
    sink.checkpoint()
    sink.close()
    assert "E-1" not in sink.versions
    assert stored(engine, scope) == in_memory(sink)
    assert count(engine, held_chunks, held_chunks.c.scope == scope, held_chunks.c.time_bucket < 1772359200) == 0  # 2026-03-01T10:00Z


def test_after_every_checkpoint_the_store_holds_what_memory_holds(tmp_path, serving_url) -> None:
    """Many corrections that move events across buckets, late events and expiry: after each
    checkpoint a restart reads exactly the job's memory, and the outputs equal the oracle."""
    found = generate(GeneratorConfig(seed=91, duration_s=6 * HOUR, rides_per_minute=3, late_fraction=0.02,
                                     late_max_s=1800, correction_fraction=0.4, duplicate_fraction=0.05))
    records = partitioned(found.deliveries)
    corrections = sum(1 for e in found.deliveries if e.event_version > 1)
    assert corrections > 50
    settings = Settings(home=tmp_path, partitions=PARTITIONS, correction_horizon_s=2 * HOUR, serving_url=serving_url)
    engine, scope = make_engine(settings), "lklab-replay-chunks"
    sink = CheckpointedSink(engine, settings, TOPIC, SPECS, scope, every=10_000)
    checks = 0
    for i in range(0, len(records), 97):
        sink.apply(records[i:i + 97])
        sink.checkpoint()
        assert stored(engine, scope) == in_memory(sink), f"after the checkpoint of records [{i}, {i + 97})"
        checks += 1
    sink.close()
    assert checks > 20
    assert count(engine, speed_event_state, speed_event_state.c.scope == scope) == 0  # chunks, not rows
    assert 0 < len(sink.versions) < len({e.event_id for e in found.deliveries})  # expiry happened
    horizon = timedelta(seconds=settings.correction_horizon_s)
    progress: dict[int, datetime] = {}
    accepted = []
    for (p, _, _), event in zip(records, found.deliveries):  # the horizon's documented rule
        progress[p] = max(progress.get(p, event.event_time), event.event_time)
        if event.event_time >= progress[p] - horizon:
            accepted.append(event)
    truth = oracle.final_events(accepted)
    for name in views.SPEED_LAYER:
        got = {(r.entity, r.window_start): r.value for r in read_view(engine, name)}
        comparison = oracle.compare(got, oracle.for_view(name, truth))
        assert comparison.equal, f"{name}: {comparison}"


def test_state_held_as_rows_becomes_chunks_at_the_first_checkpoint(tmp_path, serving_url) -> None:
    """A scope whose state is rows (the per-batch sink's format, as before chunks) is read as is,
    and its first checkpoint rewrites it as chunks and deletes the rows."""
    settings = Settings(home=tmp_path, partitions=1, serving_url=serving_url)
    engine, scope = make_engine(settings), "lklab-replay-rows"
    first = [(0, i, payment(f"R{i}-1", f"2026-03-01T10:{i:02d}:00")) for i in range(20)]
    apply_records(engine, settings, TOPIC, first, specs=SPECS, scope=scope, close_windows=False)
    with engine.connect() as conn:
        before = load_versions(conn, scope)
    assert len(before) == 20 and count(engine, speed_event_state, speed_event_state.c.scope == scope) == 20
    sink = CheckpointedSink(engine, settings, TOPIC, SPECS, scope)
    assert sink.versions == before
    sink.apply([(0, 20, payment("R3-1", "2026-03-01T10:30:00", version=2, city="köln"))])
    sink.checkpoint()
    sink.close()
    assert count(engine, speed_event_state, speed_event_state.c.scope == scope) == 0
    assert count(engine, speed_contrib, speed_contrib.c.view.in_([s.name for s in SPECS])) == 0
    assert stored(engine, scope) == in_memory(sink)
    assert stored(engine, scope)[0] == before | {"R3-1": 2}
    rows = {(r.entity, r.window_start): r.value for r in read_view(engine, "revenue_per_minute")}
    assert rows[("köln", at("2026-03-01T10:30:00"))] == 500 and ("berlin", at("2026-03-01T10:03:00")) not in rows


# --- compaction ---------------------------------------------------------------------------------

_scopes = itertools.count()
PUT, DROP = "put", "drop"
operations = st.lists(st.lists(st.tuples(st.sampled_from([PUT, DROP]), st.integers(0, 5), st.integers(0, 3),
                                         st.integers(1, 9)), max_size=6), min_size=1, max_size=24)


def write_history(conn, scope: str, history: list[list[tuple]]) -> dict[str, tuple[int, int]]:
    """Checkpoints as a job writes them: the ops of one checkpoint (an event put in a bucket with a
    value, or dropped) collapse to each touched event's entry in its bucket now, and a deletion in
    the bucket it was held in at the last checkpoint if it left it (the invariant compaction relies
    on). Returns the model: event -> (bucket, value)."""
    model: dict[str, tuple[int, int]] = {}
    for seq, ops in enumerate(history):
        now, touched = dict(model), set()
        for op, event, bucket_no, value in ops:
            eid = f"E{event}"
            touched.add(eid)
            if op == PUT:
                now[eid] = (bucket_no * HOUR, value)
            else:
                now.pop(eid, None)
        writer = ChunkWriter()
        for eid in sorted(touched):
            old, new = model.get(eid), now.get(eid)
            if new is not None:
                writer.add(chunks.VERSIONS, new[0], chunks.version_entry(eid, new[1]))
            if old is not None and (new is None or new[0] != old[0]):
                writer.delete(chunks.VERSIONS, old[0], eid)
        writer.write(conn, scope, seq)
        model = now
    return model


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=operations, head=st.integers(0, 4))
def test_compacting_a_changelog_changes_nothing_a_restart_reads(tmp_path, serving_url, history, head) -> None:
    """The buckets before `head` merged (those after it left as they are), however the
    checkpoints interleaved buckets: the fold reads the same state before and after, and that
    state is the model's."""
    engine, scope = make_engine(Settings(home=tmp_path, serving_url=serving_url)), f"compact-{next(_scopes)}"
    with engine.begin() as conn:
        model = write_history(conn, scope, history)
        before = chunks.read(conn, [chunks.VERSIONS], scope).get(chunks.VERSIONS, {})
        chunks.compact(conn, scope, before=head * HOUR, min_chunks=2)
        after = chunks.read(conn, [chunks.VERSIONS], scope).get(chunks.VERSIONS, {})
        left: dict[int, list[int]] = {}
        for bucket, entries in conn.execute(select(held_chunks.c.time_bucket, held_chunks.c.entries)
                                            .where(held_chunks.c.scope == scope).order_by(held_chunks.c.seq)):
            left.setdefault(bucket, []).append(entries)
    assert before == after == model
    assert all(len(sizes) == 1 or not chunks.due(sizes, 2) for bucket, sizes in left.items() if bucket < head * HOUR)


def test_a_bucket_at_the_head_keeps_its_chunks_and_a_cold_one_is_merged_once_due(tmp_path, serving_url) -> None:
    engine, scope = make_engine(Settings(home=tmp_path, serving_url=serving_url)), "compact-head"
    history = [[(PUT, i, 0, 1), (PUT, 100 + i, 1, 1)] for i in range(chunks.COMPACT_MIN_CHUNKS)]
    with engine.begin() as conn:
        write_history(conn, scope, history)
        assert chunks.compact(conn, scope, before=1 * HOUR) == chunks.COMPACT_MIN_CHUNKS - 1
        rows = conn.execute(select(held_chunks.c.time_bucket, held_chunks.c.seq, held_chunks.c.entries)
                            .where(held_chunks.c.scope == scope).order_by(held_chunks.c.time_bucket, held_chunks.c.seq)).all()
    assert [tuple(r) for r in rows if r.time_bucket == 0] == [(0, chunks.COMPACT_MIN_CHUNKS - 1, chunks.COMPACT_MIN_CHUNKS)]
    assert len([r for r in rows if r.time_bucket == HOUR]) == chunks.COMPACT_MIN_CHUNKS  # the head: left alone
    assert not chunks.due([1000] + [10] * 10) and chunks.due([1000] + [50] * 7) and chunks.due([1000] + [1] * 63)


held_events = st.dictionaries(
    st.text("abcé€", min_size=1, max_size=4),
    st.tuples(st.integers(1, 5), st.one_of(st.none(), st.integers(0, 3).map(lambda b: b * HOUR)),
              st.one_of(st.none(), st.tuples(st.sampled_from(["berlin", "köln", "東京"]), st.integers(0, 10 ** 6),
                                             st.one_of(st.none(), st.integers(-10 ** 6, 10 ** 6)),
                                             st.one_of(st.none(), st.text("uv", max_size=2))))),
    max_size=12)


@settings(max_examples=200, deadline=None)
@given(held=held_events, undated=st.one_of(st.none(), st.just(7 * HOUR)))
def test_a_snapshots_held_state_writes_the_same_chunks_from_arrow_as_from_python(held, undated) -> None:
    """chunks.arrow_state_writer (a snapshot's pieces) against state_writer (the held dicts)."""
    import pyarrow as pa

    from lklab.views import Contrib
    from lklab.views.measures import UTC_US

    window = lambda s: datetime(2026, 3, 1, tzinfo=timezone.utc) + timedelta(seconds=s)  # noqa: E731
    versions = {eid: v for eid, (v, _, _) in held.items()}
    buckets = {eid: (undated if b is None else b) for eid, (_, b, _) in held.items() if b is not None or undated is not None}
    contribs = {("rpm", eid): Contrib(c[0], window(c[1]), c[2], c[3]) for eid, (_, _, c) in held.items() if c is not None}
    state = pa.table({"event_id": list(held), "event_version": [v for v, _, _ in held.values()],
                      "time_bucket": pa.array([b for _, b, _ in held.values()], pa.int64())})
    rows = [(eid, *c) for eid, (_, _, c) in held.items() if c is not None]
    contrib = pa.table({"event_id": pa.array([r[0] for r in rows], pa.string()),
                        "entity": pa.array([r[1] for r in rows], pa.string()),
                        "window_start": pa.array([window(r[2]) for r in rows], UTC_US),
                        "amount": pa.array([r[3] for r in rows], pa.int64()),
                        "member": pa.array([r[4] for r in rows], pa.string())})

    def written(writer: ChunkWriter) -> dict:
        return {key: sorted(map(list, entries)) for key, entries in writer.entries.items()}

    assert written(chunks.arrow_state_writer(state, contrib, "rpm", undated)) == \
        written(chunks.state_writer(versions, buckets, contribs, ["rpm"]))
