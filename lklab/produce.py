"""Import events into the log through the one validation path. Bad lines go to the
dead-letter topic with a one-line reason; nothing stops the import and nothing is dropped."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from lklab import kafka_io
from lklab.config import Settings
from lklab.events import Event, EventError, decode, parse_event, validate_dict
from lklab.pii import PiiCipher


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
    async with kafka_io.producer(settings) as producer:
        for number, line in enumerate(lines, start=1):
            where = f"{source}:{number}"
            if not line.strip():
                continue
            try:
                event = validate_line(line, cipher)
            except EventError as exc:
                report.reject(where, exc.reason)
                await producer.send(settings.dlq_topic, key=source.encode(), value=kafka_io.dlq_payload(exc.reason, where, line.rstrip("\n")))
            else:
                report.accepted += 1
                await producer.send(settings.topic, key=event.ride_id.encode(), value=event.to_json().encode())
            if on_progress and number % 1000 == 0:
                on_progress(number)
        await producer.flush()
    return report


def produce_file(settings: Settings, path: Path, on_progress: Callable[[int], None] | None = None) -> ProduceReport:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected JSONL, one event per line)")
    with path.open(encoding="utf-8", errors="replace") as handle:
        return kafka_io.run(produce_lines(settings, handle, str(path), on_progress))


def produce_events(settings: Settings, events: Iterable[Event], source: str = "generator") -> ProduceReport:
    """Generated events take the same path as a user's file."""
    return kafka_io.run(produce_lines(settings, (e.to_json() for e in events), source))


def read_dead_letters(settings: Settings) -> list[dict]:
    end = kafka_io.run(kafka_io.end_offsets(settings, settings.dlq_topic))
    records = kafka_io.run(kafka_io.read_range(settings, {}, end, settings.dlq_topic))
    return [json.loads(r.value) for r in records]
