"""`batch-crashes`: a Lambda batch build killed with kill -9 at any point never exposes a partial
promotion; the previous build stays served; the next run converges to the oracle.

Set-up: a generated workload (over two UTC dates, with the seed's duplicates, corrections and a
share of late events) is produced in slices. The first slice is built and promoted in the
check's process: the previous build, whose answer must be the oracle of that slice. Each trial
is a `lklab batch` process that ingests the next slice (so a finished build would differ) and is
SIGKILLed, its process group with Spark's JVM, in the trial's phase, found from real signals:
bronze ingest (bronze's write has put data files on disk that no commit names yet), silver/gold
writes (silver's write likewise, or silver's commit and some but not all gold commits have
landed), or between the gates and promotion (every blocking gate passed and the promotion
transaction is held open after its writes by the stall_in_commit fault, lklab.views.faults,
whose marker names the pid). Where each kill landed is checked afterwards against Dagster's run
records, the Delta logs and the uncommitted files. Each trial's process is started while the run
ahead still holds the lab's batch lock, once that run has read its input, so its cold start
overlaps it and it reads exactly its own slice. A reader thread reads every batch view through
the Lambda reader (lklab.lambda_arch.merge.query, batch-only: every row of the served build) the
whole time; after each kill every Delta table is read with Spark at its last commit. Then one
clean run with no new event (a `lklab batch` process at full size; run_batch in the check's
process at small size); every view it serves must equal the oracle of every event produced."""
from __future__ import annotations

import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from sqlalchemy import Engine, select

from lklab import views
from lklab.chaos.registry import ChaosContext, ChaosError, Check, register
from lklab.chaos.result import CheckResult, Figure, equal, holds, zero
from lklab.core import oracle
from lklab.core.config import Settings
from lklab.core.processes import log_tail
from lklab.core.events import Event
from lklab.drills.kill import KillMissed, kill_group, kill_in_stall, spawn_cli, wait_until
from lklab.lake import tables as lake
from lklab.lambda_arch import merge
from lklab.lambda_arch.builds import current_build
from lklab.lambda_arch.runs import RUNNING
from lklab.log.generator import GeneratorConfig, Workload, generate, write_ledger
from lklab.log.produce import produce_events
from lklab.serving.store import batch_builds, batch_runs, make_engine
from lklab.views.faults import STALL_IN_COMMIT, STALL_S
from orchestration.launch import dagster_instance, run_batch

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

NAME = "batch-crashes"
BRONZE, SILVER_GOLD, PROMOTION = "bronze ingest", "silver/gold writes", "between gates and promotion"
PHASES = (BRONZE, SILVER_GOLD, PROMOTION)
KILLS = {"small": 1, "full": 5}
# small: one view (a cold `lklab batch` costs ~50 s here); full: the two money views, so a kill
# can land between two gold commits and the ledger gate runs (each more view adds to every run)
BATCH_VIEWS = {"small": ["revenue_per_minute"], "full": ["revenue_per_minute", "driver_earnings_daily"]}
WORKLOADS = {"small": {"duration_s": 600, "rides_per_minute": 8}, "full": {"duration_s": 900, "rides_per_minute": 15}}
START = datetime(2026, 11, 17, 23, 50, tzinfo=timezone.utc)  # the workload spans midnight: two event dates
LATE_FRACTION = 0.03  # of events arrive up to the generator's late_max_s late: after the previous build, into its windows
FIRST_SHARE = 0.5  # of the deliveries the previous build holds; the trials' slices share the rest
LEASE_TIMEOUT_S = 15.0  # Settings.batch_lease_timeout_s (default 1 h): a killed run's dates are taken over after this
READ_EVERY_S = 0.05
SETTLE_S = 2.0  # reads go on this long after each kill before the lake is read
AFTER_KILL_S = 2.0  # a read within this after a kill counts as right after it ...
MIN_READS_AFTER_KILL = 5  # ... and each kill needs at least this many of them
PHASE_TIMEOUT_S = 900.0
FINAL_TIMEOUT_S = 900.0


# ---- the lab: settings, the serving store, the Dagster instance, the lake's commit logs ----------------

