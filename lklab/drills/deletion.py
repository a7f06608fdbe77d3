"""`deletion`: a user asks to be forgotten while both architectures serve `user_sessions` live.

Riders' apps send their name and phone with their ride requests; `lklab produce` seals each
rider's PII with the rider's own data key. Midway through the live stream the operator runs
`lklab forget USER` (lklab.deletion.purge.forget): the key is destroyed, then the serving store,
the lake and the snapshots are purged, and every store is scanned. The user keeps riding: their
later events still arrive, with their PII. Then comes the proof that nothing resurrects them.
Lambda's batch layer rebuilds; Kappa replays the view from the earliest offset as a new version
and cuts over to it. Both go through their tombstone lists.

Measured per architecture:
- the seconds from the request until each tier that architecture keeps was unreadable: the
  log's ciphertext at the key's destruction, derived rows at their purge;
- the reads that still showed the user after the request, and when the last one was;
- the user's rows after the rebuild or the full replay, which must be 0.
Every read is also scored against the oracle, with the user forgotten from the request on."""
from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone
from typing import Any

from lklab.core.events import EventType
from lklab.deletion.purge import forget
from lklab.deletion.scan import Finding, scan
from lklab.drills.lab import LiveLab
from lklab.drills.registry import Drill, DrillContext, DrillError, register
from lklab.drills.result import KAPPA, LAMBDA, ArchRun, DrillResult, Fault
from lklab.drills.scoring import reader_seconds
from lklab.drills.stream import StreamShape
from lklab.kappa.names import output_name

VIEW = "user_sessions"
SHAPES = {"small": StreamShape(backlog_min=60, live_min=16, rides_per_minute=10, speedup=20),
          "default": StreamShape(backlog_min=6 * 60, live_min=40, rides_per_minute=30, speedup=20)}
USERS = {"small": 20, "default": 200}
BATCH_EVERY_S = {"small": None, "default": 30.0}
PII_FRACTION = 0.5  # of riders: their app sends their name and phone
FORGET_AT = 0.25  # of the live section's wall time: when the request is made
WHY = "drill: the rider asked to be forgotten (GDPR art. 17)"
# The tiers each architecture keeps the user in, and the step of `lklab forget` that makes each unreadable.
TIERS = {LAMBDA: ("kafka", "dead letters", "bronze", "silver", "gold", "serving (batch builds)"),
         KAPPA: ("kafka", "dead letters", "snapshots", "kappa outputs")}
STEP_OF = {"kafka": "key", "dead letters": "key", "bronze": "key", "silver": "key", "gold": "lake",
           "snapshots": "snapshots", "kappa outputs": "serving", "serving (batch builds)": "serving"}
QUESTION = ("You must delete a user's data within 7 days, but your event log is immutable and retained for 180 days. If you "
            "crypto-shred, how do you ensure projections and serving stores also purge derived PII?")


def run_deletion(ctx: DrillContext) -> DrillResult:
    shape = SHAPES[ctx.size]
    started = datetime.now(timezone.utc)
    # a sparse stream: each partition's watermark moves every few event-minutes, so staleness is judged
    # against 2 event-hours, as in the sessionization drill
    # the stream starts at 06:00 UTC so no session crosses midnight: Kappa's v1 logic (the seed's
    # midnight bug, the sessionization drill's fault) then answers like the fixed one, and the
    # reads measure the deletion, not that bug
    with LiveLab(ctx, VIEW, shape, speed_layer=False, batch_every_s=BATCH_EVERY_S[ctx.size], stale_wall_s=360,
                 workload_overrides={"users": USERS[ctx.size], "pii_fraction": PII_FRACTION},
                 workload_start=datetime(2026, 11, 30, 6, 0, tzinfo=timezone.utc)) as lab:
        user = pick_user(lab)
        time.sleep(shape.live_wall_s * FORGET_AT)  # readers see the user served by both first
        fault = Fault(name="deletion_request", description=f"`lklab forget {user}`: the rider asked to be forgotten; they keep "
                                                           "riding, their later ride requests still carry their PII")
        steps = request_deletion(lab, user, fault)
        lab.wait_stream()
        rebuilt = prove_no_resurrection(lab, user)
        lab.settle(3)
        lab.finish()
        final = {f.store: f for f in scan(lab.settings, lab.engine, user)}
        runs = [arch_run(lab, arch, user, fault, steps, rebuilt[arch], final) for arch in (LAMBDA, KAPPA)]
        evidence = {"user": user, "forget_steps_s": steps, "pii_dropped_at_the_edge": lab.stream.pii_dropped,
                    "riders_with_pii": len(lab.workload.riders), "final_scan": {s: _shown(f) for s, f in final.items()}}
        return lab.result("deletion", QUESTION, fault, runs, started, evidence=evidence, lessons=lessons(runs, evidence))


def pick_user(lab: LiveLab) -> str:
    """The rider with PII who requests most rides in the live section after the request is made,
    and rode in the backlog too: served by both before the request, still riding after it."""
    backlog, live = lab.stream.split()
    before = {e.user_id for e in backlog if e.user_id in lab.workload.riders and e.event_type is EventType.RIDE_REQUESTED}
    late = FORGET_AT * lab.shape.live_wall_s + 5.0  # the forget's own seconds: requests after it ends
    after = Counter(e.user_id for due, e in live
                    if due >= late and e.user_id in before and e.event_type is EventType.RIDE_REQUESTED)
    if not after:
        raise DrillError("no rider with PII rides both before and during the live stream: a larger size is needed")
    return after.most_common(1)[0][0]


