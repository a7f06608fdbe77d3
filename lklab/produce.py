"""Import events into the log through the one validation path. Bad lines go to the
dead-letter topic with a one-line reason; nothing stops the import and nothing is dropped."""
from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lklab import kafka_io
from lklab.config import Settings
from lklab.events import Event, EventError, decode, parse_event, validate_dict
from lklab.pii import PiiCipher

CONFIRM_EVERY = 5000  # records in flight before waiting for their acknowledgements


@dataclass
class ProduceReport:
    accepted: int = 0
    dead_lettered: int = 0
    reasons: list[str] = field(default_factory=list)  # "<source>:<line>: <reason>", first 20 kept

    def reject(self, where: str, reason: str) -> None:
        self.dead_lettered += 1
        if len(self.reasons) < 20:
            self.reasons.append(f"{where}: {reason}")


def validate_line(line: str, cipher: PiiCipher) -> Event:
    """Decode, check schema v1, encrypt PII at the edge, return the event as it goes on the log."""
    data = validate_dict(decode(line))
    return parse_event(cipher.seal(data))


async def produce_lines(
    settings: Settings,
    lines: Iterable[str],
    source: str,
    on_progress: Callable[[int], None] | None = None,
) -> ProduceReport:
    """Send each valid line keyed by ride_id (acks=all, idempotent); each bad line to the DLQ."""
    await kafka_io.ensure_topics(settings)
    cipher, report = PiiCipher(settings), ProduceReport()
    pending: list[tuple[str, asyncio.Future]] = []
    async with kafka_io.producer(settings) as producer:
        for number, line in enumerate(lines, start=1):
            where = f"{source}:{number}"
            if not line.strip():
                continue
            try:
                event = validate_line(line, cipher)
            except EventError as exc:
                report.reject(where, exc.reason)
                sent = await producer.send(settings.dlq_topic, key=source.encode(),
                                           value=kafka_io.dlq_payload(exc.reason, where, line.rstrip("\n")))
            else:
                report.accepted += 1
                sent = await producer.send(settings.topic, key=event.ride_id.encode(), value=event.to_json().encode())
            pending.append((where, sent))
            if len(pending) >= CONFIRM_EVERY:
                await _confirm(pending, settings)
            if on_progress and number % 1000 == 0:
                on_progress(number)
        await producer.flush()
        await _confirm(pending, settings)
    return report


class ProduceError(RuntimeError):
    """Kafka did not acknowledge a record; the import stopped there."""


async def _confirm(pending: list[tuple[str, asyncio.Future]], settings: Settings) -> None:
    """Wait for the broker's acknowledgement of every record sent so far: a send only counts once
    it is acknowledged, so a refusal stops the import with the line it happened at."""
    results = await asyncio.gather(*(future for _, future in pending), return_exceptions=True)
    for (where, _), result in zip(pending, results):
        if isinstance(result, BaseException):
            raise ProduceError(f"{where}: Kafka at {settings.bootstrap} did not acknowledge the record "
                               f"({type(result).__name__}: {result}); lines before it up to the last acknowledged batch are on the log")
    pending.clear()


def produce_file(settings: Settings, path: Path, on_progress: Callable[[int], None] | None = None) -> ProduceReport:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL, one event per line)")
    with path.open(encoding="utf-8", errors="replace") as handle:
        return kafka_io.run(produce_lines(settings, handle, str(path), on_progress))


def produce_events(settings: Settings, events: Iterable[Event], source: str = "generator",
                   local_offsets: bool = True) -> ProduceReport:
    """Generated events take the same path as a user's file, event times in local offsets as a
    fleet's producers write them (normalised to UTC by the import)."""
    from lklab.generator import wire_json

    return kafka_io.run(produce_lines(settings, (wire_json(e, local_offsets) for e in events), source))


def read_dead_letters(settings: Settings) -> list[dict]:
    end = kafka_io.run(kafka_io.end_offsets(settings, settings.dlq_topic))
    records = kafka_io.run(kafka_io.read_range(settings, {}, end, settings.dlq_topic))
    return [json.loads(r.value) for r in records]
