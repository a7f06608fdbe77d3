"""`python -m lklab.drills.sink_consumer --sink NAME ...`: the sink drill's consumer (lklab.drills.sink).

One consumer loop, as most real consumers are written: read a batch, write it to the database in
one transaction, and commit the Kafka offsets after the write, every `--commit-every` records
(as Kafka's auto-commit does on its interval). That is at-least-once: a crash between the write
and the next offset commit makes Kafka deliver those records again. Three sinks of the view
revenue_per_minute (city, minute), each in a SQLite database of its own:

- naive: adds each event's signed amount to its (city, minute) total, so a re-delivery, a
  duplicate or a correction is added again;
- insert-or-ignore: stores events keyed by event_id with INSERT OR IGNORE and sums the stored
  ones: idempotent, but a correction (same event_id, higher version) is ignored too;
- lklab: the engine's versioned, offset-fenced upsert (lklab.engine.sink.apply_records).

After each committed transaction the loop prints the batch's record count on stdout, one line:
the harness reads it to decide when to `kill -9`. Unparsable records are skipped and counted
(naive, insert-or-ignore) or dead-lettered by the engine (lklab: counted, not sent to the DLQ)."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from sqlalchemy import Engine, text

from lklab import views
from lklab.core.config import Settings
from lklab.core.events import Event, EventError, parse_event
from lklab.engine.fold import InputRecord
from lklab.engine.outputs import read_output
from lklab.engine.sink import apply_records, load_versions
from lklab.log.kafka_io import Offsets
from lklab.serving import progress
from lklab.serving.store import consistent_read, make_engine, store_engine

NAIVE, IGNORE, LKLAB = "naive", "insert-or-ignore", "lklab"
SINKS = (NAIVE, IGNORE, LKLAB)
VIEW = views.view("revenue_per_minute")
Totals = dict[tuple[str, datetime], int]  # (city, minute) -> cents


@dataclass
class SinkState:
    """What a sink holds, read in one transaction."""

    totals: Totals
    next_offsets: Offsets  # per partition: every offset below it has been applied at least once
    handed: int  # records handed to the sink in committed transactions, re-deliveries included
    reprocessed: int  # records handed to it more than once
    held_versions: dict[str, int] | None  # event_id -> the version it holds (None: it holds none)
    counters: dict[str, int] = field(default_factory=dict)


def _parsed(records: Sequence[InputRecord]) -> list[tuple[int, int, Event | None]]:
    """(partition, offset, event or None when the record does not parse)."""
    out: list[tuple[int, int, Event | None]] = []
    for partition, offset, raw in records:
        try:
            out.append((partition, offset, parse_event(raw or b"")))
        except EventError:
            out.append((partition, offset, None))
    return out


def _contribution(event: Event | None) -> tuple[str, str, int] | None:
    """(city, minute as ISO text, signed cents) the event adds to revenue_per_minute (lklab.views)."""
    found = None if event is None else VIEW.contribution(event)
    return None if found is None else (found[0][0], found[0][1].isoformat(), int(found[1]))


class _HandRolledSink:
    """The naive and insert-or-ignore sinks: each batch, and which records it held (`consumed`,
    one row per record handed), written in one transaction."""

    name = ""
    schema: tuple[str, ...] = ()
    totals_sql = ""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS consumed (kafka_partition INTEGER NOT NULL, "
                                 "kafka_offset INTEGER NOT NULL, payment INTEGER NOT NULL, parsed INTEGER NOT NULL)")
            for statement in self.schema:
                conn.exec_driver_sql(statement)

    def apply(self, records: Sequence[InputRecord]) -> None:
        parsed = _parsed(records)
        with self.engine.begin() as conn:
            self._write(conn, parsed)
            conn.execute(text("INSERT INTO consumed VALUES (:p, :o, :payment, :parsed)"),
                         [{"p": p, "o": o, "payment": int(_contribution(e) is not None), "parsed": int(e is not None)}
                          for p, o, e in parsed])

    def _write(self, conn, parsed: list[tuple[int, int, Event | None]]) -> None:
        raise NotImplementedError

    def _held_versions(self, conn) -> dict[str, int] | None:
        return None

    def read(self) -> SinkState:
        with consistent_read(self.engine) as conn:
            totals = {(city, datetime.fromisoformat(minute)): int(cents)
                      for city, minute, cents in conn.exec_driver_sql(self.totals_sql)}
            ends = dict(conn.exec_driver_sql("SELECT kafka_partition, MAX(kafka_offset) + 1 FROM consumed GROUP BY kafka_partition").all())
            distinct = "SELECT COUNT(*) FROM (SELECT DISTINCT kafka_partition, kafka_offset FROM consumed {})"
            handed, records, payments, unparsable = conn.exec_driver_sql(
                f"SELECT COUNT(*), ({distinct.format('')}), COALESCE(SUM(payment), 0), "
                f"({distinct.format('WHERE parsed = 0')}) FROM consumed").one()
            # payments_added: payment records handed in, re-deliveries included (the naive sink adds each);
            # unparsable_skipped: distinct records that did not parse
            return SinkState(totals, ends, handed, handed - records, self._held_versions(conn),
                             {"payments_added": payments, "unparsable_skipped": unparsable})


class NaiveSink(_HandRolledSink):
    """Insert the (city, minute) total, or add to it: every record handed in is added."""

    name = NAIVE
    schema = ("CREATE TABLE IF NOT EXISTS revenue (city TEXT NOT NULL, minute TEXT NOT NULL, cents INTEGER NOT NULL, "
              "PRIMARY KEY (city, minute))",)
    totals_sql = "SELECT city, minute, cents FROM revenue"

    def _write(self, conn, parsed: list[tuple[int, int, Event | None]]) -> None:
        rows = [{"city": c, "minute": m, "cents": v} for c, m, v in filter(None, (_contribution(e) for _, _, e in parsed))]
        if rows:
            conn.execute(text("INSERT INTO revenue VALUES (:city, :minute, :cents) "
                              "ON CONFLICT (city, minute) DO UPDATE SET cents = cents + excluded.cents"), rows)


class InsertOrIgnoreSink(_HandRolledSink):
    """Store each event once by event_id (INSERT OR IGNORE); the view is the sum over stored events."""

    name = IGNORE
    schema = ("CREATE TABLE IF NOT EXISTS events (event_id TEXT PRIMARY KEY, event_version INTEGER NOT NULL, "
              "city TEXT, minute TEXT, cents INTEGER)",)
    totals_sql = "SELECT city, minute, SUM(cents) FROM events WHERE cents IS NOT NULL GROUP BY city, minute"

    def _write(self, conn, parsed: list[tuple[int, int, Event | None]]) -> None:
        rows = []
        for _, _, event in parsed:
            if event is not None:
                city, minute, cents = _contribution(event) or (None, None, None)
                rows.append({"id": event.event_id, "v": event.event_version, "city": city, "minute": minute, "cents": cents})
        if rows:
            conn.execute(text("INSERT OR IGNORE INTO events VALUES (:id, :v, :city, :minute, :cents)"), rows)

    def _held_versions(self, conn) -> dict[str, int] | None:
        return dict(conn.exec_driver_sql("SELECT event_id, event_version FROM events").all())


class LklabSink:
    """The engine's sink (lklab.engine.sink.apply_records): versioned upsert, offsets fenced in the
    same transaction, in a scope of the drill's own; no window ever closes (as in a Kappa job)."""

    name = LKLAB

    def __init__(self, engine: Engine, settings: Settings, scope: str) -> None:
        self.engine, self.settings, self.scope = engine, settings, scope

    def apply(self, records: Sequence[InputRecord]) -> None:
        apply_records(self.engine, self.settings, self.settings.topic, records, specs=[VIEW], scope=self.scope,
                      close_windows=False)

    def read(self) -> SinkState:
        with consistent_read(self.engine) as conn:
            totals = {(city, minute): int(cents) for city, minute, cents in read_output(None, VIEW.name, VIEW.name, conn=conn)}
            ends = progress.next_offsets(conn, self.scope, self.settings.topic)
            held = load_versions(conn, self.scope)
        counters = progress.read_counters(self.engine, self.scope)  # exact once the consumer is dead (the harness reads then)
        skipped = counters[progress.REDELIVERED_SKIPPED]
        handed = counters[progress.PROCESSED] + counters[progress.DEAD_LETTERED] + skipped
        return SinkState(totals, ends, handed, skipped, held, counters)