def request_deletion(lab: LiveLab, user: str, fault: Fault) -> dict[str, float]:
    """`lklab forget USER` as the operator runs it (one request for the lab: both architectures share
    the log, the lake and the serving store); seconds from the request to the end of each step."""
    fault.start_s = lab.now()
    lab.forgotten = (fault.start_s, frozenset({user}))
    for arch in (LAMBDA, KAPPA):
        lab.act(arch, f"lklab forget {user} --why '{WHY}'")
    steps: dict[str, float] = {}
    _, _, done = forget(lab.settings, lab.engine, user, WHY, on_step=lambda name: steps.setdefault(name, round(lab.now() - fault.start_s, 3)))
    fault.end_s = lab.now()
    for arch in (LAMBDA, KAPPA):
        dirty = [f.store for f in done.findings if f.store in TIERS[arch] and not f.clean]
        lab.monitor.note(arch, "scan", f"forget's scan: {'nothing readable' if not dirty else 'still readable in ' + ', '.join(dirty)}")
    return steps


def prove_no_resurrection(lab: LiveLab, user: str) -> dict[str, dict[str, Any]]:
    """Lambda rebuilds from the lake; Kappa replays the whole log into a new version and cuts over.
    The user's rows in each architecture's tiers afterwards."""
    lab.act(LAMBDA, "batch run after the request (rebuilds the touched dates from bronze through the tombstone list)")
    promoted = lab.batch()
    lab.act(KAPPA, f"replay {VIEW} from the earliest offset as {output_name(VIEW, 2)} (new consumer group), cut over")
    lab.start_job(2, lab.settings)
    result = lab.publish_kappa(2, "drill: a full replay after a deletion request")
    found = {f.store: f for f in scan(lab.settings, lab.engine, user)}
    return {LAMBDA: {"batch_promoted": promoted, "rows": {s: found[s].readable for s in ("gold", "serving (batch builds)")}},
            KAPPA: {"cutover": {c.name: c.status for c in result.checks},
                    "rows": {s: found[s].readable for s in ("kappa outputs", "snapshots")}}}


def arch_run(lab: LiveLab, arch: str, user: str, fault: Fault, steps: dict[str, float], rebuilt: dict[str, Any],
             final: dict[str, Finding]) -> ArchRun:
    raw = [r for r in lab.readers[arch].reads if r.status == 200]
    shows = [r for r in raw if any(row.get("user_id") == user for row in r.body.get("rows", []))]
    after = [r for r in shows if r.t >= fault.start_s]
    unreadable = {tier: steps.get(STEP_OF[tier]) for tier in TIERS[arch]}
    run = lab.arch_run(arch, "Lambda: batch layer + serving store" if arch == LAMBDA else f"Kappa: {output_name(VIEW, 1)} live, "
                       f"then a full replay as {output_name(VIEW, 2)}", fault,
                       {"unreadable_after_s": unreadable, "unreadable_everywhere_s": max(unreadable.values()),
                        "reads_showing_user_before": len(shows) - len(after), "reads_showing_user_after": len(after),
                        "last_seen_after_request_s": round(max(r.t for r in after) - fault.start_s, 2) if after else None,
                        "after_rebuild": rebuilt, "final_scan": {t: _shown(final[t]) for t in TIERS[arch]}})
    picked = {id(r) for r in after}
    run.evidence["user_visible_reader_s"] = reader_seconds([r for r in raw], lambda r: id(r) in picked, lab.poll_s)
    return run


def _shown(f: Finding) -> dict[str, Any]:
    return {"rows": f.rows, "pii_sealed": f.pii, "readable": f.readable, **({"error": f.error} if f.error else {})}


def lessons(runs: list[ArchRun], evidence: dict[str, Any]) -> list[str]:
    out = []
    for run in runs:
        e = run.evidence
        rows_after = sum(e["after_rebuild"]["rows"].values())
        out.append(f"{run.label}: every tier it keeps unreadable {e['unreadable_everywhere_s']:.2f} s after the request "
                   f"({', '.join(f'{t} {s:.2f} s' for t, s in e['unreadable_after_s'].items())}); readers saw the user in "
                   f"{e['reads_showing_user_after']} reads after it ({e['user_visible_reader_s']} reader-s); "
                   f"{rows_after} rows of the user after the {'rebuild' if run.arch == LAMBDA else 'full replay'}")
    steps = evidence["forget_steps_s"]
    if (waited := steps["lake lock"] - steps["snapshots"]) >= 1.0:
        out.append(f"gold waited {waited:.1f} s for the lab's batch lock: a batch build was running, and the purge deletes "
                   "from the lake only between builds (that build read the tombstones before the request; its promotion drops the user)")
    out.append("wrong reader-s here are not the deletion's: Lambda serves user_sessions from the batch layer alone (the speed "
               "layer does not maintain it), so its answers trail the log by a batch run and the scorer counts every rider "
               "who rode since as wrong; no read after the request showed the rider unless counted above")
    out.append(f"the user kept riding: the edge dropped the PII of {evidence['pii_dropped_at_the_edge']} of their later events "
               "and kept the events, which still count in aggregates")
    return out


register(Drill("deletion", QUESTION, "a rider is forgotten mid-stream (crypto-shredding + purge), keeps riding; Lambda rebuilds "
               "and Kappa replays from the earliest offset, and neither brings them back", run_deletion))
