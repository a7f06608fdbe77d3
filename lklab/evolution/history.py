"""Can the current consumer code read the whole history? Every record of the log, in Kafka (what
retention still holds) and in bronze (everything ingested, kept past Kafka's retention), decoded
with the code that runs now (lklab.core.events.parse_event), as a replay or a backfill would.

A record it cannot read is reported with its place on the log. Records a consumer already
dead-lettered when they arrived (the dead-letter topic names them) were never part of any view,
so they are listed apart: only the others block (`HistoryReport.readable`).
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from lklab.core import schemas
from lklab.core.config import Settings
from lklab.core.events import EventError, parse_event
from lklab.log import kafka_io
from lklab.log.produce import read_dead_letters
from lklab.views import ViewSpec

_WHERE = re.compile(r"^(?P<topic>.+)\[(?P<partition>\d+)\]@(?P<offset>\d+)$")


class HistoryError(RuntimeError):
    """The history could not be read at all (Kafka down, bronze unreadable); one line."""


@dataclass(frozen=True)
class Unreadable:
    partition: int
    offset: int
    tiers: tuple[str, ...]  # where it was found: "kafka", "bronze"
    reason: str
    dead_lettered: bool  # a consumer dead-lettered it on arrival: never part of a view

    def __str__(self) -> str:
        known = " (dead-lettered on arrival)" if self.dead_lettered else ""
        return f"{'+'.join(self.tiers)} partition {self.partition} offset {self.offset}: {self.reason}{known}"


@dataclass
class HistoryReport:
    topic: str
    kafka_records: int = 0
    bronze_records: int = 0
    records: int = 0  # distinct (partition, offset) decoded
    by_version: Counter = field(default_factory=Counter)  # readable records per schema_version
    defaulted: Counter = field(default_factory=Counter)  # field -> records read with its default (an older version)
    first_event: datetime | None = None
    last_event: datetime | None = None
    unreadable: list[Unreadable] = field(default_factory=list)

    @property
    def blocking(self) -> list[Unreadable]:
        return [u for u in self.unreadable if not u.dead_lettered]

    @property
    def readable(self) -> bool:
        return not self.blocking

    def summary(self) -> str:
        span = (f", event times {self.first_event:%Y-%m-%d} to {self.last_event:%Y-%m-%d}" if self.first_event and self.last_event else "")
        versions = ", ".join(f"v{v}: {n:,}" for v, n in sorted(self.by_version.items())) or "none"
        known = len(self.unreadable) - len(self.blocking)
        return (f"{self.records:,} records ({self.kafka_records:,} in Kafka, {self.bronze_records:,} in bronze){span}; "
                f"readable by schema version: {versions}; {len(self.blocking)} unreadable"
                + (f", {known} more dead-lettered on arrival" if known else ""))


def log_records(settings: Settings, bronze: bool = True) -> tuple[dict[tuple[int, int], bytes | None], dict[tuple[int, int], list[str]], int, int]:
    """Every record of the topic once per (partition, offset): its value, the tiers holding it,
    and how many records Kafka and bronze each held."""
    seen: dict[tuple[int, int], list[str]] = {}
    values: dict[tuple[int, int], bytes | None] = {}
    in_kafka = in_bronze = 0
    for place, value in kafka_records(settings):
        in_kafka += 1
        seen.setdefault(place, []).append("kafka")
        values[place] = value
    if bronze:
        for place, value in bronze_records(settings):
            in_bronze += 1
            seen.setdefault(place, []).append("bronze")
            values.setdefault(place, value)
    return values, seen, in_kafka, in_bronze


def verify_history(settings: Settings, bronze: bool = True) -> HistoryReport:
    """Decode every record of `settings.topic` in Kafka and (with `bronze`) in the lake's bronze."""
    report = HistoryReport(settings.topic)
    values, seen, report.kafka_records, report.bronze_records = log_records(settings, bronze)
    dead = _dead_lettered(settings)
    for place in sorted(seen):
        _decode(report, place, values[place], tuple(seen[place]), place in dead)
    report.records = len(seen)
    return report


