"""`bad-input`: every bad event is dead-lettered with a reason; nothing is lost; nothing stops the pipeline.

The Faust speed worker and a live Kappa job (revenue_per_minute v1) run first. Then bad input
arrives by the two ways it can reach lklab:

1. `lklab produce --file F` (run as a user runs it, in its own process): a JSON Lines file whose
   good lines (a generated workload's deliveries, valid events with arbitrary Unicode cities,
   and events written with a duplicated key whose last value is the valid one) are mixed with
   bad lines drawn by hypothesis strategies, one strategy per class: random bytes, bytes that
   are not UTF-8 inside an event, truncated JSON, wrong types, missing fields, values too long
   for their field, deep nesting, invalid Unicode, numbers out of range, timestamps without
   (or with an impossible) offset, NaN/Infinity, duplicated keys whose last value is bad, JSON
   that is not an object, lines of non-JSON whitespace; plus lines of ~2 MB (larger than the
   topic takes) and a fixed set of lines, each of which once crashed or fooled lklab. Blank
   lines (JSON whitespace only) are mixed in as well: lklab skips them, neither accepted nor
   dead-lettered.
2. A foreign producer (a plain aiokafka producer, not lklab's) writing raw records straight to
   the event topic: values drawn from the same bad classes, empty and null values, null keys,
   values near the 1 MB record limit (one that JSON-escapes to several MB), and good records
   (the workload's last deliveries, some with a null key or a large unknown field).

Ground truth is what was injected: the line numbers and bytes of the bad lines, and the
(partition, offset) the broker acknowledged for each foreign record. Definitions:
- dead-lettered by the import / by each consumer: DLQ records read from the earliest offset,
  told apart by `source` (`FILE:LINE` from the import) and `consumer` (the speed worker's group,
  the Kappa job's scope); each must name exactly one injected bad line or record, once.
- good lines on the log: records of the event topic that are not the foreign producer's,
  matched by (event_id, event_version) against the good lines, as a multiset.
- raw bytes differ: a dead letter's `raw` (or `raw_base64`, for bytes that are not UTF-8) is
  not the injected bytes (or, when cut to fit, not their first `raw_kept_bytes`).
- pipeline stopped: either consumer process is not running at the end, or runs under another
  pid than it started with (a crash and restart); and the views of the good events (the speed
  layer's three, the Kappa job's output) must equal the oracle once both have caught up.
- one line per error: `lklab produce` exits 0 and every line it writes to stderr is one dead
  letter (`dead-lettered FILE:LINE: reason`) or the `... and N more` line.
"""
from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from hypothesis import HealthCheck, Phase, given, seed, settings as hypothesis_settings, strategies as st

from lklab import views
from lklab.chaos.registry import ChaosContext, ChaosError, Check, register
from lklab.chaos.result import CheckResult, Figure, equal, holds, zero
from lklab.core import oracle, processes
from lklab.core.config import Settings
from lklab.core.events import PAYMENT_TYPES, Event
from lklab.drills.lab import drill_settings
from lklab.engine.outputs import read_output
from lklab.engine.sink import read_late_windows, read_view
from lklab.kappa import jobs
from lklab.kappa.freshness import running_pid
from lklab.kappa.names import output_name, replay_scope
from lklab.lambda_arch import speed
from lklab.log import kafka_io
from lklab.log.generator import GeneratorConfig, generate, wire_json
from lklab.log.produce import read_dead_letters
from lklab.serving.store import make_engine

ROOT = Path(__file__).resolve().parents[2]
VIEW, VERSION = "revenue_per_minute", 1
HUGE_LINE_BYTES = 2 * 1024 * 1024  # a line twice the topic's 1 MiB record limit
NEAR_LIMIT_BYTES = 900_000  # a foreign record just under the producer's and the broker's 1 MB limits
DEEP = 10_000  # nesting levels of the fixed deep line: ten times Python's recursion limit
JSON_WHITESPACE = b" \t\r\n"
INT64 = 2**63
RAW = "\x00raw\x00"  # stands for a literal (NaN, 1e400, 5,000 digits) spliced into the JSON text
LITERAL = "\x00literal\x00"  # the key holding that literal in a record to render


@dataclass(frozen=True)
class Plan:
    bad_lines: int  # drawn by hypothesis, spread over the classes (the fixed lines come on top)
    foreign_bad: int  # likewise, foreign records
    huge_lines: int  # lines of HUGE_LINE_BYTES
    minutes: int  # event-time minutes of the good workload
    rides_per_minute: int
    catch_up_s: float


PLANS = {
    "small": Plan(bad_lines=100, foreign_bad=20, huge_lines=2, minutes=2, rides_per_minute=15, catch_up_s=120.0),
    "full": Plan(bad_lines=2000, foreign_bad=200, huge_lines=10, minutes=10, rides_per_minute=40, catch_up_s=300.0),
}