Sink = NaiveSink | InsertOrIgnoreSink | LklabSink


def open_sink(name: str, settings: Settings, scope: str) -> Sink:
    """The sink `name` on the database at settings.serving (its tables created if missing)."""
    if name == LKLAB:
        return LklabSink(make_engine(settings), settings, scope)
    sink_class = {NAIVE: NaiveSink, IGNORE: InsertOrIgnoreSink}[name]
    return sink_class(store_engine(settings))


async def consume(settings: Settings, sink: Sink, group: str, start: Offsets, end: Offsets, batch: int,
                  commit_every: int) -> None:
    """Consume [start, end) of settings.topic (from the group's committed offsets where it has
    some) into `sink`, committing offsets after the write every `commit_every` records and at the end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap, group_id=group, enable_auto_commit=False,
                                auto_offset_reset="none", max_poll_records=batch)
    await consumer.start()
    try:
        assigned = [TopicPartition(settings.topic, p) for p, e in sorted(end.items()) if e > start.get(p, 0)]
        consumer.assign(assigned)
        position: Offsets = {}
        for tp in assigned:
            committed = await consumer.committed(tp)
            position[tp.partition] = start.get(tp.partition, 0) if committed is None else committed
            consumer.seek(tp, position[tp.partition])
        uncommitted = 0
        while any(position[p] < end[p] for p in position):
            batches = await consumer.getmany(timeout_ms=1000, max_records=batch)
            records = [(m.partition, m.offset, m.value) for tp, ms in batches.items() for m in ms if m.offset < end[tp.partition]]
            if records:
                sink.apply(records)  # one transaction
                print(len(records), flush=True)
                position.update({p: o + 1 for p, o, _ in records})
                uncommitted += len(records)
            if uncommitted >= commit_every:
                await _commit(consumer, settings.topic, position)
                uncommitted = 0
        await _commit(consumer, settings.topic, position)
    finally:
        await consumer.stop()


async def _commit(consumer: AIOKafkaConsumer, topic: str, position: Offsets) -> None:
    await consumer.commit({TopicPartition(topic, p): o for p, o in position.items()})


def _offsets(text_value: str) -> Offsets:
    return {int(p): int(o) for p, o in json.loads(text_value).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lklab.drills.sink_consumer")
    parser.add_argument("--sink", choices=SINKS, required=True)
    parser.add_argument("--group", required=True, help="the Kafka consumer group (and the lklab sink's scope)")
    parser.add_argument("--start", type=_offsets, required=True, help='{"partition": offset} to start at without a commit')
    parser.add_argument("--end", type=_offsets, required=True, help='{"partition": offset} to stop before')
    parser.add_argument("--batch", type=int, default=100, help="records per transaction, at most")
    parser.add_argument("--commit-every", type=int, default=1000, help="records between Kafka offset commits")
    args = parser.parse_args(argv)
    settings = Settings()
    sink = open_sink(args.sink, settings, args.group)
    try:
        asyncio.run(consume(settings, sink, args.group, args.start, args.end, args.batch, args.commit_every))
    finally:
        sink.engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
