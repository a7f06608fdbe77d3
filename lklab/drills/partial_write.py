"""`partial-write`: a node dies mid-write. Real kill -9s while readers poll both architectures:
a `lklab batch` in the middle of its promotion, the published Kappa job again and again (its
checkpoints), and a `lklab cutover` in the middle of its alias swap. The batch promotion and the
swap are made to hang inside their transaction by the registry's stall_in_commit fault
(lklab.views.faults), so the kill lands there every run. Every read during each kill window is
counted: empty, errors, and mixed (an answer that is no one build's or version's whole state).
Then the served output is corrupted (a third of its rows deleted, as a half-applied write leaves
it) and rebuilt both ways: Lambda by re-promoting the gold tables, Kappa by a full replay into a
new version and by snapshot plus replay, each cut over atomically; time, events reprocessed and
operator steps are recorded, and each rebuilt answer is checked against the oracle."""
from __future__ import annotations

import dataclasses
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import and_, delete, select

from lklab import views
from lklab.core import oracle, processes
from lklab.core.config import Settings
from lklab.drills.kill import kill_in_stall, spawn_cli
from lklab.drills.lab import LiveLab, Supervised
from lklab.core.http import get_json
from lklab.drills.readers import RawRead, view_path
from lklab.drills.registry import Drill, DrillContext, DrillError, register
from lklab.drills.result import KAPPA, LAMBDA, DrillResult, Fault
from lklab.drills.scoring import PrefixOracle, distance, matches_some_position, parse_rows
from lklab.drills.stream import StreamShape
from lklab.hybrid.refresh import refresh
from lklab.kappa import hydration, jobs
from lklab.kappa.freshness import WORKER_MARKER, running_pid
from lklab.kappa.names import output_name
from lklab.kappa.query import published
from lklab.kappa.records import build_record
from lklab.lambda_arch.builds import current_build
from lklab.lambda_arch.promote import publish_batch
from lklab.serving.store import batch_builds, batch_runs, batch_view_rows, speed_view_rows
from lklab.views.faults import STALL_IN_COMMIT, STALL_S

VIEW = "revenue_per_minute"
SHAPES = {"small": StreamShape(backlog_min=20, live_min=12, rides_per_minute=20, speedup=20),
          "default": StreamShape(backlog_min=120, live_min=24, rides_per_minute=60, speedup=20)}
KAPPA_KILLS = {"small": 4, "default": 6}
SETTLE_S = 3.0  # a kill window ends this long after the kill (or the restart it caused)
LAG_ALLOWANCE_S = 20.0  # a Kappa answer may be this far behind the kill window's start and still be whole
CORRUPT_EVERY = 3  # every third row of a served output is deleted
QUESTION = ("Your serving DB has partial writes due to a node failure: some partitions updated, others not. Which "
            "architecture makes it easier to rebuild the serving store, and how do you ensure consumers never see "
            "partial rebuild results?")


@dataclass
class KillWindow:
    """One kill and the reads made around it."""

    name: str
    target: str  # what was killed
    start: float
    end: float = 0.0
    kills: list[dict[str, Any]] = field(default_factory=list)  # {t, pid, killed, how}
    allowed_versions: tuple[str, ...] = ()
    after: str | None = None  # what the kill left: the alias target, the batch run's state
    reads: dict[str, dict[str, int]] = field(default_factory=dict)