@dataclass
class Item:
    """One injected line or foreign record, and what lklab must do with it."""

    kind: str
    raw: bytes | None  # None: a foreign record with a null value
    bad: bool
    event: Event | None = None  # a good item's event, as the oracle counts it
    key: bytes | None = None  # foreign records only
    blank: bool = False  # JSON whitespace only: skipped by the import


# ---- drawing the input ----------------------------------------------------------------------------

def draw(strategy: st.SearchStrategy, count: int, at_seed: int) -> list:
    """`count` values of `strategy`, reproducible from `at_seed`: hypothesis drives the draws
    (its generation phase only, no shrinking or database), outside any test runner."""
    drawn: list = []
    while len(drawn) < count:
        @seed(at_seed + len(drawn))
        @hypothesis_settings(max_examples=count - len(drawn), database=None, phases=[Phase.generate], deadline=None,
                             suppress_health_check=list(HealthCheck))
        @given(st.data())
        def collect(data: st.DataObject) -> None:
            drawn.append(data.draw(strategy))

        before = len(drawn)
        collect()
        if len(drawn) == before:
            raise ChaosError(f"hypothesis drew nothing from {strategy!r}")
    return drawn[:count]


def render(record: dict, ascii_only: bool = True) -> bytes:
    """The JSON text of `record` (\\u escapes, or UTF-8), its RAW placeholder replaced by the literal."""
    text = json.dumps({k: v for k, v in record.items() if k != LITERAL}, ensure_ascii=ascii_only)
    if LITERAL in record:
        text = text.replace(json.dumps(RAW), record[LITERAL], 1)
    return text.encode("utf-8", errors="surrogatepass")


def spliced(base: dict, name: str, literal: str) -> dict:
    """`base` with field `name` set to a raw JSON literal (not expressible as a Python value)."""
    return {**base, name: RAW, LITERAL: literal}


NOT_STRING = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                       st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
NOT_INTEGER = st.one_of(st.text(max_size=10), st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not f.is_integer()),
                        st.booleans(), st.none(), st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
TEXT_FIELDS = ("event_id", "ride_id", "user_id", "city", "event_time")
ID_FIELDS = ("event_id", "ride_id", "user_id", "driver_id")
BAD_UTF8 = (b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\x80", b"\xf5\x80\x80\x80", b"\xe2\x82", b"\xf0\x9f\x9a")
NOT_JSON_WHITESPACE = ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u2028", "\u3000", "\ufeff")


def wrong_type(base: dict) -> st.SearchStrategy[dict]:
    payment = base["event_type"] in {t.value for t in PAYMENT_TYPES}
    by_field = {**{f: st.one_of(NOT_STRING, st.none()) for f in TEXT_FIELDS}, "driver_id": NOT_STRING,
                "event_version": NOT_INTEGER, "schema_version": NOT_INTEGER,
                "event_type": st.one_of(NOT_STRING, st.none(), st.text(max_size=20).filter(lambda s: s not in _EVENT_TYPES)),
                "amount_cents": NOT_INTEGER if payment else st.integers(0, 10**6),
                "pii": st.one_of(st.integers(), st.booleans(), st.lists(st.text(max_size=3), max_size=2))}
    return st.sampled_from(sorted(by_field)).flatmap(lambda f: by_field[f].map(lambda v: {**base, f: v}))


_EVENT_TYPES = {"app_opened", "ride_requested", "ride_started", "ride_completed", "payment_captured", "payment_refunded"}


def out_of_range(base: dict) -> st.SearchStrategy[dict]:
    payment = base["event_type"] in {t.value for t in PAYMENT_TYPES}
    counts = st.one_of(st.integers(max_value=0), st.integers(min_value=INT64, max_value=2**80))
    choices = [st.tuples(st.sampled_from(["event_version", "schema_version"]), counts).map(lambda fv: {**base, fv[0]: fv[1]}),
               st.tuples(st.sampled_from(["event_version", "schema_version"] + ["amount_cents"] * payment),
                         st.sampled_from(["1e400", "-1e400", "9" * 5000, "-" + "9" * 5000]))
               .map(lambda fl: spliced(base, *fl))]
    if payment:
        choices.append(st.one_of(st.integers(max_value=-1), st.integers(min_value=INT64, max_value=2**80))
                       .map(lambda v: {**base, "amount_cents": v}))
    return st.one_of(*choices)


def bad_time(base: dict) -> st.SearchStrategy[dict]:
    moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1))
    forms = [lambda t: t.isoformat(timespec="seconds"), lambda t: t.isoformat(sep=" ", timespec="milliseconds"),
             lambda t: t.strftime("%Y-%m-%dT%H:%M"), lambda t: t.date().isoformat(),
             lambda t: t.isoformat(timespec="seconds") + "+24:00", lambda t: t.isoformat(timespec="seconds") + "+0200",
             lambda t: t.strftime("%Y-%m-%d") + "T25:00:00Z", lambda t: t.strftime("%Y-02-30T%H:%M:%SZ")]
    return st.tuples(moments, st.sampled_from(forms)).map(lambda mf: {**base, "event_time": mf[1](mf[0])})


