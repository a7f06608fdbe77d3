"""`http-api`: the query API under fuzzed requests and under reads concurrent with swaps.

The lab: a seeded workload on the check's broker (a few riders over midnight, so the two
sessionization logics differ), the Faust speed worker, two complete Lambda batch builds and two
complete Kappa versions of user_sessions, and the API as its own process (`lklab serve`).

1. Reads under swaps: reader threads GET /views/user_sessions and /kappa/views/user_sessions
   while one thread re-promotes the two batch builds in turn (lklab.lambda_arch.builds.promote, the
   batch layer's promotion transaction; each promotion is a new build id) and another swaps the
   Kappa alias between the two versions (lklab.kappa.cutover: validated cutovers and rollbacks).
   Each answer names its build or version; its rows must be exactly that build's or version's
   rows (ground truth: the generator's oracle over the log prefix each build read; Kappa v2 is
   checked against the oracle, v1 is the midnight-bug logic). Anything else is counted: mixed
   (rows of another build/version, or a name that is none of them), partial, empty, failed.
2. Schemathesis (`schemathesis run --checks all`, every phase) against the live /openapi.json;
   its HAR log is read back to count requests, 5xx, and error answers whose `detail` is not one
   line of text; its report gives the conformance failures."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from expectations.runner import run_suite
from lklab import views
from lklab.chaos.registry import ChaosContext, ChaosError, Check, register
from lklab.chaos.result import CheckResult, Figure, holds, zero
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.core.events import SCHEMA_VERSION, Event
from lklab.core.provenance import git_sha
from lklab.drills.lab import Api
from lklab.core.http import get_json
from lklab.kappa import cutover as co
from lklab.kappa import replay
from lklab.kappa.names import output_name
from lklab.kappa.query import published
from lklab.engine.outputs import read_output
from lklab.lambda_arch import speed
from lklab.lambda_arch.builds import BatchBuild, new_build_id, promote
from lklab.log import kafka_io
from lklab.log.generator import GeneratorConfig, generate
from lklab.log.produce import produce_events
from lklab.serving.store import make_engine

VIEW = "user_sessions"  # batch-only in Lambda (no speed rows mixed in): an answer is exactly one build's rows
LAMBDA, KAPPA = "lambda", "kappa"
# few riders over midnight UTC: sessions across it are common, where logic v1 (the midnight split) differs from v2
WORKLOAD = {"start": datetime(2026, 11, 29, 22, 0, tzinfo=timezone.utc), "duration_s": 4 * 3600, "rides_per_minute": 6, "users": 40}
OLDER_SHARE = 2 / 3  # the older batch build read this share of the log; the newer one all of it
# the API refuses, 422 in one line, some requests its schema allows but OpenAPI cannot state
# (key/city/driver are exclusive, from < to, the alias must name the view's entity): not a violation
NOT_CHECKED = "positive_data_acceptance"
# a Lambda read costs ~10 ms, a Kappa read ~120 ms (it asks Kafka for the log's end): two of one for one of the other
TURNS = (LAMBDA, LAMBDA, KAPPA)


@dataclass(frozen=True)
class Plan:
    reads: int  # at least this many reads, across the reader threads
    readers: int
    promotions: int  # at least this many batch promotions during the reads
    kappa_swaps: int  # at least this many Kappa alias swaps during the reads
    cutover_every: int  # every Nth Kappa swap is a validated cutover, the others rollbacks (instant)
    promote_pause_s: float  # between promotions (each adds a build's rows to the store)
    swap_pause_s: float  # between Kappa swaps
    examples: int  # Schemathesis --max-examples per operation
    min_requests: int  # Schemathesis must have made at least this many requests
    reads_within_s: float
    fuzz_within_s: float


PLANS = {
    "small": Plan(reads=500, readers=4, promotions=3, kappa_swaps=4, cutover_every=4, promote_pause_s=0.1, swap_pause_s=0.1,
                  examples=6, min_requests=100, reads_within_s=120, fuzz_within_s=120),
    "full": Plan(reads=10_000, readers=6, promotions=40, kappa_swaps=40, cutover_every=10, promote_pause_s=0.5,
                 swap_pause_s=0.25, examples=120, min_requests=500, reads_within_s=360, fuzz_within_s=400),
}


# ---- what readers may see ----------------------------------------------------------------------
def row_key(row: dict[str, Any]) -> tuple:
    """A row of an answer, as compared: the view's columns only (Lambda adds source flags)."""
    spec = views.VIEWS[VIEW]
    return tuple(row.get(c) for c in (spec.entity, "window_start", *spec.value_columns))