def run_partial_write(ctx: DrillContext) -> DrillResult:
    shape = SHAPES[ctx.size]
    started = datetime.now(timezone.utc)
    with LiveLab(ctx, VIEW, shape) as lab:
        v1, v2 = output_name(VIEW, 1), output_name(VIEW, 2)
        fault = Fault(name="partial-write", description="kill -9 mid-promotion, mid-checkpoint and mid-cutover; then a "
                                                        "third of each served output's rows deleted and rebuilt")
        time.sleep(shape.live_wall_s * 0.15)
        # early in the live section, so that a snapshot + replay has a tail of the stream to replay
        lab.act(KAPPA, "hybrid: daily snapshot of the published version (before the failure)", by="harness")
        snap = refresh(lab.settings, lab.engine, VIEW, spark=ctx.spark).snapshot
        fault.start_s = lab.now()
        # under the live stream: v2 replays and the killed cutover runs while v1's job is killed
        # again and again (a fresh `lklab cutover` takes half a minute to reach its swap)
        with ThreadPoolExecutor(1, thread_name_prefix="drill-cutover") as background:
            swapping = background.submit(kill_cutover, lab, (v1, v2))
            checkpoint = kill_checkpoints(lab, KAPPA_KILLS[ctx.size], (v1,))
            swap = swapping.result()
        lab.wait_kappa_caught_up(1)
        lab.wait_stream()
        # after the stream: the killed run's gold must hold the whole log, or re-promoting gold
        # (the Lambda rebuild below) could not equal the oracle
        promotion = kill_promotion(lab)
        windows = [checkpoint, promotion, swap]
        builds = served_builds(lab)
        count_reads(lab, windows, builds)
        rebuilds = [rebuild_lambda(lab), rebuild_kappa_replay(lab, 3), rebuild_kappa_snapshot(lab, 4, snap.snapshot_id, snap.offsets)]
        fault.end_s = lab.now()
        lab.settle(2)
        lab.finish()
        runs = [lab.arch_run(LAMBDA, "Lambda (speed + batch; rebuilt from gold)", fault, arch_evidence(windows, rebuilds, LAMBDA),
                             events_reprocessed=rebuilds[0]["events_reprocessed"]),
                lab.arch_run(KAPPA, "Kappa (live job; rebuilt by replay and by snapshot + replay)", fault,
                             arch_evidence(windows, rebuilds, KAPPA), events_reprocessed=rebuilds[1]["events_reprocessed"])]
        evidence = {"kill_windows": [dataclasses.asdict(w) for w in windows], "rebuilds": rebuilds,
                    "snapshot": {"id": snap.snapshot_id, "offsets": snap.offsets, "source": snap.source_output},
                    "stall_fault": {"name": STALL_IN_COMMIT, "layers": ["batch", "cutover"], "stall_s": STALL_S}}
        return lab.result("partial-write", QUESTION, fault, runs, started, evidence=evidence, lessons=lessons(windows, rebuilds))


# ---- the kills ---------------------------------------------------------------------------------

def kill_promotion(lab: LiveLab) -> KillWindow:
    window = KillWindow("batch promotion", "`lklab batch` (its promote transaction)", lab.now())
    lab.act(LAMBDA, "`lklab batch` starts; kill -9 while it promotes (stall_in_commit holds the transaction)", by="harness")
    faulty = lab.settings.model_copy(update={"faults": {"batch": STALL_IN_COMMIT}})
    proc = spawn_cli(faulty, ["batch"], "partial-write-batch.log")
    window.kills.append(kill_in_stall(lab.settings, proc, "batch", "partial-write-batch.log", clock=lab.now))
    time.sleep(SETTLE_S)
    with lab.engine.connect() as conn:
        lease = conn.execute(select(batch_runs.c.status).order_by(batch_runs.c.started_at.desc()).limit(1)).scalar()
        build = current_build(conn)
    window.after = f"batch alias still on {build.build_id if build else None}; the killed run's lease row: {lease}"
    window.end = lab.now()
    return window


def kill_checkpoints(lab: LiveLab, kills: int, allowed: tuple[str, ...]) -> KillWindow:
    """SIGKILL the published job again and again, each time soon after the supervisor restarted
    it (it folds and checkpoints every kappa_checkpoint_interval_s)."""
    output = output_name(VIEW, 1)
    window = KillWindow("Kappa checkpoints", f"{output}'s live job, {kills} times", lab.now(), allowed_versions=allowed)
    lab.act(KAPPA, f"kill -9 {output}'s job {kills} times (the supervisor restarts it)", by="harness")
    seen: set[int] = set()
    for _ in range(kills):
        pid = wait_new_pid(lab, output, seen, 60.0)
        seen.add(pid)
        time.sleep(0.8)  # it resumed from its last checkpoint and is writing the next ones
        t = lab.now()
        os.kill(pid, signal.SIGKILL)
        window.kills.append({"t": t, "pid": pid, "killed": wait_gone(pid, 10.0), "how": "SIGKILL"})
    wait_new_pid(lab, output, seen, 60.0)
    time.sleep(SETTLE_S)
    window.after = f"{lab.kappa.restarts} restarts by the supervisor"
    window.end = lab.now()
    return window