@dataclass
class Lab:
    ctx: ChaosContext
    settings: Settings
    engine: Engine
    spark: SparkSession
    views: list[str]
    instance: Any = None  # the Dagster instance, opened on first use
    procs: list[subprocess.Popen] = field(default_factory=list)  # every `lklab batch` started: none outlives the check
    stopping: threading.Event = field(default_factory=threading.Event)

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                kill_group(proc)

    def stop(self) -> None:
        """On the way out (an error included): start no further run, and kill every one started."""
        self.stopping.set()
        self.kill_all()

    def now(self) -> float:
        return round(time.monotonic() - self.ctx.began, 2)

    def tables(self) -> dict[str, str]:
        """The Delta tables a batch run writes, by short name: bronze, silver, gold/<view>."""
        return {"bronze": lake.BRONZE, "silver": lake.SILVER, **{f"gold/{v}": lake.gold_table(v) for v in self.views}}

    def log_dir(self, table: str) -> Path:
        return Path(lake.path(self.settings, table)) / "_delta_log"

    def last_commits(self) -> dict[str, int]:
        """Each table's latest committed version, from its _delta_log's JSON commits (-1: none)."""
        return {name: last_commit(self.log_dir(table)) for name, table in self.tables().items()}

    def location(self, name: str) -> Path:
        return Path(lake.path(self.settings, self.tables()[name]))

    def uncommitted(self) -> dict[str, set[str]]:
        """Each table's data files that no commit names (yet, or ever)."""
        return {name: uncommitted_files(self.location(name)) for name in self.tables()}

    def dagster_runs(self, since: datetime) -> list[dict[str, str]]:
        """The Dagster runs created since `since` (the killed process's), oldest first, from the
        lab's instance (the one `lklab batch` records its runs in)."""
        from dagster import RunsFilter

        if self.instance is None:
            self.instance = dagster_instance(self.settings)
        records = self.instance.get_run_records(filters=RunsFilter(created_after=since))
        return [{"job": r.dagster_run.job_name, "run_id": r.dagster_run.run_id, "status": r.dagster_run.status.value,
                 "created": r.create_timestamp.timestamp()} for r in sorted(records, key=lambda r: r.create_timestamp)]


def last_commit(delta_log: Path) -> int:
    return max((int(p.stem) for p in delta_log.glob("*.json") if p.stem.isdigit()), default=-1)


def gained(before: dict[str, int], now: dict[str, int], prefix: str) -> int:
    """How many tables named `prefix`… gained a commit since `before`."""
    return sum(now[name] > before[name] for name in before if name.startswith(prefix))


# ---- the reader -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Read:
    t: float
    view: str
    build_id: str | None
    answer: int  # index of its rows in Reader.answers; -1 when the read failed
    error: str | None = None


NO_SPEED = merge.SpeedHealth(False, "the check runs no speed layer: batch-only, every row of the served build", None, None)