def set_before(settings: Settings, fields: list[str], offsets: dict[int, int]) -> int:
    """How many readable records below `offsets` (per partition) hold a value other than the
    default in one of `fields`: zero means a logic reading them computed exactly what one that
    ignores them did, on that prefix of the log."""
    defaults = {name: spec.get("default") for name, spec in schemas.schema()["properties"].items() if name in fields}
    values, _, _, _ = log_records(settings)
    count = 0
    for (partition, offset), value in values.items():
        if offset >= offsets.get(partition, 0) or value is None:
            continue
        try:
            event = parse_event(value)
        except EventError:
            continue
        count += any(getattr(event, name) != default for name, default in defaults.items())
    return count


def _decode(report: HistoryReport, place: tuple[int, int], value: bytes | None, tiers: tuple[str, ...], dead: bool) -> None:
    try:
        if value is None:
            raise EventError("the record has no value (null)")
        event = parse_event(value)
    except EventError as exc:
        report.unreadable.append(Unreadable(place[0], place[1], tiers, exc.reason, dead))
        return
    report.by_version[event.schema_version] += 1
    for name in schemas.defaults(event.schema_version):
        report.defaulted[name] += 1
    report.first_event = min(filter(None, (report.first_event, event.event_time)))
    report.last_event = max(filter(None, (report.last_event, event.event_time)))


def kafka_records(settings: Settings) -> Iterator[tuple[tuple[int, int], bytes | None]]:
    try:
        first, end = kafka_io.run(kafka_io.log_range(settings))
        records = kafka_io.run(kafka_io.read_range(settings, first, end))
    except Exception as exc:  # noqa: BLE001 - any client failure: one line
        raise HistoryError(f"Kafka at {settings.bootstrap}: {type(exc).__name__}: {exc}") from None
    for record in records:
        yield (record.partition, record.offset), record.value


def bronze_records(settings: Settings) -> Iterator[tuple[tuple[int, int], bytes]]:
    """Bronze's copy of the topic's records, read with deltalake (no Spark session needed)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    from lklab.lake.tables import BRONZE, path

    location = path(settings, BRONZE)
    try:
        table = DeltaTable(location).to_pyarrow_table(columns=["topic", "partition", "offset", "value"])
    except TableNotFoundError:
        return  # nothing ingested yet
    except Exception as exc:  # noqa: BLE001
        raise HistoryError(f"bronze at {location}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    for topic, partition, offset, value in zip(*(table.column(c).to_pylist() for c in ("topic", "partition", "offset", "value"))):
        if topic == settings.topic:
            yield (int(partition), int(offset)), (value.encode("utf-8", "surrogateescape") if value is not None else None)


def _dead_lettered(settings: Settings) -> set[tuple[int, int]]:
    """(partition, offset) of this topic's records that a consumer sent to the dead-letter topic."""
    try:
        letters = read_dead_letters(settings)
    except Exception:  # noqa: BLE001 - no DLQ topic yet: nothing was dead-lettered
        return set()
    places = set()
    for letter in letters:
        match = _WHERE.match(str(letter.get("source", "")))
        if match and match["topic"] == settings.topic:
            places.add((int(match["partition"]), int(match["offset"])))
    return places


def new_fields(spec: ViewSpec) -> list[str]:
    """The event fields this logic reads that some registered schema version lacks (so older
    records read them as their default): a cutover to it needs a readable history."""
    registered = schemas.versions().values()
    return [name for name in spec.measure.reads if any(name not in body["properties"] for body in registered)]


def gate_lines(report: HistoryReport, limit: int = 20) -> Iterable[str]:
    yield report.summary()
    for item in report.unreadable[:limit]:
        yield str(item)
    if len(report.unreadable) > limit:
        yield f"... and {len(report.unreadable) - limit} more"
