"""`divergence`: a logic bug in one engine only. A deploy makes refunds count as revenue
(`refund_sign`) in the stream code: the Lambda speed layer and the published Kappa job, while
the Lambda batch layer stays right. Lambda: readers get the speed layer's wrong rows until the
divergence gate (batch against speed) blocks promotion and flags them `diverged`. Kappa: the bug
is in the one pipeline; nothing compares it with anything until the ledger reconciliation (on
closed days only) or a cutover's diff. The fix: fixed logic on both; Kappa also redeploys v1
in place (which does not repair what v1 already wrote) and replays a fixed v2 to cut over to;
Lambda needs a batch run past the fault's windows, which the gate keeps blocking while the
speed layer still holds its wrong rows, so the operator overrides that gate for one run."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from expectations.runner import run_suite
from lklab.drills.lab import LiveLab
from lklab.drills.readers import RawRead
from lklab.drills.registry import Drill, DrillContext, register
from lklab.drills.result import KAPPA, LAMBDA, ArchRun, DrillResult, Fault
from lklab.drills.stream import StreamShape
from lklab.kappa import cutover as co
from lklab.kappa import hydration
from lklab.kappa.names import output_name

VIEW = "revenue_per_minute"
FAULT = "refund_sign"
DIVERGENCE_GATE = f"divergence_{VIEW}"
# The fault lasts 35 % of the live stream; what follows it must exceed the allowed lateness
# (300 event seconds, 15 s at 20x), so that a batch run's T can pass the fault's windows.
SHAPES = {"small": StreamShape(backlog_min=20, live_min=20, rides_per_minute=20, speedup=20),
          "default": StreamShape(backlog_min=120, live_min=36, rides_per_minute=60, speedup=20)}
BATCH_EVERY_S = {"small": None, "default": 30.0}
# whether a batch run after the fix shows the gate still blocking (the speed rows stay wrong);
# small (tests) goes straight to the operator's override: one batch run less
AFTER_FIX_BATCH = {"small": False, "default": True}
REFUND_FRACTION = 0.3  # refunds common enough that every minute's revenue shows the bug
QUESTION = ("Batch and speed compute different answers for the same events: Lambda's core operational risk is "
            "semantic divergence. How would you detect semantic divergence between batch and speed outputs automatically?")


def run_divergence(ctx: DrillContext) -> DrillResult:
    shape = SHAPES[ctx.size]
    started = datetime.now(timezone.utc)
    with LiveLab(ctx, VIEW, shape, batch_every_s=BATCH_EVERY_S[ctx.size],
                 workload_overrides={"refund_fraction": REFUND_FRACTION}) as lab:
        time.sleep(shape.live_wall_s * 0.1)  # steady state first
        fault = Fault(name=FAULT, description="new stream logic that adds refunds instead of subtracting them, rolled out in "
                                              "place to the speed layer and the published Kappa job (the batch layer is right)")
        fault.start_s = lab.now()
        lab.deploy_in_place(FAULT)
        # a batch run whose T is past the first wrong windows (the earliest the gate can see them),
        # while the fault goes on: the fix lands while the stream runs, whatever a batch run takes
        detecting: list[bool] = []
        detector = threading.Thread(target=lambda: detecting.append(batch_after(lab, fault.start_s + lateness_wall_s(lab) + 6)),
                                    name="drill-detecting-batch", daemon=True)
        detector.start()
        time.sleep(max(0.0, fault.start_s + shape.live_wall_s * 0.35 - lab.now()))
        ledger_during = ledger_on_published(lab)
        fault.end_s = lab.now()
        lab.deploy_in_place(None)
        lab.act(KAPPA, f"replay the fixed logic as {output_name(VIEW, 2)} (new consumer group, from earliest)")
        lab.supervisor.add(lab.kappa_job(2, lab.settings))
        # each architecture's operator repairs it at once, neither waiting for the other
        with ThreadPoolExecutor(1, thread_name_prefix="drill-kappa-repair") as kappa_operator:
            repairing = kappa_operator.submit(cut_over_to_fixed, lab)
            detector.join()
            after_fix = batch_after(lab, fault.end_s) if AFTER_FIX_BATCH[ctx.size] else None
            forced = force_batch(lab)
            repair = repairing.result()
        lab.wait_stream()
        lab.settle(3)
        lab.finish()
        runs = [lab.arch_run(LAMBDA, "Lambda (speed layer + batch, divergence gate)", fault,
                             {"detecting_batch_promoted": detecting[0] if detecting else None, "batch_after_fix_promoted": after_fix,
                              "forced_batch_promoted": forced, **diverged_reads(lab.readers[LAMBDA].reads, fault)}),
                lab.arch_run(KAPPA, f"Kappa ({output_name(VIEW, 1)} → fixed {output_name(VIEW, 2)})", fault,
                             {"ledger_during_fault": ledger_during, **repair}, events_reprocessed=repair["replayed_events"])]
        evidence = {"refund_fraction": REFUND_FRACTION, "allowed_lateness_s": lab.settings.allowed_lateness_s,
                    "ledger_grace_s": lab.settings.ledger_grace_s, "content_detect_s": content_detection(runs, fault)}
        return lab.result("divergence", QUESTION, fault, runs, started, evidence=evidence, lessons=lessons(runs, fault, evidence))


def lateness_wall_s(lab: LiveLab) -> float:
    """The allowed lateness in wall seconds: how long a wrong window takes to become final."""
    return lab.settings.allowed_lateness_s / lab.shape.speedup


def batch_after(lab: LiveLab, t: float) -> bool:
    """Whether the first batch run to begin after `t` promoted: the cadence's, or one run now."""
    if lab.batch_every_s:
        lab.wait_batch_after(t)
        return next(ok for began, _, ok, _ in lab.builds if began > t)
    time.sleep(max(0.0, t - lab.now()))
    return lab.batch()