def answer_rows(rows: dict[tuple[str, datetime], Any]) -> frozenset[tuple]:
    """The rows a complete answer carries for (entity, window start) → value, in the API's JSON form."""
    spec = views.VIEWS[VIEW]
    return frozenset(row_key(json.loads(json.dumps(spec.measure.row_json(spec, e, w, v)))) for (e, w), v in rows.items())


@dataclass
class Served:
    """Every complete answer: row sets by name, and which set each build id or Kappa output serves."""

    sets: dict[str, frozenset[tuple]] = field(default_factory=dict)
    by_source: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def expect(self, source: str, set_name: str) -> None:
        with self.lock:
            self.by_source[source] = set_name

    def judge(self, source: str | None, rows: list[dict[str, Any]]) -> tuple[str, str | None]:
        """(verdict, the row set named): exact | mixed | partial | empty."""
        with self.lock:
            name = self.by_source.get(source or "")
        expected = self.sets.get(name or "")
        got = frozenset(row_key(r) for r in rows)
        if expected is not None and got == expected:
            return "exact", name
        if not got:
            return "empty", name
        if expected is not None and got < expected:
            return "partial", name
        return "mixed", name  # rows of another build/version, or a name that is no complete one


# ---- the lab ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Build:
    """A complete batch build: the log prefix it read, where that prefix ends, and its rows per view."""

    name: str
    events: list[Event]
    ends: dict[int, int]
    rows: dict[str, dict]  # view → the oracle's answer over `events`


@dataclass
class Lab:
    settings: Settings
    engine: Engine
    api: Api
    builds: list[Build] = field(default_factory=list)
    served: Served = field(default_factory=Served)


def _produce_builds(ctx: ChaosContext, settings: Settings) -> list[Build]:
    """The workload onto the log in two parts; the older build reads the first, the newer both."""
    events = generate(GeneratorConfig(seed=ctx.seed, **WORKLOAD)).deliveries
    cut = int(len(events) * OLDER_SHARE)
    kafka_io.run(kafka_io.ensure_topics(settings))
    builds = []
    for name, part, read in (("build older", events[:cut], events[:cut]), ("build newer", events[cut:], events)):
        produce_events(settings, part)
        builds.append(Build(name, read, kafka_io.run(kafka_io.end_offsets(settings)),
                            {view: oracle.for_view(view, read) for view in views.VIEWS}))
    return builds


def batch_promote(lab: Lab, build: Build) -> str:
    """Promote a new build id holding `build`'s rows (the batch layer's own transaction)."""
    watermark = max(e.event_time for e in build.events).astimezone(timezone.utc)
    record = BatchBuild(build_id=new_build_id(), created_at=datetime.now(timezone.utc), status="promoted", git_sha=git_sha(),
                        logic_version=views.LOGIC_VERSION, schema_version=SCHEMA_VERSION,
                        offsets={p: [0, end] for p, end in build.ends.items()}, watermark=watermark,
                        final_through=views.final_through(watermark, lab.settings.allowed_lateness_s),
                        row_counts={view: len(r) for view, r in build.rows.items()},
                        validation={"passed": True, "gates": "chaos http-api: the oracle's rows"}, delta_versions={})
    lab.served.expect(record.build_id, build.name)  # before the commit: a reader may see it at once
    outputs = [(views.VIEWS[view], [(e, w, *(v if isinstance(v, tuple) else (v,))) for (e, w), v in r.items()])
               for view, r in build.rows.items()]
    promote(lab.engine, record, outputs, lab.settings)
    return record.build_id