def too_long(base: dict) -> st.SearchStrategy[dict]:
    def longer(f: str) -> st.SearchStrategy[dict]:
        limit = 64 if f == "city" else 128
        return st.tuples(st.characters(exclude_categories=["Cs"]), st.integers(limit + 1, 20_000)).map(
            lambda cn: {**base, f: cn[0] * cn[1]})
    return st.sampled_from([*ID_FIELDS, "city"]).flatmap(longer)


def deep(base: dict) -> st.SearchStrategy[bytes]:
    """Nesting far beyond any parser's recursion: the whole line, or an unknown field of a valid event."""
    def nest(shape: str, depth: int, whole: bool) -> bytes:
        inner = "[" * depth + "]" * depth if shape == "array" else '{"a":' * depth + "1" + "}" * depth
        return inner.encode() if whole else render(spliced(base, "extra", inner))
    return st.tuples(st.sampled_from(["array", "object"]), st.integers(2_000, DEEP), st.booleans()).map(lambda sdw: nest(*sdw))


def bad_unicode(base: dict) -> st.SearchStrategy[dict]:
    lone = st.tuples(st.sampled_from(["city", "user_id", "event_id", "ride_id"]), st.characters(categories=["Cs"]),
                     st.text(max_size=5)).map(lambda fct: {**base, fct[0]: fct[2] + fct[1]})
    long_city = st.text(st.characters(exclude_categories=["Cs"]), min_size=65, max_size=120).map(lambda c: {**base, "city": c})
    lookalike = st.sampled_from(["pаyment_captured", "ride_ѕtarted", "app_opened\u200b", "ＡＰＰ_opened"]).map(
        lambda t: {**base, "event_type": t})
    return st.one_of(lone, long_city, lookalike)


def missing(base: dict) -> st.SearchStrategy[dict]:
    required = ["event_id", "event_version", "schema_version", "event_type", "event_time", "ride_id", "user_id", "driver_id", "city"]
    if base.get("amount_cents") is not None:
        required.append("amount_cents")
    return st.sets(st.sampled_from(required), min_size=1, max_size=3).map(lambda gone: {k: v for k, v in base.items() if k not in gone})


def bad_classes(bases: list[dict]) -> dict[str, st.SearchStrategy[bytes]]:
    """Each class of bad line as a strategy of its bytes (one line, no \\n)."""
    base = st.sampled_from(bases)

    def of(make: Callable[[dict], st.SearchStrategy]) -> st.SearchStrategy[bytes]:
        return base.flatmap(make).map(lambda r: r if isinstance(r, bytes) else render(r))

    def not_blank(b: bytes) -> bytes:
        b = b.replace(b"\n", b"")
        return b if b.strip(JSON_WHITESPACE) else b"\xff" + b

    return {
        "random bytes": st.binary(min_size=1, max_size=300).map(not_blank),
        "not UTF-8 inside an event": st.tuples(base, st.sampled_from(BAD_UTF8)).map(
            lambda bb: render({**bb[0], "city": "@@"}).replace(b"@@", bb[1])),
        "truncated JSON": st.tuples(base, st.floats(0.0, 0.999)).map(lambda bf: _cut(render(bf[0]), bf[1])),
        "wrong type": of(wrong_type),
        "missing field": of(missing),
        "too long for its field": of(too_long),
        "deep nesting": of(deep),
        "invalid Unicode": of(bad_unicode),
        "number out of range": of(out_of_range),
        "timestamp without a valid offset": of(bad_time),
        "NaN or Infinity": st.tuples(base, st.sampled_from(["amount_cents", "event_version", "schema_version", "extra"]),
                                     st.sampled_from(["NaN", "Infinity", "-Infinity"])).map(lambda b: render(spliced(*b))),
        "duplicate key, last value bad": st.tuples(base, st.sampled_from(["city", "event_version", "event_type"]), NOT_STRING.filter(
            _not_a_count)).map(
            lambda bfv: render(bfv[0])[:-1] + f', "{bfv[1]}": {json.dumps(bfv[2])}}}'.encode()),
        "not a JSON object": st.one_of(st.lists(st.integers(), max_size=4), st.text(max_size=20), st.integers(), st.none(),
                                       st.booleans()).map(lambda v: json.dumps(v).encode()),
        "non-JSON whitespace only": st.text(st.sampled_from([*NOT_JSON_WHITESPACE, " ", "\t"]), min_size=1, max_size=6)
            .filter(lambda s: s.strip(" \t")).map(lambda s: s.encode()),
    }