def force_batch(lab: LiveLab) -> bool:
    """The operator's repair of Lambda: the batch layer agrees with the ledger, the speed layer's
    rows of the fault's windows stay wrong (fixed code does not rewrite them), so the divergence
    gate blocks every run; one run with it downgraded to warn moves T past those windows."""
    lab.act(LAMBDA, f"override {DIVERGENCE_GATE} to warn for one batch run (batch is the truth)")
    override = lab.settings.model_copy(update={"gate_severity": {**lab.settings.gate_severity, DIVERGENCE_GATE: "warn"}})
    return lab.batch(override)


def ledger_on_published(lab: LiveLab) -> dict:
    """The cutover's ledger check, run on the published Kappa output as it is now."""
    at = hydration.published_position(lab.settings, lab.engine, VIEW)
    check = co.ledger_check(lab.settings, lab.engine, VIEW, at, at.rows)
    if check.status != "pass":
        lab.monitor.note(KAPPA, "ledger", f"{at.output}: {check.summary}")
    return f"{at.output} at t={lab.now():.0f}s: {check.status}: {check.summary}"


def cut_over_to_fixed(lab: LiveLab) -> dict:
    """Kappa's repair: once the fixed v2 is hydrated, the cutover as it stands (the diff's default
    tolerance), then, the change acknowledged as the fix, with the tolerance lifted."""
    hydration.wait_until_hydrated(lab.settings, lab.engine, VIEW, 2, timeout_s=300)
    replayed = sum(hydration.position(lab.settings, lab.engine, VIEW, 2, with_rows=False).offsets.values())
    first = co.cutover(lab.settings, lab.engine, VIEW, 2, "drill: cut over to the fixed logic", spark=lab.ctx.spark,
                       run_suite=run_suite)
    checks = {c.name: c.status for c in first.checks}
    diff = next(c.summary for c in first.checks if c.name == "diff")
    for check in first.checks:
        if check.name in ("diff", "ledger") and check.status != "pass":
            lab.monitor.note(KAPPA, check.name, f"cutover to {output_name(VIEW, 2)}: {check.summary}")
    lab.act(KAPPA, f"cutover to {output_name(VIEW, 2)}: {'swapped' if first.swapped else 'refused'}")
    if not first.swapped:
        lab.act(KAPPA, f"cutover to {output_name(VIEW, 2)} again, the diff acknowledged as the fix (tolerance 100%)")
        lab.publish_kappa(2, "drill: the diff is the fix")
    return {"cutover_checks": checks, "cutover_diff": diff.split(": ", 1)[-1], "first_cutover_swapped": first.swapped,
            "cut_over_at": lab.now(),
            "replayed_events": replayed}


def diverged_reads(reads: list[RawRead], fault: Fault) -> dict:
    """Lambda reads that carried a row flagged `diverged` (readers were told), and when first."""
    flagged = [r.t for r in reads if r.status == 200 and any(row.get("diverged") for row in r.body.get("rows", []))]
    return {"reads_flagged_diverged": len(flagged), "first_flagged_s": round(flagged[0] - fault.start_s, 2) if flagged else None}


def content_detection(runs: list[ArchRun], fault: Fault) -> dict[str, dict | None]:
    """Per architecture, the first signal that looked at the answers' content (gate, ledger,
    diff), seconds after the fault's start: restarts and lag say nothing about correctness."""
    found = {}
    for run in runs:
        first = next((s for s in run.signals if s.t >= fault.start_s and s.name in ("gate", "ledger", "diff")), None)
        found[run.arch] = None if first is None else {"by": first.name, "after_s": round(first.t - fault.start_s, 2)}
    return found


def after_fix_text(promoted: bool | None) -> str:
    return {True: "promoted", False: "was still blocked", None: "was not run (small size)"}[promoted]


def lessons(runs: list[ArchRun], fault: Fault, evidence: dict) -> list[str]:
    lam, kap = runs
    seen = evidence["content_detect_s"]

    def caught(arch: str) -> str:
        return f"caught by {seen[arch]['by']} {seen[arch]['after_s']} s after the deploy" if seen[arch] else "never caught"

    return [
        f"Lambda: {lam.figures.wrong_reader_s:.1f} wrong reader-seconds; {caught(LAMBDA)}; "
        f"{lam.evidence['reads_flagged_diverged']} reads carried rows flagged diverged",
        f"Lambda: with the speed logic fixed, the next batch run {after_fix_text(lam.evidence['batch_after_fix_promoted'])}"
        f" (the speed layer keeps the rows it wrote wrong); the gate override promoted: {lam.evidence['forced_batch_promoted']}",
        f"Kappa: {kap.figures.wrong_reader_s:.1f} wrong reader-seconds; {caught(KAPPA)}; the ledger check during the fault: "
        f"{kap.evidence['ledger_during_fault']}",
        f"Kappa: redeploying v1 fixed does not repair what it wrote; the first cutover to the fixed v2 was "
        f"{'swapped' if kap.evidence['first_cutover_swapped'] else 'refused'} (diff {kap.evidence['cutover_checks']['diff']}: {kap.evidence['cutover_diff']}); "
        f"recovered {kap.figures.recovery_s if kap.figures.recovery_s is not None else 'never'} s after the fix, "
        f"{kap.figures.events_reprocessed} events replayed",
    ]


register(Drill("divergence", QUESTION, "refunds added instead of subtracted in the stream code only: the divergence gate, "
               "the ledger and the cutover diff as detectors; wrong reader-seconds until each repair", run_divergence))