def _set_up(ctx: ChaosContext, stack: ExitStack) -> tuple[Lab, dict[str, Any]]:
    settings = ctx.settings
    engine = make_engine(settings)
    stack.callback(engine.dispose)
    lab = Lab(settings, engine, Api(settings))
    stack.callback(speed.stop, settings)
    stack.callback(lab.api.stop)
    starting = ThreadPoolExecutor(2, thread_name_prefix="http-api-start")
    stack.callback(starting.shutdown)  # runs first: a start in flight ends before the stops
    lab.builds = _produce_builds(ctx, settings)
    events = lab.builds[-1].events
    worker = starting.submit(speed.start, settings)  # /health answers 200 only while the speed layer is healthy
    api = starting.submit(lab.api.start)
    for build in lab.builds:
        lab.served.sets[build.name] = answer_rows(build.rows[VIEW])
        batch_promote(lab, build)
    truth = oracle.for_view(VIEW, events)
    for version in (1, 2):
        output = output_name(VIEW, version)
        replay(settings, engine, VIEW, version)
        found = {(e, w): v for e, w, v in read_output(engine, VIEW, output)}
        lab.served.sets[output] = answer_rows(found)
        lab.served.expect(output, output)
        if version == 2 and found != truth:
            raise ChaosError(f"{output} is not the oracle's answer ({oracle.compare(found, truth)}): the references are wrong")
    ctx.say(f"{len(events):,} events; two batch builds promoted, {output_name(VIEW, 1)} and {output_name(VIEW, 2)} replayed; "
            f"publishing v1 (cutover)")
    first = co.cutover(settings, engine, VIEW, 1, "chaos http-api: first publication", spark=ctx.spark, tolerance_pct=100,
                       run_suite=run_suite)
    if not first.swapped:
        raise ChaosError(f"cutover to {output_name(VIEW, 1)} refused: " + "; ".join(c.summary for c in first.checks if not c.passed))
    ctx.say("published; waiting for the speed worker and the API")
    worker.result(180)
    api.result(180)
    sets = lab.served.sets
    # within each architecture the two complete answers differ, so a mix of them is told apart
    distinct = sets["build older"] != sets["build newer"] and sets[output_name(VIEW, 1)] != sets[output_name(VIEW, 2)]
    references = {"rows": {name: len(rows) for name, rows in sets.items()}, "kappa_v2_equals_oracle": True,
                  "distinct_per_architecture": distinct}
    return lab, references


# ---- 1. reads under swaps ----------------------------------------------------------------------
@dataclass
class Reads:
    verdicts: Counter = field(default_factory=Counter)  # exact | mixed | partial | empty | failed
    seen: Counter = field(default_factory=Counter)  # (arch, row set) of exact answers
    promotions: int = 0
    cutovers: int = 0
    rollbacks: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)  # the first few bad answers
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def made(self) -> int:
        return sum(self.verdicts.values())

    def note(self, arch: str, verdict: str, name: str | None, detail: str) -> None:
        with self.lock:
            self.verdicts[verdict] += 1
            if verdict == "exact":
                self.seen[(arch, name)] += 1
            elif len(self.examples) < 10:
                self.examples.append({"arch": arch, "verdict": verdict, "named": name, "detail": detail[:300]})


def _read_once(lab: Lab, arch: str, reads: Reads) -> None:
    path = f"/views/{VIEW}" if arch == LAMBDA else f"/kappa/views/{VIEW}"
    status, body = get_json(lab.api.url + path, 10.0)
    if status != 200:
        reads.note(arch, "failed", None, f"HTTP {status}: {body.get('detail', body)}")
        return
    source = body.get("build_id") if arch == LAMBDA else body.get("version")
    verdict, name = lab.served.judge(source, body.get("rows", []))
    reads.note(arch, verdict, name, f"{source}: {len(body.get('rows', []))} rows")


def _promoter(lab: Lab, plan: Plan, reads: Reads, stop: threading.Event) -> None:
    while not stop.is_set():
        for build in lab.builds:
            batch_promote(lab, build)
            reads.promotions += 1
            stop.wait(plan.promote_pause_s)


def _kappa_swapper(ctx: ChaosContext, lab: Lab, plan: Plan, reads: Reads, stop: threading.Event) -> None:
    """Cut over to the other version, then roll back and forth (a rollback of a rollback is the
    version before it), with a validated cutover every `cutover_every` swaps."""
    swaps = 0
    while not stop.is_set():
        if swaps % plan.cutover_every == 0:
            with lab.engine.connect() as conn:
                current = published(conn, VIEW)
            other = 2 if current == output_name(VIEW, 1) else 1
            result = co.cutover(lab.settings, lab.engine, VIEW, other, "chaos http-api: swap under readers", spark=ctx.spark,
                                tolerance_pct=100, run_suite=run_suite)
            if not result.swapped:
                raise ChaosError(f"cutover to {result.to_target} refused: "
                                 + "; ".join(c.summary for c in result.checks if not c.passed))
            reads.cutovers += 1
        else:
            co.rollback(lab.settings, lab.engine, VIEW, "chaos http-api: roll back under readers", spark=ctx.spark)
            reads.rollbacks += 1
        swaps += 1
        stop.wait(plan.swap_pause_s)