class Reader:
    """A thread reading every batch view in turn through the Lambda reader, as a client would, and
    keeping each answer's build id and rows (distinct row sets stored once)."""

    def __init__(self, lab: Lab) -> None:
        self.lab, self.reads, self.answers = lab, [], []
        self._index: dict[frozenset, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-crashes-reader", daemon=True)

    def __enter__(self) -> Reader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        engine = make_engine(self.lab.settings)  # its own connections, as another process's would be
        while not self._stop.is_set():
            for view in self.lab.views:
                self.reads.append(self._read(engine, view))
                self._stop.wait(READ_EVERY_S)

    def _read(self, engine: Engine, view: str) -> Read:
        t = self.lab.now()
        try:
            answer = merge.query(engine, view, health=NO_SPEED)
        except Exception as exc:  # a failed read is a finding, not a crash of the check
            return Read(t, view, None, -1, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        rows = frozenset(((r.entity, r.window_start), r.value) for r in answer.rows)
        if rows not in self._index:
            self._index[rows] = len(self.answers)
            self.answers.append(dict(rows))
        return Read(t, view, answer.build_id, self._index[rows])

    def rows(self, read: Read) -> dict | None:
        return None if read.answer < 0 else self.answers[read.answer]


# ---- the trials -----------------------------------------------------------------------------------

@dataclass
class Trial:
    index: int
    phase: str
    point: str = ""  # where in the phase the kill was aimed
    pid: int = 0
    spawned_s: float = 0.0  # its process started (it waited for the batch lock while the run ahead held it)
    window_s: float = 0.0  # the run ahead ended: from here it could run
    killed_s: float | None = None
    finished_s: float = 0.0  # the settle and the lake read after its kill are done
    returncode: int | None = None
    landed: bool = False
    landing: str = ""  # what the Dagster records and the Delta logs say about where it landed
    missed: str | None = None
    commits_before: dict[str, int] = field(default_factory=dict)
    commits_at_kill: dict[str, int] = field(default_factory=dict)
    uncommitted_at_kill: dict[str, int] = field(default_factory=dict)  # data files this run wrote that no commit names
    dagster_runs: list[dict[str, str]] = field(default_factory=list)
    lease_after_kill: str | None = None  # the killed run's batch_runs row
    lease_after_next_run: str | None = None
    lake: dict[str, Any] = field(default_factory=dict)
    reads: int = 0
    reads_after_kill: int = 0
    not_previous: int = 0


def plan(size: str, rng: random.Random) -> list[str]:
    """The phases to kill in: small, the most delicate one; full, every phase once and the rest
    drawn, in an order drawn, from the seed."""
    if size == "small":
        return [PROMOTION]
    phases = [*PHASES, *(rng.choice(PHASES) for _ in range(KILLS["full"] - len(PHASES)))]
    rng.shuffle(phases)
    return phases


def slices(deliveries: list[Event], trials: int) -> list[list[Event]]:
    """The previous build's slice (FIRST_SHARE of the deliveries, in arrival order), then one
    slice per trial."""
    first = int(len(deliveries) * FIRST_SHARE)
    rest = deliveries[first:]
    step = -(-len(rest) // trials)
    return [deliveries[:first], *(rest[i * step:(i + 1) * step] for i in range(trials))]


def kill_in_bronze(lab: Lab, proc, trial: Trial, since: datetime, rng: random.Random, log: Path) -> None:
    """Kill inside bronze's write: as soon as it has put data files on disk that no commit names
    yet; if its commit lands first, right then (the ingest run still goes on: its bronze gate)."""
    trial.point = "bronze's write: its data files on disk, its commit not yet"
    wait_for_write(lab, proc, trial, "bronze", log)


def kill_in_writes(lab: Lab, proc, trial: Trial, since: datetime, rng: random.Random, log: Path) -> None:
    """Kill inside silver's write (its data files on disk, its commit not yet), or once silver's
    commit and `k` gold commits have landed (k drawn, fewer than the views): the rest in flight."""
    k = rng.randrange(len(lab.views) + 1) - 1
    if k < 0:
        trial.point = "silver's write: its data files on disk, its commit not yet"
        wait_for_write(lab, proc, trial, "silver", log)
        return
    trial.point = f"silver's commit and {k} of {len(lab.views)} gold commits landed"
    before = trial.commits_before
    wait_until(proc, lambda: (now := lab.last_commits())["silver"] > before["silver"] and gained(before, now, "gold/") >= k,
               trial.point, log, PHASE_TIMEOUT_S)


def wait_for_write(lab: Lab, proc, trial: Trial, table: str, log: Path) -> None:
    """Until `table` has new data files on disk, or a new commit (the write was too quick to catch)."""
    location, before = lab.location(table), trial.commits_before[table]
    known = data_files(location)
    wait_until(proc, lambda: bool(data_files(location) - known) or last_commit(location / "_delta_log") > before,
               trial.point, log, PHASE_TIMEOUT_S, poll_s=0.005)


KILLERS: dict[str, Callable[..., None]] = {BRONZE: kill_in_bronze, SILVER_GOLD: kill_in_writes}


@dataclass(frozen=True)
class Handover:
    """The moment the run ahead ended (returned, or was killed): the Delta commits and Dagster runs
    before it are not the next run's."""

    commits: dict[str, int]
    since: datetime
    at_s: float
    uncommitted: dict[str, set[str]]


def handover(lab: Lab) -> Handover:
    return Handover(lab.last_commits(), datetime.now(timezone.utc), lab.now(), lab.uncommitted())


@dataclass(frozen=True)
class NextRun:
    """A `lklab batch` to start before the run ahead ends, with the events produced for it."""

    settings: Settings
    log_name: str
    events: list[Event]


@dataclass(frozen=True)
class Started:
    proc: subprocess.Popen
    spawned_s: float


def start_when_read(lab: Lab, running: Callable[[], bool], bronze_before: int, nxt: NextRun) -> Started | None:
    """Once the run ahead has read its input (bronze gained its commit: its Kafka end offsets were
    read before) or ended, produce the next run's events and start it. It waits on the lab's batch
    lock (orchestration.launch) until the run ahead ends, so it reads exactly those events, and its
    cold start (imports, ~10 s) overlaps the run ahead."""
    bronze = lab.log_dir(lake.BRONZE)
    while running() and last_commit(bronze) == bronze_before and not lab.stopping.is_set():
        time.sleep(0.05)
    if lab.stopping.is_set():
        return None
    if nxt.events:
        produce(lab, nxt.events)
    proc = spawn_cli(nxt.settings, ["batch"], nxt.log_name)
    lab.procs.append(proc)
    return Started(proc, lab.now())


def next_runs(lab: Lab, trials: list[Trial], parts: list[list[Event]]) -> list[NextRun]:
    """One per trial (with the stall fault for a kill inside the promotion), then the clean run at full size."""
    runs = [NextRun(lab.settings.model_copy(update={"faults": {"batch": STALL_IN_COMMIT}}) if t.phase == PROMOTION else lab.settings,
                    f"{NAME}-{t.index}.log", events) for t, events in zip(trials, parts[1:])]
    return runs + ([NextRun(lab.settings, f"{NAME}-clean.log", [])] if lab.ctx.size == "full" else [])


def run_trial(lab: Lab, trial: Trial, started: Started, ahead: Handover, pool: ThreadPoolExecutor, nxt: NextRun | None,
              rng: random.Random) -> tuple[Future | None, Handover]:
    """Kill this trial's run in its phase; start the run after it as soon as this one read its input."""
    proc = started.proc
    trial.pid, trial.spawned_s, trial.window_s, trial.commits_before = proc.pid, started.spawned_s, ahead.at_s, ahead.commits
    log_name = f"{NAME}-{trial.index}.log"
    lab.ctx.say(f"trial {trial.index}: `lklab batch` (pid {proc.pid}) runs on the next events; kill -9 {trial.phase}")
    upcoming = pool.submit(start_when_read, lab, lambda: proc.poll() is None, ahead.commits["bronze"], nxt) if nxt else None
    in_transaction = False
    try:
        if trial.phase == PROMOTION:
            trial.point = f"inside the promotion transaction (stall_in_commit holds it {STALL_S:g}s after its writes)"
            killed = kill_in_stall(lab.settings, proc, "batch", log_name, PHASE_TIMEOUT_S, clock=lab.now)
            trial.killed_s, trial.returncode, in_transaction = killed["t"], killed["returncode"], killed["in_transaction"]
        else:
            KILLERS[trial.phase](lab, proc, trial, ahead.since, rng, lab.settings.logs_dir / log_name)
            trial.killed_s, trial.returncode = lab.now(), kill_group(proc)
    except KillMissed as missed:
        trial.missed, trial.returncode = str(missed), kill_group(proc)
    after = handover(lab)  # before the next run can write: it needs its JVM first
    trial.commits_at_kill = after.commits
    trial.uncommitted_at_kill = {name: len(files - ahead.uncommitted[name]) for name, files in after.uncommitted.items()}
    time.sleep(SETTLE_S)
    trial.dagster_runs = [r for r in lab.dagster_runs(ahead.since) if r["created"] <= after.since.timestamp()]
    trial.landed, trial.landing = landed(trial, in_transaction)
    trial.lease_after_kill = lease_of(lab, trial)
    trial.lake = lake_state(lab)
    trial.finished_s = lab.now()
    lab.ctx.say(f"trial {trial.index}: killed at {trial.killed_s}s ({trial.landing}); lake "
                f"{'readable' if trial.lake['readable'] else 'NOT READABLE'}; killed run's lease: {trial.lease_after_kill}")
    return upcoming, after


def landed(trial: Trial, in_transaction: bool) -> tuple[bool, str]:
    """Did the kill land in its phase? From what the run left: Dagster's records of the killed
    process's runs (a killed run stays STARTED), the Delta commits at the kill and the data files
    it had written that no commit names."""
    if trial.missed is not None or trial.returncode != -signal.SIGKILL:
        return False, trial.missed or f"not killed (exit code {trial.returncode})"
    jobs = {r["job"]: r["status"] for r in trial.dagster_runs}
    before, at, written = trial.commits_before, trial.commits_at_kill, trial.uncommitted_at_kill
    golds = sum(1 for name in before if name.startswith("gold/"))
    if trial.phase == BRONZE:
        bronze = ("after bronze's commit" if at["bronze"] > before["bronze"]
                  else f"{written['bronze']} bronze data files written, not committed")
        ok = jobs.get("ingest") == "STARTED" and "lambda_batch" not in jobs
        return ok, f"ingest run {jobs.get('ingest')}, batch run not started: {'lambda_batch' not in jobs}; {bronze}"
    batch = jobs.get("lambda_batch")
    silver, gold = at["silver"] > before["silver"], gained(before, at, "gold/")
    if trial.phase == SILVER_GOLD:
        ok = batch == "STARTED" and (silver or written["silver"] > 0) and gold < golds
        return ok, (f"batch run {batch}; silver committed: {silver} ({written['silver']} data files not committed); "
                    f"gold commits {gold} of {golds}")
    ok = batch == "STARTED" and in_transaction and gold == golds
    return ok, f"batch run {batch}; inside the promotion transaction: {in_transaction}; gold commits {gold} of {golds}"


def lease_of(lab: Lab, trial: Trial) -> str | None:
    """The killed batch run's batch_runs row: its status and why (None: it took no lease)."""
    run_ids = [r["run_id"] for r in trial.dagster_runs if r["job"] == "lambda_batch"]
    if not run_ids:
        return None
    with lab.engine.connect() as conn:
        row = conn.execute(select(batch_runs.c.status, batch_runs.c.reason).where(batch_runs.c.run_id == run_ids[0])).first()
    return None if row is None else f"{row.status}" + (f" ({row.reason})" if row.reason else "")


# ---- the lake after a kill --------------------------------------------------------------------------

def lake_state(lab: Lab) -> dict[str, Any]:
    """Every table read with Spark at its latest snapshot: that snapshot is the last commit on
    disk, its rows are whole (bronze: each offset once, no gaps; silver: one row per event_id;
    gold: one row per window), and it reads none of the data files no commit ever added (a killed
    write's), which are counted."""
    tables = {name: table_state(lab, name, table) for name, table in lab.tables().items()}
    return {"readable": all(t["ok"] for t in tables.values()), "tables": tables}


def unique_key(name: str) -> list[str]:
    if name == "bronze":
        return ["topic", "partition", "offset"]
    if name == "silver":
        return ["event_id"]
    return [views.VIEWS[name.removeprefix("gold/")].entity, "window_start"]


def table_state(lab: Lab, name: str, table: str) -> dict[str, Any]:
    from pyspark.sql import functions as F

    location = lake.path(lab.settings, table)
    on_disk = last_commit(lab.log_dir(table))
    try:
        version = lake.delta_version(lab.spark, location)
        frame = lab.spark.read.format("delta").load(location)
        key = unique_key(name)
        if name == "bronze":  # per partition: count, distinct offsets, and the span they cover
            parts = frame.groupBy("topic", "partition").agg(F.count("*").alias("n"), F.countDistinct("offset").alias("d"),
                                                            (F.max("offset") - F.min("offset") + 1).alias("span")).collect()
            rows, duplicates, gaps = sum(p.n for p in parts), sum(p.n - p.d for p in parts), sum(p.span - p.d for p in parts)
        else:
            counted = frame.agg(F.count("*").alias("n"), F.countDistinct(*key).alias("d")).first()
            rows, duplicates, gaps = counted.n, counted.n - counted.d, 0
        root = Path(location).resolve()
        read = {str(Path(unquote(urlparse(f).path)).resolve().relative_to(root)) for f in frame.inputFiles()}
    except Exception as exc:  # unreadable is the finding
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}", "last_commit": on_disk}
    orphans = uncommitted_files(Path(location))
    return {"ok": version == on_disk and duplicates == 0 and gaps == 0 and not read & orphans, "last_commit": on_disk,
            "read_version": version, "rows": rows, "duplicates": duplicates, "gaps": gaps, "uncommitted_files": len(orphans),
            "uncommitted_files_read": len(read & orphans)}


def uncommitted_files(location: Path) -> set[str]:
    """Data files in the table's directory that no commit in its _delta_log ever added: what a
    write killed before its commit leaves (never read; nothing in lklab vacuums them)."""
    import json

    added: set[str] = set()
    for commit in (location / "_delta_log").glob("*.json"):
        for line in commit.read_text().splitlines():
            action = json.loads(line) if line.strip() else {}
            if "add" in action:
                added.add(unquote(action["add"]["path"]))
    return data_files(location) - added


def data_files(location: Path) -> set[str]:
    """A Delta table's data files on disk (relative paths), its log's checkpoints aside."""
    return {str(p.relative_to(location)) for p in location.rglob("*.parquet") if "_delta_log" not in p.parts}


# ---- set-up, the clean run, the figures --------------------------------------------------------------

def produce(lab: Lab, events: list[Event]) -> None:
    report = produce_events(lab.settings, events)
    if report.dead_lettered:
        raise ChaosError(f"{report.dead_lettered} generated events were dead-lettered on produce")


def previous_build(lab: Lab, events: list[Event]) -> tuple[str, Handover]:
    """Build and promote the first slice in this process: the previous build."""
    produce(lab, events)
    outcome = run_batch(lab.settings)
    ended = handover(lab)
    if not outcome.success:
        raise ChaosError(f"the first batch run did not promote: {outcome.message}")
    with lab.engine.connect() as conn:
        return current_build(conn).build_id, ended


def baseline(lab: Lab, events: list[Event]) -> dict[str, dict]:
    """The previous build's answer per view, which must be the oracle of the events it consumed
    (ChaosError otherwise: there would be no baseline to hold the reads to)."""
    served = {view: served_rows(lab, view) for view in lab.views}
    for view in lab.views:
        diff = oracle.compare(served[view], oracle.for_view(view, events))
        if not diff.equal:
            raise ChaosError(f"the first build's {view} is not the oracle of the events it consumed: {diff}")
    return served


def served_rows(lab: Lab, view: str) -> dict:
    return {(r.entity, r.window_start): r.value for r in merge.query(lab.engine, view, health=NO_SPEED).rows}


def clean_run(lab: Lab, upcoming: Future | None, ahead: Handover) -> dict[str, Any]:
    """The next run after the kills, with no fault and no new event: at full size the `lklab batch`
    process started during the last trial, at small size the same run_batch in this process (its
    JVM warm)."""
    lab.ctx.say(f"the clean run ({'a `lklab batch` process' if upcoming else 'run_batch in this process'})")
    if upcoming is not None:
        started: Started = upcoming.result()
        try:
            code = started.proc.wait(FINAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_group(started.proc)
            raise ChaosError(f"the clean `lklab batch` did not finish within {FINAL_TIMEOUT_S:.0f}s") from None
        ok, message = code == 0, log_tail(lab.settings.logs_dir / f"{NAME}-clean.log", 1)
    else:
        outcome = run_batch(lab.settings)
        ok, message = outcome.success, outcome.message
    return {"how": "lklab batch process" if upcoming else "run_batch in the check's process", "started_s": ahead.at_s,
            "seconds": round(lab.now() - ahead.at_s, 1), "succeeded": ok, "message": message}


def whole_builds(lab: Lab) -> dict[str, dict[str, dict]]:
    """Every recorded build's complete rows per view, read from the store after the fact: what a
    read naming that build must have shown, all of it."""
    with lab.engine.connect() as conn:
        builds = list(conn.execute(select(batch_builds.c.build_id)).scalars())
        return {build: {view: {(r[0], r[1]): views.view(view).measure.value(r)
                               for r in conn.execute(views.view(view).measure.batch_query(views.view(view), build, None))}
                        for view in lab.views}
                for build in builds}


def figures(lab: Lab, planned: list[str], trials: list[Trial], reader: Reader, previous: tuple[str, dict],
            final: dict[str, Any], truth: list[Event]) -> tuple[list[Figure], dict[str, Any]]:
    previous_id, previous_rows = previous
    builds = whole_builds(lab)
    partial = [r for r in reader.reads if r.build_id not in builds or reader.rows(r) != builds[r.build_id][r.view]]
    # from the moment the first killed run could start to the end of the last kill's settle and lake read
    during = [r for r in reader.reads if trials[0].window_s <= r.t <= trials[-1].finished_s]
    not_previous = [r for r in during if r.build_id != previous_id or reader.rows(r) != previous_rows[r.view]]
    for i, trial in enumerate(trials):
        end = trials[i + 1].window_s if i + 1 < len(trials) else trial.finished_s
        mine = [r for r in during if trial.window_s <= r.t <= end]
        trial.reads, trial.not_previous = len(mine), sum(r in not_previous for r in mine)
        trial.reads_after_kill = sum(trial.killed_s is not None and trial.killed_s <= r.t <= trial.killed_s + AFTER_KILL_S
                                     for r in reader.reads)
    comparisons = {view: oracle.compare(served_rows(lab, view), oracle.for_view(view, truth)) for view in lab.views}
    with lab.engine.connect() as conn:
        served = current_build(conn)
        holding = conn.execute(select(batch_runs.c.run_id).where(batch_runs.c.status == RUNNING)).scalars().all()
    converged = final["succeeded"] and served is not None and served.build_id != previous_id and all(c.equal for c in comparisons.values())
    enough = all(t.reads_after_kill >= MIN_READS_AFTER_KILL for t in trials)
    result = [
        equal("kills landed in their phase", sum(t.landed for t in trials), len(planned), unit="kills"),
        zero("reads that saw a partial or mixed build", len(partial), "reads"),
        zero("reads that saw anything but the previous build during a killed run", len(not_previous), "reads"),
        holds("next run equals the oracle", converged, convergence_detail(converged, final, comparisons)),
        holds("Delta tables readable at their last commit after every kill", all(t.lake.get("readable") for t in trials),
              lake_detail(trials)),
        zero("killed runs still holding a lease after the next run", len(holding), "runs"),
        Figure(name="concurrent reads made", value=len(reader.reads), unit="reads",
               bound=f"≥ {MIN_READS_AFTER_KILL} in the {AFTER_KILL_S:g} s after each kill", ok=enough),
    ]
    evidence = {"partial_reads": [asdict(r) for r in partial[:10]], "not_previous_reads": [asdict(r) for r in not_previous[:10]],
                "final_build": served.build_id if served else None,
                "oracle": {v: str(c) for v, c in comparisons.items()}}
    return result, evidence


def convergence_detail(converged: bool, final: dict[str, Any], comparisons: dict[str, oracle.Comparison]) -> str:
    if converged:
        return f"yes: {len(comparisons)} views, {sum(c.rows_expected for c in comparisons.values())} rows exact"
    ran = "" if final["succeeded"] else f"the clean run failed ({final['message']}); "
    return "no: " + ran + "; ".join(f"{view}: {c}" for view, c in comparisons.items())


def lake_detail(trials: list[Trial]) -> str:
    bad = [f"trial {t.index}: {name}" for t in trials for name, table in t.lake.get("tables", {}).items() if not table["ok"]]
    if bad:
        return "no: " + ", ".join(bad)
    orphans = sum(table.get("uncommitted_files", 0) for t in trials[-1:] for table in t.lake["tables"].values())
    return f"yes: {len(trials)} × {len(trials[0].lake['tables'])} tables; {orphans} uncommitted data files left on disk"


def note_takeovers(lab: Lab, trials: list[Trial]) -> None:
    for trial in trials:
        trial.lease_after_next_run = lease_of(lab, trial)


# ---- the check ----------------------------------------------------------------------------------------

def run_batch_crashes(ctx: ChaosContext) -> CheckResult:
    # a run started early waits for the batch lock while the run ahead finishes: up to batch_wait_s
    settings = ctx.settings.model_copy(update={"batch_views": BATCH_VIEWS[ctx.size], "batch_lease_timeout_s": LEASE_TIMEOUT_S,
                                               "batch_wait_s": PHASE_TIMEOUT_S})
    settings.home.mkdir(parents=True, exist_ok=True)
    from lklab.lake.spark import get_spark

    lab = Lab(ctx, settings, make_engine(settings), ctx.spark or get_spark(settings), list(BATCH_VIEWS[ctx.size]))
    rng = random.Random(ctx.seed)  # the phases, their order and the points inside them
    planned = plan(ctx.size, rng)
    workload: Workload = generate(GeneratorConfig(seed=ctx.seed, start=START, late_fraction=LATE_FRACTION, **WORKLOADS[ctx.size]))
    parts = slices(workload.deliveries, len(planned))
    write_ledger(lab.engine, workload.truth)  # the payments system's record: the ledger gate reconciles gold against it
    ctx.say(f"{len(workload.deliveries)} events in {len(parts)} slices; the previous build: {len(parts[0])} events, "
            f"views {', '.join(lab.views)}; kills planned: {', '.join(planned)}")
    trials = [Trial(i + 1, phase) for i, phase in enumerate(planned)]
    nexts = next_runs(lab, trials, parts)
    with ExitStack() as cleanup:  # an error must not leave a `lklab batch` running (the callbacks run last first)
        cleanup.callback(lab.kill_all)  # one started while the pool shut down
        pool = cleanup.enter_context(ThreadPoolExecutor(1, thread_name_prefix=f"{NAME}-next"))
        cleanup.callback(lab.stop)
        setup_done = threading.Event()
        upcoming = pool.submit(start_when_read, lab, lambda: not setup_done.is_set(), lab.last_commits()["bronze"], nexts[0])
        try:
            previous_id, ahead = previous_build(lab, parts[0])
        finally:
            setup_done.set()
        previous = previous_id, baseline(lab, parts[0])
        ctx.say(f"previous build {previous_id} promoted and equal to the oracle of its events")
        with Reader(lab) as reader:
            for i, trial in enumerate(trials):
                nxt = nexts[i + 1] if i + 1 < len(nexts) else None
                upcoming, ahead = run_trial(lab, trial, upcoming.result(), ahead, pool, nxt, rng)
            final = clean_run(lab, upcoming, ahead)
            time.sleep(SETTLE_S)
    note_takeovers(lab, trials)
    result, evidence = figures(lab, planned, trials, reader, previous, final, workload.truth)
    ctx.say(f"clean run: {final['message']}; {len(reader.reads)} reads")
    return ctx.result(
        fault=f"kill -9 of `lklab batch` (its process group) {len(planned)}× while it runs: " + ", ".join(planned),
        trials=len(trials), figures=result,
        evidence={"previous_build": previous[0], "events": len(workload.deliveries), "slices": [len(p) for p in parts],
                  "views": lab.views, "lease_timeout_s": LEASE_TIMEOUT_S, "stall_fault": {"name": STALL_IN_COMMIT, "stall_s": STALL_S,
                  "used_for": PROMOTION}, "trials": [asdict(t) for t in trials], "clean_run": final, **evidence})


PROMISE = ("Delta Lake: a write is visible only once its commit file lands in _delta_log, atomically (put-if-absent of the "
           "next version); readers read one snapshot, so a writer killed before its commit leaves only data files no commit "
           "names, never read, which VACUUM removes after the retention period (7 days by default). Spark's file output "
           "committers give plain Parquet output the same all-or-nothing job commit (FileOutputCommitter v1; v2 can leave a "
           "killed job's partial output visible). A relational serving store's transaction is all or nothing.")
SCOPE = ("lklab promotes a batch build in one serving-store transaction (the build record, its rows, the batch alias swap and "
         "the publish log: lklab.lambda_arch.builds.promote), so a kill before it commits leaves the previous build served, "
         "whole. The run's batch_runs row is marked promoted in a second transaction: a kill between the two leaves a "
         "promoted build whose run reads as failed once its lease is taken over. A killed run's Delta writes stay: its "
         "silver and gold commits are table versions no promoted build records (whoever reads the lake directly sees them "
         "until the next run overwrites those date partitions), and the data files of a write killed before its commit "
         "are never read; lklab vacuums neither. Its lease stays 'running' until batch_lease_timeout_s (1 h by default; "
         "this check sets 15 s), then the next run on those dates takes it over; until then `lklab batch` waits for it "
         "(up to batch_wait_s). The next run rebuilds every date bronze holds records of that no promoted build consumed, "
         "so it converges with no new event.")

register(Check(name=NAME, title="a batch build killed at any point never exposes a partial promotion; the previous build stays "
               "served; the next run converges to the oracle", promise=PROMISE, scope=SCOPE, run=run_batch_crashes))