def wait_new_pid(lab: LiveLab, output: str, seen: set[int], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while (pid := running_pid(lab.settings, output)) is None or pid in seen:
        if time.monotonic() > deadline:
            raise DrillError(f"{output} was not restarted within {timeout_s:.0f}s")
        time.sleep(0.1)
    return pid


def wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while processes.alive(pid, WORKER_MARKER):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def new_job(lab: LiveLab, version: int, snapshot: str | None = None) -> Supervised:
    """A new version's live job under the supervisor; from `snapshot` on its first start (a
    restart resumes from its own checkpoints)."""
    job = lab.kappa_job(version, lab.settings)
    first = [snapshot]

    def start(settings: Settings) -> int:
        snap, first[0] = first[0], None
        return jobs.start(settings, VIEW, version, snapshot=snap)

    added = lab.supervisor.add(dataclasses.replace(job, start=start, deploying=True))  # a first start, not a crash
    wait_new_pid(lab, job.name, set(), 180.0)
    return added


def kill_cutover(lab: LiveLab, allowed: tuple[str, ...]) -> KillWindow:
    v2 = output_name(VIEW, 2)
    lab.act(KAPPA, f"start {v2} (replay from earliest) and wait until it is hydrated", by="harness")
    candidate = new_job(lab, 2)
    hydration.wait_until_hydrated(lab.settings, lab.engine, VIEW, 2, timeout_s=180)
    window = KillWindow("cutover", f"`lklab cutover {VIEW} --to 2` (its alias swap)", lab.now(), allowed_versions=allowed)
    lab.act(KAPPA, f"`lklab cutover {VIEW} --to 2`; kill -9 inside the swap (stall_in_commit)", by="harness")
    faulty = lab.settings.model_copy(update={"faults": {"cutover": STALL_IN_COMMIT}})
    proc = spawn_cli(faulty, ["cutover", VIEW, "--to", "2", "--tolerance-pct", "100", "--why", "drill: killed mid-swap"],
                     "partial-write-cutover.log")
    window.kills.append(kill_in_stall(lab.settings, proc, "cutover", "partial-write-cutover.log", clock=lab.now))
    time.sleep(SETTLE_S)
    with lab.engine.connect() as conn:
        window.after = published(conn, VIEW)
    window.end = lab.now()
    candidate.wanted = False
    candidate.stop(candidate.settings)
    return window


# ---- counting the reads ----------------------------------------------------------------------------

def served_builds(lab: LiveLab) -> dict[str, tuple[datetime | None, dict]]:
    """Every recorded batch build's T and rows of the view, read before anything is corrupted."""
    b = batch_view_rows.c
    with lab.engine.connect() as conn:
        finals = dict(conn.execute(select(batch_builds.c.build_id, batch_builds.c.final_through)).all())
        rows: dict[str, dict] = {build: {} for build in finals}
        for build, entity, window, value in conn.execute(select(b.build_id, b.entity, b.window_start, b.value).where(b.view == VIEW)):
            rows.setdefault(build, {})[(entity, window)] = value
    return {build: (finals.get(build), found) for build, found in rows.items()}


def lambda_mixed(body: dict[str, Any], builds: dict[str, tuple[datetime | None, dict]]) -> bool:
    """Mixed: the answer's batch rows are not exactly the rows of the one build it names that are
    final at its T (every row of it, batch-only)."""
    if body.get("build_id") not in builds:
        return True
    final_through, rows = builds[body["build_id"]]
    width = timedelta(seconds=views.view(VIEW).window_s)
    expected = rows if body.get("mode") == "batch-only" else {k: v for k, v in rows.items()
                                                              if final_through is not None and k[1] <= final_through - width}
    served = parse_rows(VIEW, [r for r in body.get("rows", []) if r.get("source") == "batch"])
    return served != expected


def count_reads(lab: LiveLab, windows: list[KillWindow], builds: dict) -> None:
    """Per window and architecture: reads, empty (200, no rows), errors (non-200), mixed."""
    timeline = lab.stream.timeline
    for window in windows:
        prefix = PrefixOracle(VIEW, timeline.events)
        for arch in (LAMBDA, KAPPA):
            reads = [r for r in lab.readers[arch].reads if window.start <= r.t <= window.end]
            answered = [r for r in reads if r.status == 200]
            mixed = [r for r in answered if (lambda_mixed(r.body, builds) if arch == LAMBDA
                                              else kappa_mixed(r, window, timeline, prefix, lab.grace_s))]
            window.reads[arch] = {"reads": len(reads), "empty": sum(not r.body.get("rows") for r in answered),
                                  "errors": len(reads) - len(answered), "mixed": len(mixed),
                                  "sources": sorted({str(r.body.get("build_id" if arch == LAMBDA else "version")) for r in answered})}


def kappa_mixed(read: RawRead, window: KillWindow, timeline, prefix: PrefixOracle, grace_s: float) -> bool:
    """Mixed: the answer names a version other than those the window allows, or its rows equal the
    oracle at no log position since shortly before the window (not one checkpoint's whole state)."""
    allowed = window.allowed_versions or (output_name(VIEW, 1),)
    if read.body.get("version") not in allowed:
        return True
    return not matches_some_position(VIEW, read.body.get("rows", []), timeline, window.start - LAG_ALLOWANCE_S, read.answered_t,
                                     grace_s, prefix)


# ---- corrupting and rebuilding ---------------------------------------------------------------------

def corrupt(lab: LiveLab, table, where) -> int:
    """Delete every CORRUPT_EVERY-th row matching `where`: what a half-applied write leaves."""
    c = table.c
    with lab.engine.begin() as conn:
        keys = conn.execute(select(c.entity, c.window_start).where(where).order_by(c.entity, c.window_start)).all()
        doomed = keys[::CORRUPT_EVERY]
        for entity, window in doomed:
            conn.execute(delete(table).where(where, c.entity == entity, c.window_start == window))
    return len(doomed)


def final_oracle(lab: LiveLab) -> dict:
    return oracle.for_view(VIEW, lab.stream.timeline.events)


def check_answer(lab: LiveLab, arch: str, expected_source: str, timeout_s: float = 20.0) -> dict[str, Any]:
    """Poll the API until the answer names `expected_source` and equals the oracle over the whole
    log (the stream has ended), or the timeout; the last answer's distance is recorded."""
    expected, key = final_oracle(lab), "build_id" if arch == LAMBDA else "version"
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = get_json(lab.api.url + view_path(arch, VIEW))
        error, wrong, windows = distance(parse_rows(VIEW, body.get("rows", [])), expected) if status == 200 else (-1, -1, 0)
        if (status == 200 and body.get(key) == expected_source and error == 0) or time.monotonic() > deadline:
            return {"equals_oracle": status == 200 and error == 0 and body.get(key) == expected_source, "status": status,
                    "served": body.get(key), "error": error, "wrong_windows": wrong, "windows": windows}
        time.sleep(0.5)


def visible_before(lab: LiveLab, arch: str, source: str, until: float) -> int:
    """Reads that named the rebuilding build/version before it was published (a partial rebuild seen)."""
    key = "build_id" if arch == LAMBDA else "version"
    return sum(r.t < until and r.body.get(key) == source for r in lab.readers[arch].reads)


def rebuild_lambda(lab: LiveLab) -> dict[str, Any]:
    with lab.engine.connect() as conn:
        served = current_build(conn).build_id
    b = batch_view_rows.c
    deleted = corrupt(lab, batch_view_rows, and_(b.build_id == served, b.view == VIEW))
    lab.act(LAMBDA, f"(failure) {deleted} rows of build {served} lost", by="harness")
    time.sleep(2)
    t0 = lab.now()
    lab.act(LAMBDA, "re-promote the gold tables as a new build (one transaction, the alias moves with it)")
    build = publish_batch(lab.ctx.spark, lab.settings, lab.engine)
    t1 = lab.now()
    return {"arch": LAMBDA, "how": "re-promotion from the gold tables", "rows_deleted": deleted, "seconds": round(t1 - t0, 2),
            "events_reprocessed": 0, "rows_reloaded": build.row_counts.get(VIEW), "steps": 1, "published": build.build_id,
            "seen_before_publish": visible_before(lab, LAMBDA, build.build_id, t1 - 0.5), **check_answer(lab, LAMBDA, build.build_id)}


def rebuild_kappa(lab: LiveLab, version: int, corrupted: str, how: str, snapshot: str | None, start_note: str) -> dict[str, Any]:
    output = output_name(VIEW, version)
    s = speed_view_rows.c
    deleted = corrupt(lab, speed_view_rows, s.view == corrupted)
    lab.act(KAPPA, f"(failure) {deleted} rows of {corrupted} lost", by="harness")
    time.sleep(2)
    t0 = lab.now()
    lab.act(KAPPA, f"start {output} {start_note}")
    new_job(lab, version, snapshot)
    lab.act(KAPPA, f"cut over to {output} once hydrated (validated, atomic alias swap)")
    lab.publish_kappa(version, f"drill: rebuild after a partial write ({how})")
    t1 = lab.now()
    record = build_record(lab.engine, output) or {}
    result = {"arch": KAPPA, "how": how, "rows_deleted": deleted, "seconds": round(t1 - t0, 2),
              "events_reprocessed": int(record.get("events") or 0), "steps": 2, "published": output,
              "seen_before_publish": visible_before(lab, KAPPA, output, t1 - 0.5), **check_answer(lab, KAPPA, output)}
    return result


def rebuild_kappa_replay(lab: LiveLab, version: int) -> dict[str, Any]:
    return rebuild_kappa(lab, version, output_name(VIEW, 1), "full replay into a new version + cutover", None,
                         "(replay from earliest, a new consumer group)")


def rebuild_kappa_snapshot(lab: LiveLab, version: int, snapshot_id: str, offsets: dict[int, int]) -> dict[str, Any]:
    result = rebuild_kappa(lab, version, output_name(VIEW, version - 1), "snapshot + replay of the tail + cutover", snapshot_id,
                           f"--from-snapshot {snapshot_id} (the daily snapshot)")
    result["snapshot_events"] = sum(offsets.values())
    return result


# ---- the result ----------------------------------------------------------------------------------

def arch_evidence(windows: list[KillWindow], rebuilds: list[dict], arch: str) -> dict[str, Any]:
    return {"kill_windows": {w.name: w.reads.get(arch, {}) for w in windows}, "rebuilds": [r for r in rebuilds if r["arch"] == arch]}


def lessons(windows: list[KillWindow], rebuilds: list[dict]) -> list[str]:
    lines = []
    for w in windows:
        counts = "; ".join(f"{arch}: {c['reads']} reads, {c['empty']} empty, {c['errors']} errors, {c['mixed']} mixed"
                           for arch, c in w.reads.items())
        lines.append(f"kill -9 of {w.target} ({len(w.kills)} kill(s); after: {w.after}): {counts}")
    for r in rebuilds:
        lines.append(f"{r['arch']} rebuild by {r['how']}: {r['seconds']} s, {r['events_reprocessed']} events reprocessed, "
                     f"{r['steps']} operator step(s), {'equals' if r['equals_oracle'] else 'DIFFERS FROM'} the oracle; "
                     f"{r['seen_before_publish']} reads saw it before it was published")
    return lines


register(Drill("partial-write", QUESTION, "kill -9 mid-promotion, mid-checkpoint and mid-cutover while readers poll; then "
               "corrupt the served outputs and rebuild them (Lambda from gold, Kappa by replay and by snapshot + replay)",
               run_partial_write))