def base_of(event: Event) -> dict:
    """An event's wire fields to break, without `"pii": null`: only input that means to carry PII
    names it (a dead letter of such input may hold it with the PII sealed)."""
    return {k: v for k, v in json.loads(wire_json(event)).items() if not (k == "pii" and v is None)}


def _not_a_count(value: object) -> bool:
    """Bad for every field it is drawn for: a JSON Schema integer may be written 3 or 3.0."""
    return isinstance(value, bool) or not (isinstance(value, (int, float)) and float(value).is_integer())


def _cut(line: bytes, fraction: float) -> bytes:
    return line[:max(1, min(len(line) - 1, int(len(line) * fraction)))]


def fixed_bad_lines(base: dict) -> list[Item]:
    """Lines that each once crashed or fooled lklab (kept so they never do again)."""
    payment = {**base, "event_type": "payment_captured", "amount_cents": 100, "driver_id": "d1"}
    lines = {
        "markup in a reason (crashed the CLI's output)": render({**base, "event_type": "[/bold] x"}),
        "deep nesting (RecursionError in every parser)": b"[" * DEEP + b"]" * DEEP,
        "amount_cents 2**70 (accepted; SQLite cannot hold it)": render({**payment, "amount_cents": 2**70}),
        "lone surrogate (accepted; not storable as UTF-8)": render({**base, "city": "\ud800"}),
        "bytes not UTF-8 (replaced on import; crashed the consumers)": render({**base, "city": "@@"}).replace(b"@@", b"b\xffx"),
        "NaN in an unknown field (accepted: not JSON)": render(spliced(base, "extra", "NaN")),
        "5,000-digit amount (ValueError in the parser)": render(spliced(payment, "amount_cents", "9" * 5000)),
        "form feed only (skipped silently)": b"\x0c",
    }
    return [Item(kind, raw, bad=True) for kind, raw in lines.items()]


def huge_lines(base: dict, count: int) -> list[Item]:
    """~2 MB lines: valid events made too large for the topic by their PII, and a city far too long."""
    pii = {**base, "pii": {"name": "n" * HUGE_LINE_BYTES, "phone": "1"}}
    city = {**base, "city": "c" * HUGE_LINE_BYTES}
    return [Item("larger than the topic takes", render(pii if i % 2 == 0 else city), bad=True) for i in range(count)]


def good_extras(ctx_seed: int, sources: list[Event]) -> list[Item]:
    """Valid events with arbitrary Unicode cities (UTF-8 or \\u escapes), cloned from `sources`
    (same type, time and amount, so each arrives as on time as its source): must be accepted."""
    cities = draw(st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=64), len(sources), ctx_seed)
    escapes = draw(st.booleans(), len(sources), ctx_seed + 1)
    items = []
    for n, (city, source, ascii_only) in enumerate(zip(cities, sources, escapes)):
        event = source.replace(event_id=f"unicode-{n}-{source.event_type.value}", ride_id=f"unicode-{n}", event_version=1, city=city)
        items.append(Item("valid, Unicode city", render(json.loads(wire_json(event)), ascii_only), bad=False, event=event))
    return items


def duplicate_key_good(events: list[Event], ctx_seed: int) -> list[Item]:
    """Events written with one key twice, the last value valid: RFC 8259 leaves duplicates to the
    parser; every lklab parser (json, msgspec) and Spark's take the last, so these are accepted."""
    junk = draw(st.tuples(st.sampled_from(["city", "event_version", "amount_cents", "event_type"]), NOT_STRING),
                len(events), ctx_seed)
    return [Item("duplicate key, last value valid", (b'{"%s": %s, ' % (f.encode(), json.dumps(v).encode()))
                 + wire_json(e).encode()[1:], bad=False, event=e) for e, (f, v) in zip(events, junk)]


# ---- the import file --------------------------------------------------------------------------------

