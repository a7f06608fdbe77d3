"""`crash-loop`: a bad deploy. New logic that crashes on a poison event (a zero-amount payment,
valid under the schema) is rolled out to both stream layers in place; the event arrives; the
supervisor restarts each one again and again. Lambda's serving falls back to batch-only,
flagged stale; Kappa's readers get the published job's last answer, flagged stale (or 503 under
reader policy `error`). The fix is deployed and recovery is measured. Then the guardrail: the
same bad logic runs first as a shadow Kappa version (its own consumer group, no readers); it
crash-loops there, is never hydrated, and the cutover refuses it while readers stay correct."""
from __future__ import annotations

import time
from datetime import datetime, timezone

from expectations.runner import run_suite
from lklab.drills.lab import LiveLab
from lklab.drills.registry import Drill, DrillContext, register
from lklab.drills.result import KAPPA, LAMBDA, DrillResult, Fault
from lklab.drills.scoring import reader_seconds
from lklab.drills.stream import StreamShape, poison_payment
from lklab.kappa import cutover as co
from lklab.kappa.names import output_name

VIEW = "revenue_per_minute"
FAULT = "zero_amount_crash"
SHAPES = {"small": StreamShape(backlog_min=20, live_min=10, rides_per_minute=20, speedup=20),
          "default": StreamShape(backlog_min=120, live_min=24, rides_per_minute=60, speedup=20)}
BATCH_EVERY_S = {"small": None, "default": 30.0}  # small (tests): one build before the stream, no repair wait
QUESTION = ("Your stream job repeatedly fails due to a bad deployment: which is more acceptable, temporary stale "
            "dashboards or incorrect dashboards, and what guardrails prevent crash loops (canary, shadow traffic)?")


def run_crash_loop(ctx: DrillContext) -> DrillResult:
    shape = SHAPES[ctx.size]
    started = datetime.now(timezone.utc)
    with LiveLab(ctx, VIEW, shape, batch_every_s=BATCH_EVERY_S[ctx.size]) as lab:
        wall = shape.live_wall_s
        time.sleep(wall * 0.2)  # steady state first
        fault = Fault(name=FAULT, description="new logic that divides by the payment amount, rolled out in place to the "
                                              "speed layer and the published Kappa job; then a zero-amount payment arrives")
        fault.start_s = lab.now()
        bad = lab.deploy_in_place(FAULT)
        poison = poison_payment(lab.workload.deliveries[-1], lab.stream.timeline.marks[-1].newest)
        lab.stream.inject(poison)
        time.sleep(wall * 0.35)  # the crash loop, watched
        fault.end_s = lab.now()
        lab.deploy_in_place(None)
        lab.wait_stream()
        if lab.batch_every_s:
            lab.wait_batch_after(fault.end_s)  # the batch layer passes the windows the speed layer left to it
        lab.settle(2)
        restarts = {LAMBDA: lab.speed.restarts, KAPPA: lab.kappa.restarts}
        guard = shadow_guardrail(lab, bad)
        lab.finish()
        runs = [lab.arch_run(LAMBDA, "Lambda (speed layer + batch)", fault, {"restarts": restarts[LAMBDA]}),
                lab.arch_run(KAPPA, f"Kappa ({output_name(VIEW, 1)} live)", fault, {"restarts": restarts[KAPPA]})]
        for run in runs:  # what the answers said of themselves, beside what was measured
            run.evidence["flagged_stale_reader_s"] = reader_seconds(run.reads, lambda r: r.stale, lab.poll_s)
        return lab.result("crash-loop", QUESTION, fault, runs, started, evidence={"guardrail": guard, "poison_event": poison.event_id,
                                                                                 "reader_policy": lab.settings.reader_policy_for(VIEW)},
                          lessons=lessons(runs, guard))


SHADOW_CRASH_WAIT_S = 90.0  # bounded: a shadow that never crashes is reported, not waited on forever


def shadow_guardrail(lab: LiveLab, bad) -> dict:
    """The same bad logic as a shadow version first: started as its own consumer group, it meets
    the poison event while hydrating and crash-loops; the cutover refuses it; readers are untouched."""
    t0 = lab.now()
    lab.act(KAPPA, f"guardrail: start {output_name(VIEW, 2)} with the new logic as a shadow (own consumer group)")
    shadow = lab.supervisor.add(lab.kappa_job(2, bad))  # started by the supervisor: it may crash at once
    time.sleep(max(6.0, lab.shape.live_wall_s * 0.2))
    # a slow machine may not have reached the poison event yet: give the shadow its first crash
    deadline = time.monotonic() + SHADOW_CRASH_WAIT_S
    while shadow.restarts < 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        co.cutover(lab.settings, lab.engine, VIEW, 2, "drill: promote the shadow", spark=lab.ctx.spark, tolerance_pct=100, run_suite=run_suite)
        refused = None
    except co.CutoverError as exc:
        refused = str(exc)
    lab.act(KAPPA, f"guardrail: cutover to {output_name(VIEW, 2)} attempted: {'refused' if refused else 'SWAPPED'}")
    shadow.wanted = False
    shadow.stop(shadow.settings)
    t1 = lab.now()
    reads = [r for r in lab.readers[KAPPA].reads if t0 <= r.t <= t1]
    return {"shadow": output_name(VIEW, 2), "shadow_restarts": shadow.restarts, "cutover_refused": refused,
            "window_s": [t0, t1], "reads_during_shadow": len(reads),
            "published_during_shadow": sorted({r.body.get("version") for r in reads if r.status == 200})}


def recovered(seconds: float | None) -> str:
    return "never fully correct again before the run ended" if seconds is None else f"fully correct again {seconds} s after the fix"


def lessons(runs, guard: dict) -> list[str]:
    lam, kap = (r.figures for r in runs)
    return [
        f"Lambda: {lam.stale_reader_s:.1f} reader-seconds flagged stale (batch-only), {lam.wrong_reader_s:.1f} wrong; "
        f"{recovered(lam.recovery_s)}",
        f"Kappa: {kap.stale_reader_s:.1f} reader-seconds stale, {kap.failed_reader_s:.1f} refused, {kap.wrong_reader_s:.1f} wrong; "
        f"{recovered(kap.recovery_s)}",
        f"Kappa's answers flagged themselves stale for {runs[1].evidence['flagged_stale_reader_s']:.1f} of those "
        f"{kap.stale_reader_s:.1f} s: a crash-looping job beats between crashes and its lag stays under kappa_max_lag, "
        "so only its watermark shows it is stuck",
        f"guardrail: the shadow crash-looped ({guard['shadow_restarts']} restarts) and the cutover "
        f"{'refused it' if guard['cutover_refused'] else 'DID NOT refuse it'}; readers kept "
        f"{', '.join(guard['published_during_shadow']) or 'nothing'}",
    ]


register(Drill("crash-loop", QUESTION, "a bad deploy crash-loops both stream layers on a poison event; fix; then a shadow "
               "version as the guardrail", run_crash_loop))
