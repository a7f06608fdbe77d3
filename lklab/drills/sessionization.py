"""`sessionization-backfill`: the seed's backfill. A sessionization bug (logic v1 also splits
sessions at midnight UTC) has shipped in both architectures for the whole history; readers poll
both while the fix goes out both ways at once: Lambda deploys logic v2 to the batch layer and
backfills every daily partition (Dagster, blocking gates, one atomic promotion); Kappa starts
v2's job as a new consumer group from the earliest offset, waits until it is hydrated and cuts
over (hydration, GX, ledger, diff, atomic swap). Every read is scored against the correct
sessionization; the drill records how long each path took to reach readers, what it
reprocessed, the operator steps, and that no reader saw a mix of the two logics."""
from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

from lklab.drills.lab import LiveLab
from lklab.drills.registry import Drill, DrillContext, register
from lklab.drills.result import KAPPA, LAMBDA, DrillResult, Fault
from lklab.drills.stream import StreamShape
from lklab.kappa.names import output_name, replay_scope
from lklab.serving.progress import read_counters
from orchestration.launch import run_batch

VIEW = "user_sessions"
SHAPES = {"small": StreamShape(backlog_min=24 * 60, live_min=2, rides_per_minute=1, speedup=20),
          "default": StreamShape(backlog_min=30 * 24 * 60, live_min=5, rides_per_minute=1, speedup=20)}
USERS = {"small": 40, "default": 200}  # few riders: sessions across midnight, where v1 is wrong, are common
HISTORY_ENDS = datetime(2026, 11, 30, 22, 0, tzinfo=timezone.utc)
QUESTION = ("You discover a bug in sessionization logic that existed for 30 days: is a Lambda batch backfill or a "
            "Kappa replay riskier, and what does each cost?")


def run_sessionization_backfill(ctx: DrillContext) -> DrillResult:
    shape = SHAPES[ctx.size]
    started = datetime.now(timezone.utc)
    # a sparse stream (a ride a minute): each partition's watermark moves every few event-minutes, so
    # staleness is judged against 2 event-hours rather than the default 100 event-seconds
    # the history ends at a fixed past instant: 30 days from a later start would reach past today,
    # and the batch gates refuse windows from the future
    with LiveLab(ctx, VIEW, shape, speed_layer=False, settings_overrides={"user_sessions_logic": 1},
                 workload_overrides={"users": USERS[ctx.size]}, stale_wall_s=360,
                 workload_start=HISTORY_ENDS - timedelta(minutes=shape.backlog_min + shape.live_min)) as lab:
        lab.wait_stream()
        lab.settle(2)  # readers see the bug served by both
        fault = Fault(name="sessionization v1", start_s=0.0,
                      description="logic v1 splits sessions at midnight UTC; it served the whole history on both")
        fault.end_s = lab.now()
        backfill: dict = {}
        lambda_fix = threading.Thread(target=_lambda_backfill, args=(lab, backfill), name="lambda-backfill")
        lambda_fix.start()
        kappa_done = _kappa_replay(lab)
        lambda_fix.join()
        lab.settle(2)
        lab.finish()
        replayed = read_counters(lab.engine, replay_scope(VIEW, 2))["processed"]
        runs = [lab.arch_run(LAMBDA, "Lambda: deploy v2, backfill every daily partition", fault,
                             {"fix_done_s": backfill["done_s"], "partitions": backfill["days"]},
                             events_reprocessed=len(lab.stream.timeline.events)),
                lab.arch_run(KAPPA, "Kappa: replay v2 from earliest, cut over", fault,
                             {"fix_done_s": kappa_done}, events_reprocessed=replayed)]
        for run, name in zip(runs, ("build_id", "version")):
            _what_readers_saw(run, [r.body.get(name) for r in lab.readers[run.arch].reads if r.status == 200])
        return lab.result("sessionization-backfill", QUESTION, fault, runs, started, lessons=lessons(runs, fault))


def _lambda_backfill(lab: LiveLab, out: dict) -> None:
    fixed = lab.settings.model_copy(update={"user_sessions_logic": 2})
    first = lab.workload.config.start.date()
    last = (lab.stream.timeline.marks[-1].newest or lab.workload.config.start).date()
    out["days"] = (last - first).days + 1
    lab.act(LAMBDA, "deploy sessionization logic v2 to the batch layer")
    lab.act(LAMBDA, f"backfill the daily partitions {first} .. {last} ({out['days']} days)")
    outcome = run_batch(fixed, (first.isoformat(), last.isoformat()))
    lab.act(LAMBDA, f"backfill {'promoted' if outcome.success else 'did not promote: ' + outcome.message}", by="system")
    out["done_s"] = lab.now()


def _what_readers_saw(run, served: list) -> None:
    """The builds or versions readers were served, in order, and whether any answer from the new
    one was not exact (a partial rebuild made visible) or empty."""
    order = [s for i, s in enumerate(served) if i == 0 or served[i - 1] != s]
    newest = order[-1] if order else None
    answered = [r for r in run.reads if r.answered]
    run.evidence.update(served_in_order=order, empty_reads=sum(1 for r in answered if r.windows == 0),
                        new_answers_not_exact=sum(1 for r, s in zip(answered, served) if s == newest and not r.correct))


def _kappa_replay(lab: LiveLab) -> float:
    lab.act(KAPPA, f"start {output_name(VIEW, 2)} (logic v2) as a new consumer group from the earliest offset")
    lab.start_job(2, lab.settings)
    result = lab.publish_kappa(2, "drill: the sessionization fix")
    lab.act(KAPPA, f"cut over to {output_name(VIEW, 2)}: {', '.join(f'{c.name} {c.status}' for c in result.checks)}")
    return lab.now()


def lessons(runs, fault: Fault) -> list[str]:
    out = []
    for run in runs:
        f = run.figures
        took = run.evidence["fix_done_s"] - fault.end_s
        out.append(f"{run.label}: {took:.0f} s to readers, {f.events_reprocessed:,} events reprocessed, {f.operator_steps} "
                   f"operator steps; readers saw {' then '.join(map(str, run.evidence['served_in_order']))}, "
                   f"{run.evidence['empty_reads']} empty answers, {run.evidence['new_answers_not_exact']} inexact answers from the fix; first fully correct read {f.recovery_s if f.recovery_s is not None else 'never'} s after the fix began")
    return out


register(Drill("sessionization-backfill", QUESTION, "the 30-day sessionization bug fixed as a Lambda backfill and as a "
               "Kappa replay + cutover at once, readers polling both", run_sessionization_backfill))