def import_items(ctx: ChaosContext, plan: Plan, imported: list[Event], rng: random.Random) -> list[Item]:
    """The file's lines: the fixed bad lines first (so the CLI prints their reasons), then the
    good lines in arrival order with the drawn bad and the blank lines at random places."""
    bases = [base_of(e) for e in imported]
    twice = sorted(rng.sample(range(len(imported)), max(1, len(imported) // 20)))
    good = [Item("valid", wire_json(e).encode(), bad=False, event=e) for e in imported]
    for index, item in zip(twice, duplicate_key_good([imported[i] for i in twice], ctx.seed + 100)):
        good[index] = item
    sources = sorted(rng.sample(range(len(imported)), max(1, plan.bad_lines // 10)))
    for index, item in reversed(list(zip(sources, good_extras(ctx.seed + 200, [imported[i] for i in sources])))):
        good.insert(index + 1, item)  # right after its source: as on time as it is
    drawn = drawn_bad(plan.bad_lines, bases, ctx.seed + 300)
    blanks = [Item("blank (JSON whitespace only)", raw, bad=False, blank=True)
              for raw in (b"", b" ", b"\t", b"\r", b" \t \r")[:max(2, plan.bad_lines // 20)]]
    lines = list(good)
    for item in drawn + huge_lines(bases[0], plan.huge_lines) + blanks:
        lines.insert(rng.randrange(len(lines) + 1), item)
    return fixed_bad_lines(bases[0]) + lines


def drawn_bad(count: int, bases: list[dict], at_seed: int) -> list[Item]:
    """`count` bad lines or records, as evenly as can be over the classes."""
    classes = bad_classes(bases)
    items: list[Item] = []
    for n, (kind, strategy) in enumerate(classes.items()):
        share = count // len(classes) + (n < count % len(classes))
        if share:
            items += [Item(kind, raw, bad=True) for raw in draw(strategy, share, at_seed + 1000 * n)]
    return items


def write_import(path: Path, items: list[Item]) -> None:
    path.write_bytes(b"".join(item.raw + b"\n" for item in items))


# ---- the foreign producer ---------------------------------------------------------------------------

def foreign_items(ctx: ChaosContext, plan: Plan, tail: list[Event], rng: random.Random) -> list[Item]:
    """Good records (the workload's last deliveries; every fourth with a null key, one with a
    large unknown field) and bad ones (the drawn classes, empty and null values, near-limit ones)
    interleaved; good ones keep their arrival order."""
    good = [Item("valid", wire_json(e).encode(), bad=False, event=e, key=None if i % 4 == 3 else e.ride_id.encode())
            for i, e in enumerate(tail)]
    big = base_of(tail[0])
    good[0] = Item("valid, 500 KB unknown field", render({**big, "note": "n" * 500_000}), bad=False, event=tail[0],
                   key=tail[0].ride_id.encode())
    bases = [base_of(e) for e in tail]
    bad = drawn_bad(plan.foreign_bad, bases, ctx.seed + 500)
    bad += [Item("null value (tombstone)", None, bad=True), Item("empty value", b"", bad=True),
            Item("blank value", b"   ", bad=True),
            Item("near the record limit, city too long", render({**big, "city": "c" * NEAR_LIMIT_BYTES}), bad=True),
            Item("near the record limit, escapes to ~2 MB in JSON", render({**big, "city": "é" * (NEAR_LIMIT_BYTES // 2)}, False), bad=True),
            Item("near the record limit, control bytes", render({**big, "city": "@@"}).replace(b"@@", b"\x01" * (NEAR_LIMIT_BYTES // 2)),
                 bad=True),
            Item("bytes not UTF-8", render({**big, "city": "@@"}).replace(b"@@", b"\xff\xfe"), bad=True),
            Item("deep nesting", b"[" * DEEP + b"]" * DEEP, bad=True),
            Item("amount_cents 2**70", render({**big, "event_type": "payment_captured", "amount_cents": 2**70, "driver_id": "d1"}), bad=True)]
    for n, item in enumerate(bad):
        item.key = None if n % 3 == 0 else f"foreign-{n}".encode()
    records = list(good)
    for item in bad:
        records.insert(rng.randrange(len(records) + 1), item)
    return records


async def _send_foreign(settings: Settings, items: list[Item]) -> list[tuple[int, int]]:
    """(partition, offset) of each record, as the broker acknowledged it (acks=all)."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all")
    await producer.start()
    try:
        acks = [await producer.send(settings.topic, key=item.key, value=item.raw) for item in items]
        return [((m := await ack).partition, m.offset) for ack in acks]
    finally:
        await producer.stop()


async def _over_the_broker_limit(settings: Settings) -> str:
    """A foreign record larger than the broker takes: refused by Kafka, so it never reaches lklab."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap, acks="all", max_request_size=4 * HUGE_LINE_BYTES)
    await producer.start()
    try:
        await producer.send_and_wait(settings.topic, value=b"x" * HUGE_LINE_BYTES)
        return "accepted (unexpected)"
    except KafkaError as exc:
        return f"refused by the broker: {type(exc).__name__}"
    finally:
        await producer.stop()


# ---- the run -------------------------------------------------------------------------------------------

@dataclass
class Cli:
    returncode: int
    stdout: str
    stderr_lines: list[str]
    seconds: float

    @property
    def unexpected_stderr(self) -> list[str]:
        return [line for line in self.stderr_lines if not line.startswith(("dead-lettered ", "... and "))]


def run_produce(settings: Settings, path: Path, timeout_s: float) -> Cli:
    """`lklab produce --file PATH` as a user runs it: its own process, output piped."""
    env = processes.python_env(ROOT, settings.to_env())
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "lklab.cli", "produce", "--file", str(path)], capture_output=True, env=env,
                          cwd=settings.home, timeout=timeout_s)
    return Cli(done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace").splitlines(),
               round(time.monotonic() - began, 1))


@dataclass
class Layer:
    name: str
    consumer: str  # the `consumer` its dead letters carry
    pid: Callable[[], int | None]
    start: Callable[[], object]
    stop: Callable[[], object]
    started_pid: int | None = None


def layers(settings: Settings) -> dict[str, Layer]:
    output = output_name(VIEW, VERSION)
    return {"speed worker": Layer("speed worker", settings.speed_group, lambda: speed.read_pid(settings),
                                  lambda: speed.start(settings), lambda: speed.stop(settings)),
            "Kappa job": Layer(f"Kappa job {output}", replay_scope(VIEW, VERSION), lambda: running_pid(settings, output),
                               lambda: jobs.start(settings, VIEW, VERSION), lambda: jobs.stop(settings, VIEW, VERSION))}


def wait_caught_up(settings: Settings, timeout_s: float) -> bool:
    """Both consumers have committed everything the log held now (False: not within timeout_s)."""
    deadline = time.monotonic() + timeout_s
    try:
        speed.wait_caught_up(settings, timeout_s)
    except (TimeoutError, speed.SpeedError):
        return False
    while (job := jobs.job_status(settings, VIEW, VERSION)).lag != 0 or not job.running:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@dataclass
class Letters:
    """The DLQ, read from its earliest offset, sorted by who sent each dead letter."""

    by_sender: dict[str, list[dict]] = field(default_factory=dict)

    def of(self, sender: str) -> list[dict]:
        return self.by_sender.get(sender, [])


def sort_letters(letters: Iterable[dict], import_source: str, consumers: dict[str, str]) -> Letters:
    out = Letters()
    for letter in letters:
        source = str(letter.get("source", ""))
        if "consumer" in letter:
            sender = next((name for name, group in consumers.items() if group == letter["consumer"]), "unknown consumer")
        else:
            sender = "import" if source.startswith(import_source + ":") else "unknown"
        out.by_sender.setdefault(sender, []).append(letter)
    return out


def raw_bytes(letter: dict) -> bytes:
    return base64.b64decode(letter["raw_base64"]) if "raw_base64" in letter else str(letter.get("raw", "")).encode("utf-8")


def raw_differs(letter: dict, injected: bytes) -> bool:
    """The dead letter's bytes are not the injected ones (or, cut to fit, not their first bytes)."""
    if "raw_kept_bytes" in letter:
        return letter.get("raw_bytes") != len(injected) or raw_bytes(letter) != injected[:letter["raw_kept_bytes"]]
    return raw_bytes(letter) != injected


@dataclass
class Matched:
    """One sender's dead letters against what was injected: each must name one bad item, once."""

    count: int = 0
    stray: int = 0  # naming no injected bad item, or one already named
    no_reason: int = 0
    raw_differs: int = 0
    raw_sealed: int = 0  # input naming "pii": its dead letter may hold it with the PII sealed, not byte for byte
    reasons: dict[str, str] = field(default_factory=dict)  # a sample reason per class

    def take(self, letters: list[dict], place_of: Callable[[str], object], bad: dict[object, Item], lines: bool) -> Matched:
        """`lines`: the items are import lines, whose line ending (\\r\\n or \\n) is not part of them."""
        seen: set = set()
        for letter in letters:
            self.count += 1
            place = place_of(str(letter.get("source", "")))
            item = bad.get(place)
            reason = letter.get("reason")
            self.no_reason += not (isinstance(reason, str) and reason.strip() and "\n" not in reason)
            if item is None or place in seen:
                self.stray += 1
                continue
            seen.add(place)
            injected = (item.raw or b"").rstrip(b"\r\n") if lines else item.raw or b""
            if b'"pii"' in injected:
                self.raw_sealed += 1
            else:
                self.raw_differs += raw_differs(letter, injected)
            self.reasons.setdefault(item.kind, str(reason)[:160])
        return self


def line_number(source: str) -> int | None:
    head, _, number = source.rpartition(":")
    return int(number) if head and number.isdigit() else None


def log_place(source: str) -> tuple[int, int] | None:
    """(partition, offset) of a consumer's source `topic[p]@o`."""
    try:
        head, offset = source.rsplit("@", 1)
        return int(head.rsplit("[", 1)[1].rstrip("]")), int(offset)
    except (ValueError, IndexError):
        return None


def import_on_log(settings: Settings, foreign: set[tuple[int, int]]) -> Counter:
    """(event_id, event_version) of every record on the event topic that the foreign producer did not write."""
    end = kafka_io.run(kafka_io.end_offsets(settings))
    held: Counter = Counter()
    for record in kafka_io.run(kafka_io.read_range(settings, {}, end)):
        if (record.partition, record.offset) not in foreign:
            try:
                data = json.loads(record.value)
                held[(data.get("event_id"), data.get("event_version"))] += 1
            except ValueError:
                held[("(not JSON)", record.offset)] += 1
    return held


def views_against_oracle(settings: Settings, delivered: list[Event]) -> tuple[bool, dict]:
    """The speed layer's views and the Kappa job's output against the oracle over the good events."""
    engine = make_engine(settings)
    try:
        compared = {name: (read_view(engine, name), name) for name in views.SPEED_LAYER}
        compared[output_name(VIEW, VERSION)] = (read_output(engine, VIEW, output_name(VIEW, VERSION)), VIEW)
        results = {name: oracle.compare({(e, w): v for e, w, v in rows}, oracle.for_view(view, delivered))
                   for name, (rows, view) in compared.items()}
        left = {name: len(read_late_windows(engine, name)) for name in views.SPEED_LAYER}
    finally:
        engine.dispose()
    ok = all(c.equal for c in results.values()) and not any(left.values())
    return ok, {"views": {name: str(c) for name, c in results.items()}, "speed windows left to batch": left}


def run_bad_input(ctx: ChaosContext) -> CheckResult:
    plan = PLANS[ctx.size]
    settings = drill_settings(ctx.settings)
    rng = random.Random(ctx.seed)
    # on time (no event later than a minute): the speed layer leaves no window to batch, so
    # every view it serves must equal the oracle exactly
    workload = generate(GeneratorConfig(seed=ctx.seed, start=datetime(2026, 11, 17, 10, 0, tzinfo=timezone.utc),
                                        duration_s=plan.minutes * 60, rides_per_minute=plan.rides_per_minute, late_fraction=0.0,
                                        on_time_max_s=60, late_max_s=120, correction_shift_max_s=60))
    split = len(workload.deliveries) * 3 // 4
    imported, tail = workload.deliveries[:split], workload.deliveries[split:]
    by_name = layers(settings)
    # drawn before any thread runs: hypothesis checks that nothing else touches the global random state
    lines, records = import_items(ctx, plan, imported, rng), foreign_items(ctx, plan, tail, rng)
    with ExitStack() as stack:
        kafka_io.run(kafka_io.ensure_topics(settings))
        make_engine(settings).dispose()  # the store's schema, once: two starts migrating it at once would race
        for layer in by_name.values():
            stack.callback(layer.stop)
        with ThreadPoolExecutor(2, thread_name_prefix="chaos-start") as starting:
            for future in [starting.submit(layer.start) for layer in by_name.values()]:
                future.result(180)
        for layer in by_name.values():
            layer.started_pid = layer.pid()
        path = settings.home / "bad-input.jsonl"
        write_import(path, lines)
        bad_lines = sum(item.bad for item in lines)
        ctx.say(f"speed worker and {output_name(VIEW, VERSION)} running; lklab produce --file with {len(lines):,} lines "
                f"({bad_lines:,} bad, {sum(i.blank for i in lines)} blank, {path.stat().st_size / 1e6:.1f} MB)")
        cli = run_produce(settings, path, timeout_s=600)
        said = cli.stdout.strip().splitlines()
        ctx.say(f"lklab produce exited {cli.returncode} in {cli.seconds}s: {said[-1] if said else '(nothing on stdout)'}")
        places = kafka_io.run(_send_foreign(settings, records))
        broker_refusal = kafka_io.run(_over_the_broker_limit(settings))
        ctx.say(f"foreign producer: {len(records)} records ({sum(r.bad for r in records)} bad) acknowledged; "
                f"a {HUGE_LINE_BYTES / 1e6:.1f} MB record: {broker_refusal}")
        caught_up = wait_caught_up(settings, plan.catch_up_s)
        ctx.say("both consumers caught up with the log" if caught_up else "NOT caught up: the views are compared as they are")
        stopped = [layer.name for layer in by_name.values() if layer.pid() is None or layer.pid() != layer.started_pid]
        letters = sort_letters(read_dead_letters(settings), str(path), {n: layer.consumer for n, layer in by_name.items()})
        foreign_good = [r for r in records if not r.bad]
        on_log = import_on_log(settings, set(places))
        delivered = [i.event for i in lines + foreign_good if i.event is not None]
        views_ok, view_detail = views_against_oracle(settings, delivered)
    return judge(ctx, plan, lines, records, places, letters, on_log, cli, stopped, caught_up, views_ok,
                 {**view_detail, "broker, record over its limit": broker_refusal})


def judge(ctx: ChaosContext, plan: Plan, lines: list[Item], records: list[Item], places: list[tuple[int, int]], letters: Letters,
          on_log: Counter, cli: Cli, stopped: list[str], caught_up: bool, views_ok: bool, detail: dict) -> CheckResult:
    bad_by_line = {n: item for n, item in enumerate(lines, start=1) if item.bad}
    bad_by_place = {place: item for place, item in zip(places, records) if item.bad}
    good_lines = Counter((i.event.event_id, i.event.event_version) for i in lines if i.event is not None and not i.bad)
    matched = {"import": Matched().take(letters.of("import"), line_number, bad_by_line, lines=True)}
    for name in ("speed worker", "Kappa job"):
        matched[name] = Matched().take(letters.of(name), log_place, bad_by_place, lines=False)
    unknown = sum(len(v) for k, v in letters.by_sender.items() if k not in matched)
    accepted = sum(min(n, good_lines[k]) for k, n in on_log.items())
    extra = sum(max(n - good_lines[k], 0) for k, n in on_log.items())
    figures: list[Figure] = [
        equal("import: bad lines dead-lettered", matched["import"].count, len(bad_by_line), "lines"),
        equal("import: good lines on the log", accepted, sum(good_lines.values()), "lines"),
        zero("import: records on the log that no good line holds", extra, "records"),
        equal("speed worker: foreign bad records dead-lettered", matched["speed worker"].count, len(bad_by_place), "records"),
        equal("Kappa job: foreign bad records dead-lettered", matched["Kappa job"].count, len(bad_by_place), "records"),
        zero("dead letters naming no injected bad input, or one already named", sum(m.stray for m in matched.values()) + unknown),
        zero("dead letters without a one-line reason", sum(m.no_reason for m in matched.values())),
        zero("dead letters whose raw bytes differ from the input (input naming PII aside)", sum(m.raw_differs for m in matched.values())),
        zero("consumer processes that stopped or restarted", len(stopped), "processes"),
        holds("views of the good events equal the oracle (speed layer's 3, Kappa revenue_per_minute v1)",
              views_ok and caught_up, "yes" if views_ok and caught_up else f"NO{'' if caught_up else ' (not caught up)'}"),
        zero("lklab produce: tracebacks or stderr lines that are not one dead letter each", len(cli.unexpected_stderr)
             + (cli.returncode != 0), "lines"),
    ]
    kinds = Counter(i.kind for i in lines if i.bad)
    return ctx.result(
        fault=(f"{len(bad_by_line):,} bad lines through `lklab produce` ({len(kinds)} classes, hypothesis-drawn) and "
               f"{len(bad_by_place)} bad records from a foreign producer, among good ones, into the live pipeline"),
        trials=len(bad_by_line) + len(bad_by_place),
        figures=figures,
        evidence={"import": {"lines": len(lines), "bad_by_class": dict(kinds), "good": sum(good_lines.values()),
                             "blank": sum(i.blank for i in lines), "cli_exit": cli.returncode, "cli_s": cli.seconds,
                             "cli_summary": cli.stdout.strip().splitlines()[-1:], "cli_stderr_lines": len(cli.stderr_lines),
                             "cli_unexpected_stderr": cli.unexpected_stderr[:5]},
                  "foreign": {"records": len(records), "bad_by_class": dict(Counter(r.kind for r in records if r.bad)),
                              "good": sum(not r.bad for r in records), "null_keys": sum(r.key is None for r in records)},
                  "dead_letters": {name: {"count": m.count, "stray": m.stray, "no_reason": m.no_reason,
                                          "raw_differs": m.raw_differs, "raw_not_compared_pii": m.raw_sealed,
                                          "sample_reasons": m.reasons} for name, m in matched.items()},
                  "dead_letters_from_unknown_senders": unknown, "stopped": stopped, "caught_up": caught_up,
                  "size": {"plan": plan.__dict__}, **detail})


register(Check(
    name="bad-input",
    title="every bad event is dead-lettered with a reason; nothing is lost; nothing stops the pipeline",
    promise=("Kafka Connect: errors.tolerance=all with a dead-letter queue topic (errors.deadletterqueue.context.headers.enable "
             "records the reason, the connector and the record's place); Flink and Spark Structured Streaming: a record "
             "that throws fails the job (restart loop on the same record) unless the user's code catches it and routes it "
             "to a side output"),
    scope=("lklab validates at the edge (`lklab produce`: UTF-8, JSON without NaN/Infinity or nesting past ~1,000 levels, "
           "schema v1 with integers within 64 bits, the topic's record limit) and again in every stream consumer of the log "
           "(the speed worker, every Kappa job): a bad record is dead-lettered to the DLQ topic with a one-line reason (at "
           "most 300 characters), where it was (FILE:LINE or topic[partition]@offset), which consumer rejected it, and its "
           "bytes (also in base64 when they are not UTF-8; the first 64 KiB and the full size when they would not fit), "
           "before the batch or checkpoint that skipped it commits: never lost, and a consumer never stops on it. Narrower: "
           "dead letters are at-least-once (a crash can repeat them) and each consumer sends its own for the same foreign "
           "record; silver quarantines such records to a Delta table instead (not exercised here); blank lines are skipped, "
           "not dead-lettered; a duplicated key takes its last value; a wrong or null Kafka key is not checked (the key only "
           "orders a ride's events); records larger than the broker's limit from a foreign producer are refused by Kafka and "
           "never reach lklab; the serving store here is SQLite"),
    run=run_bad_input,
))
