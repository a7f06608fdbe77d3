"""Import events into the log through the one validation path. Bad lines, and lines too large
for the topic, go to the dead-letter topic with a one-line reason; nothing is dropped, and only
a broker that stops acknowledging stops the import."""
from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from lklab.log import kafka_io
from lklab.core.config import Settings
from lklab.core.events import Event, EventError, decode, parse_event, short_reason, validate_dict
from lklab.core.pii import PiiCipher
from lklab.privacy import keys
from lklab.serving.store import make_engine

CONFIRM_EVERY = 5000  # records in flight before waiting for their acknowledgements
JSON_WHITESPACE = " \t\r\n"  # a line of only these holds no event; any other character is a line to judge


@dataclass
class ProduceReport:
    accepted: int = 0
    dead_lettered: int = 0
    reasons: list[str] = field(default_factory=list)  # "<source>:<line>: <reason>", first 20 kept
    pii_dropped: int = 0  # PII of forgotten users: dropped at the edge, the event kept without it

    def reject(self, where: str, reason: str) -> None:
        self.dead_lettered += 1
        if len(self.reasons) < 20:
            self.reasons.append(f"{where}: {reason}")


def validate_line(line: str, cipher: PiiCipher) -> Event:
    """Decode, check the schema, encrypt PII at the edge with its user's key, return the event as it goes on the log."""
    data = validate_dict(decode(line))
    return parse_event(cipher.seal(data))


async def produce_lines(
    settings: Settings,
    lines: Iterable[str],
    source: str,
    on_progress: Callable[[int], None] | None = None,
) -> ProduceReport:
    """Send each valid line keyed by ride_id (acks=all, idempotent); each bad line, and each line
    too large for the topic or refused by the broker for itself, to the DLQ."""
    async with _opened_import(settings, source) as run:
        for number, line in enumerate(lines, start=1):
            if line.strip(JSON_WHITESPACE):
                await run.send(f"{source}:{number}", line.rstrip("\r\n"))
            if len(run.pending) >= CONFIRM_EVERY:
                await run.confirm()
            if on_progress and number % 1000 == 0:
                on_progress(number)
        await run.confirm()
    return run.report


@asynccontextmanager
async def _opened_import(settings: Settings, source: str) -> AsyncIterator[_Import]:
    """One import's set-up: topics checked, record limits read, the key store and the idempotent producer open."""
    await kafka_io.ensure_topics(settings)
    limits = await kafka_io.record_limits(settings, (settings.topic, settings.dlq_topic))
    engine = make_engine(settings)
    try:
        async with kafka_io.producer(settings, max_batch_bytes=min(limits.values())) as producer:
            yield _Import(settings, producer, limits, source, keys.cipher(settings, engine))
    finally:
        engine.dispose()


def _not_utf8(line: str) -> str | None:
    """The reason a line read with surrogateescape was not UTF-8, or None if it was."""
    try:
        line.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"line is not UTF-8 text: byte 0x{_line_bytes(line[exc.start])[0]:02x} at character {exc.start + 1}"
    return None