def reads_under_swaps(ctx: ChaosContext, lab: Lab, plan: Plan) -> Reads:
    reads, stop = Reads(), threading.Event()
    deadline = time.monotonic() + plan.reads_within_s

    def enough() -> bool:
        return (reads.made >= plan.reads and reads.promotions >= plan.promotions
                and reads.cutovers + reads.rollbacks >= plan.kappa_swaps) or time.monotonic() > deadline

    def reader(index: int) -> None:
        turn = index
        while not stop.is_set() and not enough():
            _read_once(lab, TURNS[turn % len(TURNS)], reads)
            turn += 1

    with ThreadPoolExecutor(plan.readers + 2, thread_name_prefix="http-api-read") as pool:
        swappers = [pool.submit(_promoter, lab, plan, reads, stop), pool.submit(_kappa_swapper, ctx, lab, plan, reads, stop)]
        for future in swappers:
            future.add_done_callback(lambda _f: stop.set())  # a swapper that failed ends the reads
        readers = [pool.submit(reader, i) for i in range(plan.readers)]
        try:
            for future in readers:
                future.result()
        finally:
            stop.set()
        for future in swappers:
            future.result()  # a swap that failed fails the check, in one line
    return reads


# ---- 2. Schemathesis ---------------------------------------------------------------------------
@dataclass
class Fuzz:
    requests: int
    server_errors: int
    not_one_line: int
    failures: dict[str, int]  # Schemathesis failure code and title → count (ST101, the 5xx, counted above)
    run_errors: int
    statuses: dict[str, int]
    examples: list[str]


def one_line_detail(text: str) -> bool:
    """An error body is {"detail": "<one line>"}."""
    try:
        detail = json.loads(text).get("detail")
    except (ValueError, AttributeError):
        return False
    return isinstance(detail, str) and bool(detail.strip()) and "\n" not in detail and "\r" not in detail


def schemathesis(url: str, out: Path, examples: int, seed: int, within_s: float) -> Fuzz:
    """`schemathesis run` on the live API, every check but NOT_CHECKED; read back its HAR log and report."""
    if importlib.util.find_spec("schemathesis") is None:
        raise ChaosError("schemathesis is not installed: pip install -e '.[dev]'")
    out.mkdir(parents=True, exist_ok=True)
    har, report = out / "schemathesis.har.json", out / "schemathesis.report.json"
    argv = [sys.executable, "-m", "schemathesis.cli", "run", f"{url}/openapi.json", "--checks", "all", "--exclude-checks", NOT_CHECKED,
            "--max-examples", str(examples), "--seed", str(seed), "--request-timeout", "20", "--report", "har,json",
            "--report-dir", str(out), "--report-har-path", str(har), "--report-json-path", str(report)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=within_s, cwd=out)
    except subprocess.TimeoutExpired:
        raise ChaosError(f"schemathesis did not finish within {within_s:.0f}s") from None
    if not har.exists() or not report.exists():
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise ChaosError(f"schemathesis wrote no report (exit {done.returncode}): {lines[-1] if lines else 'no output'}")
    entries = json.loads(har.read_text())["log"]["entries"]
    summary = json.loads(report.read_text())
    statuses = Counter(e["response"]["status"] for e in entries)
    errors = [e for e in entries if e["response"]["status"] >= 400]
    bad = [e for e in errors if not one_line_detail(e["response"]["content"].get("text", ""))]
    failures = {f"{f['code']} {f['title']}": f["count"] for f in summary.get("failures", []) if f["code"] != "ST101"}
    shown = [f"{e['request']['method']} {e['request']['url'][:200]} → {e['response']['status']} "
             f"{e['response']['content'].get('text', '')[:200]}" for e in [*(x for x in entries if x['response']['status'] >= 500), *bad][:10]]
    return Fuzz(requests=len(entries), server_errors=sum(n for s, n in statuses.items() if s >= 500), not_one_line=len(bad),
                failures=failures, run_errors=len(summary.get("errors", [])), statuses={str(s): n for s, n in sorted(statuses.items())},
                examples=shown)


