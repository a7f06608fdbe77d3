"""Kappa: replay the log through a view's stream logic into a versioned output `<view>__v<N>`,
bounded by the end offsets recorded at start, so a replay is reproducible."""
from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import Engine, select

from lklab import kafka_io, views
from lklab.builds import git_sha
from lklab.config import Settings
from lklab.events import SCHEMA_VERSION
from lklab.kafka_io import Offsets
from lklab.serving import kappa_builds, session_query, speed_progress, speed_view_query, upsert
from streaming.sink import apply_records

BATCH = 2000


class ReplayError(RuntimeError):
    """A replay that cannot start; nothing was written."""


def output_name(view: str, version: int) -> str:
    return f"{view}__v{version}"


def replay_scope(view: str, version: int) -> str:
    """The replay's consumer group, and the scope of its dedup state and offsets."""
    return f"lklab-replay-{output_name(view, version)}"


KAPPA_VIEWS = (*views.VIEWS, "user_sessions")


def spec_for(view: str, version: int):
    """The view's stream logic for version N, writing into its versioned output. user_sessions
    has real logic versions (v1 with the midnight bug, v2 fixed); later N run the latest logic."""
    if view == "user_sessions":
        logic = views.USER_SESSIONS[min(version, max(views.USER_SESSIONS))]
        return dataclasses.replace(logic, name=output_name(view, version))
    return dataclasses.replace(views.view(view), name=output_name(view, version))


@dataclass
class ReplayProgress:
    done: int
    total: int
    events_per_s: float


@dataclass(frozen=True)
class ReplayResult:
    output: str
    events: int
    rows: int
    start_offsets: Offsets
    target_offsets: Offsets
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def parse_from(value: str) -> Offsets | None:
    """`earliest` → None; `0:120,1:98` → {0: 120, 1: 98}."""
    if value == "earliest":
        return None
    try:
        return {int(p): int(o) for p, o in (part.split(":") for part in value.split(","))}
    except ValueError:
        raise ReplayError(f"--from {value!r}: expected 'earliest' or partition:offset pairs like 0:120,1:98") from None


def _held(engine: Engine, scope: str, topic: str) -> Offsets:
    with engine.connect() as conn:
        return dict(conn.execute(select(speed_progress.c.partition, speed_progress.c.next_offset)
                                 .where(speed_progress.c.scope == scope, speed_progress.c.topic == topic)).all())


def replay(
    settings: Settings, engine: Engine, view: str, version: int, start: Offsets | None = None,
    max_rate: float | None = None, on_progress: Callable[[ReplayProgress], None] | None = None,
) -> ReplayResult:
    """Replay [start (default earliest), end offsets now) into `<view>__v<N>`. Re-running the same
    version resumes from its own committed offsets up to the same kind of target."""
    if version < 1:
        raise ReplayError(f"--version {version}: versions start at 1")
    if max_rate is not None and max_rate <= 0:
        raise ReplayError(f"--max-rate {max_rate}: must be > 0 events/s")
    if view not in KAPPA_VIEWS:
        raise ReplayError(f"unknown view {view!r}; one of: {', '.join(KAPPA_VIEWS)}")
    spec = spec_for(view, version)
    return asyncio.run(_replay(settings, engine, spec, view, version, start, max_rate, on_progress))


async def _replay(settings, engine, spec, view, version, start, max_rate, on_progress) -> ReplayResult:
    began, clock = datetime.now(timezone.utc), time.monotonic()
    first = await kafka_io.beginning_offsets(settings)
    target = await kafka_io.end_offsets(settings)
    start = {p: max(first[p], (start or {}).get(p, first[p])) for p in target}
    scope = replay_scope(view, version)
    resume = _held(engine, scope, settings.topic)
    position = {p: max(start[p], resume.get(p, 0)) for p in target}
    total = sum(max(target[p] - position[p], 0) for p in target)
    _record(engine, spec, view, version, scope, start, target, began, status="running")
    done = 0
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=scope, enable_auto_commit=False,
                                auto_offset_reset="earliest", max_poll_records=BATCH)
    await consumer.start()
    try:
        todo = {p for p in target if position[p] < target[p]}
        consumer.assign([TopicPartition(settings.topic, p) for p in todo])
        for p in todo:
            consumer.seek(TopicPartition(settings.topic, p), position[p])
        while todo:
            batches = await consumer.getmany(timeout_ms=1000, max_records=BATCH)
            records = []
            for tp, messages in batches.items():
                kept = [m for m in messages if m.offset < target[tp.partition]]
                records += [(m.partition, m.offset, m.value) for m in kept]
                if messages and messages[-1].offset + 1 >= target[tp.partition]:
                    todo.discard(tp.partition)
                    consumer.pause(tp)
            if records:
                await asyncio.to_thread(apply_records, engine, settings, settings.topic, records,
                                        specs=[spec], scope=scope, close_windows=False)
                done += len(records)
                await consumer.commit()  # visibility for Kafka tooling; the sink's offsets are the truth
            rate = done / max(time.monotonic() - clock, 1e-6)
            if on_progress:
                on_progress(ReplayProgress(done, total, rate))
            if max_rate and rate > max_rate:  # throttle: sleep until the average is back at the limit
                await asyncio.sleep(done / max_rate - (time.monotonic() - clock))
    finally:
        await consumer.stop()
    with engine.connect() as conn:
        rows = len(read_output(engine, view, spec.name, conn=conn))
        maxima = dict(conn.execute(select(speed_progress.c.partition, speed_progress.c.max_event_time)
                                   .where(speed_progress.c.scope == scope, speed_progress.c.topic == settings.topic)).all())
    seconds = time.monotonic() - clock
    _record(engine, spec, view, version, scope, start, target, began, status="complete", events=done, rows=rows,
            watermark=views.watermark({p: m for p, m in maxima.items() if m is not None}), seconds={"wall_s": round(seconds, 3), "events_per_s": round(done / seconds, 1) if seconds else None})
    return ReplayResult(spec.name, done, rows, start, target, seconds)


def _record(engine, spec, view, version, scope, start, target, began, status, events=0, rows=0, watermark=None,
            seconds=None) -> None:
    row = {
        "output": spec.name, "view": view, "version": version, "status": status, "git_sha": git_sha(),
        "logic_version": spec.logic_version, "schema_version": SCHEMA_VERSION, "consumer_group": scope,
        "start_offsets": {str(k): v for k, v in start.items()}, "target_offsets": {str(k): v for k, v in target.items()},
        "events": events, "rows": rows, "watermark": watermark, "started_at": began,
        "finished_at": datetime.now(timezone.utc) if status == "complete" else None, "seconds": seconds,
    }
    with engine.begin() as conn:
        upsert(conn, kappa_builds, [row])


def build_record(engine: Engine, output: str) -> dict | None:
    with engine.connect() as conn:
        row = conn.execute(select(kappa_builds).where(kappa_builds.c.output == output)).mappings().first()
    return dict(row) if row else None


def read_output(engine: Engine, view: str, target: str, entity=None, start=None, end=None, conn=None) -> list[tuple]:
    """Rows of one physical output of a view: (entity, window_start, value), or for user_sessions
    (user_id, day, (sessions, duration_ms))."""
    if view == "user_sessions":
        query = session_query(target, entity, start, end)
        shape = lambda r: (r[0], r[1], (r[2], r[3]))  # noqa: E731
    else:
        query = speed_view_query(dataclasses.replace(views.view(view), name=target), entity, start, end)
        shape = tuple
    if conn is not None:
        return [shape(r) for r in conn.execute(query)]
    with engine.connect() as c:
        return [shape(r) for r in c.execute(query)]