def _line_bytes(line: str) -> bytes:
    """A line's bytes as read: surrogateescape gives back the bytes that were not UTF-8."""
    try:
        return line.encode("utf-8", errors="surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that was not read from bytes (a caller's own str)
        return line.encode("utf-8", errors="surrogatepass")


class ProduceError(RuntimeError):
    """Kafka did not acknowledge a record; the import stopped there. `report`: what was done before."""

    def __init__(self, message: str, report: ProduceReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class _Sent:
    where: str
    line: str
    ack: asyncio.Future
    dead_letter: bool  # this record is the line's dead letter


class _Import:
    """One import's sends: an event counts as accepted once Kafka acknowledges it."""

    def __init__(self, settings: Settings, producer, limits: dict[str, int], source: str, cipher: PiiCipher) -> None:
        self.settings, self.producer, self.limits = settings, producer, limits
        self.key = source.encode()
        self.cipher, self.report = cipher, ProduceReport()
        self.pending: list[_Sent] = []

    async def send(self, where: str, line: str) -> None:
        if (not_text := _not_utf8(line)) is not None:
            return await self.dead_letter(where, not_text, line)
        dropped = self.cipher.dropped
        try:
            event = validate_line(line, self.cipher)
        except EventError as exc:
            return await self.dead_letter(where, exc.reason, line)
        self.report.pii_dropped += self.cipher.dropped - dropped
        topic, key, value = self.settings.topic, event.ride_id.encode(), event.to_json().encode()
        size = kafka_io.record_size(key, value)
        if size > self.limits[topic]:
            return await self.dead_letter(where, f"record is {size:,} bytes; topic {topic} accepts at most "
                                                 f"{self.limits[topic]:,}", line)
        self.pending.append(_Sent(where, line, await self.producer.send(topic, key=key, value=value), False))

    async def dead_letter(self, where: str, reason: str, line: str) -> None:
        reason, line = self.cipher.seal_dead_letter(reason, line)  # the dead-letter topic is the log too: no plaintext PII
        topic, reason = self.settings.dlq_topic, short_reason(reason)
        try:
            value = kafka_io.dlq_payload(reason, where, _line_bytes(line), kafka_io.dead_letter_budget(self.limits[topic], self.key))
        except ValueError as exc:
            raise ProduceError(f"{where}: {reason}, and {exc} (topic {topic}); nothing is dropped, so the import stopped here",
                               self.report) from None
        self.report.reject(where, reason)
        self.pending.append(_Sent(where, line, await self.producer.send(topic, key=self.key, value=value), True))

    async def confirm(self) -> None:
        """Wait for the broker's acknowledgement of every record sent so far: a send only counts
        once it is acknowledged. A record the broker refuses for itself (too large, say) is
        dead-lettered; any other refusal stops the import with the line it happened at."""
        await self.producer.flush()
        sent, self.pending = self.pending, []
        results = await asyncio.gather(*(s.ack for s in sent), return_exceptions=True)
        for record, result in zip(sent, results):
            if not isinstance(result, BaseException):
                self.report.accepted += not record.dead_letter
            elif isinstance(result, kafka_io.RECORD_REFUSALS) and not record.dead_letter:
                await self.dead_letter(record.where, f"Kafka refused the record ({type(result).__name__}: {result})", record.line)
            else:
                raise ProduceError(f"{record.where}: Kafka at {self.settings.bootstrap} did not acknowledge the record "
                                   f"({type(result).__name__}: {result}); lines before it up to the last acknowledged "
                                   "batch are on the log", self.report)
        if self.pending:
            await self.confirm()


def produce_file(settings: Settings, path: Path, on_progress: Callable[[int], None] | None = None) -> ProduceReport:
    if path.is_dir():
        raise FileNotFoundError(f"{path}: no such file (it is a directory; expected a JSONL file, one event per line)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL, one event per line)")
    with path.open("rb") as handle:  # lines end at \n only (JSON Lines); bytes that are not UTF-8 are kept to dead-letter
        lines = (raw.decode("utf-8", errors="surrogateescape") for raw in handle)
        return kafka_io.run(produce_lines(settings, lines, str(path), on_progress))


def produce_events(settings: Settings, events: Iterable[Event], source: str = "generator",
                   local_offsets: bool = True, riders: Mapping[str, dict[str, str]] | None = None) -> ProduceReport:
    """Generated events take the same path as a user's file, event times in local offsets as a
    fleet's producers write them (normalised to UTC by the import), riders' PII sealed at the edge."""
    from lklab.log.generator import wire_json

    return kafka_io.run(produce_lines(settings, (wire_json(e, local_offsets, riders) for e in events), source))


class ProducerSession:
    """A long-lived import for a paced producer (the drills' live stream): topics checked, record
    limits read and the idempotent producer opened once, then batch after batch through the same
    validation path as `produce_events`. Its event loop runs in its own thread, so callers stay
    synchronous. Use it as a context manager."""

    def __init__(self, settings: Settings, source: str = "generator", local_offsets: bool = True,
                 riders: Mapping[str, dict[str, str]] | None = None) -> None:
        self.settings, self.source, self.local_offsets, self.riders = settings, source, local_offsets, riders
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lklab-producer", daemon=True)
        self._exit = AsyncExitStack()
        self._run: _Import | None = None
        self._sent = 0

    def __enter__(self) -> ProducerSession:
        self._thread.start()
        try:
            self._call(self._open())
        except BaseException:
            self._halt()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._call(self._exit.aclose())
        finally:
            self._halt()

    def send(self, events: Iterable[Event]) -> ProduceReport:
        """Send `events` and wait until Kafka acknowledged each; the report counts this batch only."""
        from lklab.log.generator import wire_json

        return self._call(self._send([wire_json(e, self.local_offsets, self.riders) for e in events]))

    async def _open(self) -> None:
        self._run = await self._exit.enter_async_context(_opened_import(self.settings, self.source))

    async def _send(self, lines: list[str]) -> ProduceReport:
        run = self._run
        run.report = ProduceReport()
        for line in lines:
            self._sent += 1
            await run.send(f"{self.source}:{self._sent}", line)
        await run.confirm()
        return run.report

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _halt(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


def read_dead_letters(settings: Settings) -> list[dict]:
    end = kafka_io.run(kafka_io.end_offsets(settings, settings.dlq_topic))
    records = kafka_io.run(kafka_io.read_range(settings, {}, end, settings.dlq_topic))
    return [json.loads(r.value) for r in records]