def _wait_healthy(url: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    while (status := get_json(f"{url}/health", 5.0)[0]) != 200:
        if time.monotonic() > deadline:
            raise ChaosError(f"/health answered {status} for {within_s:.0f}s: the speed layer did not become healthy")
        time.sleep(0.5)


# ---- the check ---------------------------------------------------------------------------------
def at_least(name: str, value: int, least: int, unit: str = "") -> Figure:
    return Figure(name=name, value=value, unit=unit, bound=f"≥ {least:,}", ok=value >= least)


def run_http_api(ctx: ChaosContext) -> CheckResult:
    plan = PLANS[ctx.size]
    with ExitStack() as stack:
        lab, references = _set_up(ctx, stack)
        ctx.say(f"API on {lab.api.url}; {plan.reads:,} reads from {plan.readers} threads while builds are promoted "
                f"and the Kappa alias swaps")
        reads = reads_under_swaps(ctx, lab, plan)
        ctx.say(f"{reads.made:,} reads: {dict(reads.verdicts)}; {reads.promotions} promotions, {reads.cutovers} cutovers, "
                f"{reads.rollbacks} rollbacks")
        _wait_healthy(lab.api.url)
        ctx.say(f"schemathesis: every phase, --checks all, {plan.examples} examples per operation")
        fuzz = schemathesis(lab.api.url, ctx.settings.home / "schemathesis", plan.examples, ctx.seed, plan.fuzz_within_s)
        ctx.say(f"schemathesis: {fuzz.requests:,} requests, statuses {fuzz.statuses}, failures {fuzz.failures or 'none'}")
    seen = {f"{arch} {name}": n for (arch, name), n in sorted(reads.seen.items())}
    every_source = {(a, n) for a, n in reads.seen} >= {(LAMBDA, "build older"), (LAMBDA, "build newer"),
                                                      (KAPPA, output_name(VIEW, 1)), (KAPPA, output_name(VIEW, 2))}
    figures = [
        at_least("requests Schemathesis made", fuzz.requests, plan.min_requests),
        zero("5xx answers", fuzz.server_errors),
        zero("error answers without a one-line detail", fuzz.not_one_line),
        zero("Schemathesis conformance failures", sum(fuzz.failures.values())),
        zero("Schemathesis run errors", fuzz.run_errors),
        at_least("reads during swaps", reads.made, plan.reads),
        at_least("batch promotions during the reads", reads.promotions, plan.promotions),
        at_least("Kappa cutovers + rollbacks during the reads", reads.cutovers + reads.rollbacks, plan.kappa_swaps),
        zero("mixed answers", reads.verdicts["mixed"]),
        zero("partial answers", reads.verdicts["partial"]),
        zero("empty answers", reads.verdicts["empty"]),
        zero("failed reads", reads.verdicts["failed"]),
        holds("readers saw both builds and both versions", every_source and references["distinct_per_architecture"],
              "yes" if every_source else f"only {', '.join(seen)}"),
    ]
    evidence = {"references": references, "exact_answers_by_source": seen, "bad_answers": reads.examples,
                "swaps": {"promotions": reads.promotions, "cutovers": reads.cutovers, "rollbacks": reads.rollbacks},
                "schemathesis": {"statuses": fuzz.statuses, "failures": fuzz.failures, "examples_per_operation": plan.examples,
                                 "not_checked": NOT_CHECKED, "bad_responses": fuzz.examples}}
    return ctx.result(fault="fuzzed requests (Schemathesis) and reads during batch promotions, Kappa cutovers and rollbacks",
                      trials=fuzz.requests + reads.made, figures=figures, evidence=evidence)


register(Check(
    name="http-api",
    title="the query API answers every request with 2xx or a one-line 4xx, and every read is one whole build or version",
    promise="a well-behaved HTTP service never answers 5xx to any input, valid or not, and documents what it answers "
            "(OpenAPI); a database serves snapshot-isolated reads (MVCC, or an atomic rename of a serving table): a "
            "reader sees the old table or the new one, never a mix, a part or nothing",
    scope="lklab: every route of the API, fuzzed by Schemathesis through every phase and check except "
          "positive_data_acceptance (the API refuses, 422 in one line, schema-valid requests that break rules OpenAPI "
          "cannot state: key/city/driver are exclusive, from < to, the alias must name the view's entity); reads are "
          "checked on user_sessions, which Lambda serves from the batch build alone, so an answer is one build's rows "
          "exactly (merged Lambda views add speed rows after T, not checked here); builds are re-promoted through the "
          "batch layer's promotion transaction with the oracle's rows, not rebuilt by Spark; the serving store is SQLite "
          "(WAL); /health answers 503 by design while the speed layer is unhealthy (it is healthy during the fuzzing)",
    run=run_http_api,
))
