"""`schema`: a field added, a field renamed, and new logic over old history, on both architectures.

The stream mixes producers on schema v1 and v2 (v2 adds `tip_cents` and `currency`). Three steps:
1. A producer team proposes v3, renaming `amount_cents` to `amount_minor`. `lklab schema check`
   (lklab.evolution.compatibility) refuses it under the topic's mode and names the rename.
2. A producer that bypasses the check writes such records straight to the topic. Each
   architecture's consumers (Lambda's speed worker; Kappa's published job) dead-letter them with
   the reason, and keep going; readers must see no change.
3. Revenue logic v2 (tips count) is deployed over the mixed history. Kappa replays it as
   `revenue_per_minute__v2` from the earliest offset and cuts over once the history gate (every
   record readable, or dead-lettered) and the other checks pass. Lambda deploys it twice: to the
   speed layer (a rolling restart whose state already holds logic-1 contributions) and to the
   batch layer as a backfill, which the divergence gate may block until the operator accepts the
   change as intended.

Every read is scored against the oracle of each logic (lklab.drills.scoring): an answer wholly of
logic 1 or of logic 2 is correct, one that mixes them is wrong. Measured per architecture: what
readers saw during the bypass, and during the logic change (reader-seconds on each logic, mixed),
the time until readers got logic 2 for good, and the operator steps it took."""
from __future__ import annotations

import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from lklab.core import schemas
from lklab.core.events import EventType
from lklab.drills.divergence import DIVERGENCE_GATE, force_batch, lateness_wall_s
from lklab.drills.lab import LiveLab
from lklab.drills.registry import Drill, DrillContext, DrillError, register
from lklab.drills.result import KAPPA, LAMBDA, ArchRun, DrillResult, Fault, Read
from lklab.drills.scoring import reader_seconds
from lklab.drills.stream import StreamShape
from lklab.evolution import compatibility
from lklab.kappa import hydration
from lklab.kappa.names import output_name, replay_scope
from lklab.log import kafka_io
from lklab.log.produce import read_dead_letters

VIEW = "revenue_per_minute"
RENAMED = ("amount_cents", "amount_minor")
NEW_LOGIC = 2
# The logic change needs, after the deploy, the allowed lateness (300 event s: 15 s at 20x) before
# a batch run's T passes the windows the speed layer folded under both logics, plus that run.
SHAPES = {"small": StreamShape(backlog_min=20, live_min=16, rides_per_minute=20, speedup=20),
          "default": StreamShape(backlog_min=120, live_min=30, rides_per_minute=60, speedup=20)}
BATCH_EVERY_S = {"small": None, "default": 30.0}
BYPASSED = {"small": 12, "default": 40}  # renamed records the foreign producer writes
V2_FRACTION = 0.5  # of rides, from producers already on schema v2 (tips on 60 % of their captures)
DEAD_LETTER_WAIT_S = 90.0
QUESTION = ("You add a field to events. Old events do not have it. How do you test that your new consumer can read 12 "
            "months of historical events?")


def run_schema(ctx: DrillContext) -> DrillResult:
    shape = SHAPES[ctx.size]
    started = datetime.now(timezone.utc)
    with LiveLab(ctx, VIEW, shape, batch_every_s=BATCH_EVERY_S[ctx.size], logics=(1, NEW_LOGIC),
                 workload_overrides={"schema_v2_fraction": V2_FRACTION}) as lab:
        time.sleep(shape.live_wall_s * 0.1)  # steady state first
        verdict = check_the_rename(lab)
        fault = Fault(name="breaking_rename_bypassed", description=f"a producer that skipped `lklab schema check` writes records "
                                                                   f"with {RENAMED[0]} renamed to {RENAMED[1]} straight to the topic")
        fault.start_s = lab.now()
        places = bypass_the_check(lab, BYPASSED[ctx.size])
        caught = wait_dead_lettered(lab, places)
        fault.end_s = lab.now()
        deploy_s = lab.now()
        with ThreadPoolExecutor(1, thread_name_prefix="drill-kappa-logic") as kappa_operator:  # both operators act at once
            kappa_deploy = kappa_operator.submit(deploy_to_kappa, lab)
            lambda_deploy = deploy_to_lambda(lab)
            kappa_evidence = kappa_deploy.result()
        lab.wait_stream()
        lab.settle(3)
        lab.finish()
        letters = dead_letters_by_consumer(lab, places)
        runs = [lab.arch_run(LAMBDA, "Lambda (speed layer + batch backfill)", fault,
                             {"dead_lettered": letters[LAMBDA], **lambda_deploy}),
                lab.arch_run(KAPPA, f"Kappa ({output_name(VIEW, 1)} → {output_name(VIEW, 2)}, tips)", fault,
                             {"dead_lettered": letters[KAPPA], **kappa_evidence},
                             events_reprocessed=kappa_evidence["replayed_events"])]
        for run in runs:
            run.evidence["logic_change"] = logic_change(run.reads, deploy_s, lab.poll_s)
        evidence = {"schema_check": verdict, "bypassed_records": len(places), "dead_letter_seen_s": caught,
                    "logic_deployed_at_s": deploy_s, "schema_v2_fraction": V2_FRACTION}
        return lab.result("schema", QUESTION, fault, runs, started, evidence=evidence, lessons=lessons(runs, evidence))


def renamed_schema() -> dict[str, Any]:
    """The newest registered schema, with amount_cents renamed (the change a producer team proposes)."""
    old, new = RENAMED
    proposed = json.loads(json.dumps(schemas.schema(schemas.latest())).replace(f'"{old}"', f'"{new}"'))  # property, required, rules
    proposed["$id"] = f"lklab/event.v{schemas.latest() + 1}.json"
    return proposed


def check_the_rename(lab: LiveLab) -> dict[str, Any]:
    """`lklab schema check` on the proposed file, as the producer team's CI would run it."""
    path = lab.settings.home / "proposed" / "event.v3.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(renamed_schema(), indent=1))
    verdict = compatibility.check(compatibility.load_proposed(path), lab.settings.topic)
    what = "refused" if not verdict.compatible else "ACCEPTED"
    for arch in (LAMBDA, KAPPA):
        lab.act(arch, f"lklab schema check {path.name}: {what} ({len(verdict.breaking)} breaking changes)", by="harness")
    return {"file": path.name, "mode": verdict.mode.value, "checked_versions": list(verdict.checked),
            "compatible": verdict.compatible, "breaking": [str(b) for b in verdict.breaking]}


def bypass_the_check(lab: LiveLab, count: int) -> list[tuple[int, int]]:
    """A foreign producer's renamed captures (schema_version 3, which no registry holds), keyed by
    real rides; returns the (partition, offset) of each, as the broker acknowledged it."""
    old, new = RENAMED
    rides = [e for e in lab.workload.deliveries if e.event_type is EventType.PAYMENT_CAPTURED][-count:]
    values = []
    for ride in rides:
        record = json.loads(ride.to_json())
        record[new] = record.pop(old)
        values.append((ride.ride_id.encode(), json.dumps({**record, "event_id": f"renamed-{uuid.uuid4().hex[:12]}",
                                                          "schema_version": 3}).encode()))
    places = kafka_io.run(_send(lab, values))
    for arch in (LAMBDA, KAPPA):
        lab.act(arch, f"a producer that bypassed the check wrote {len(places)} renamed records to {lab.settings.topic}",
                by="harness")
    return places


async def _send(lab: LiveLab, values: list[tuple[bytes, bytes]]) -> list[tuple[int, int]]:
    async with kafka_io.producer(lab.settings) as producer:
        acks = [await producer.send(lab.settings.topic, key=key, value=value) for key, value in values]
        return [((meta := await ack).partition, meta.offset) for ack in acks]


def consumers(lab: LiveLab) -> dict[str, str]:
    """The consumer that dead-letters for each architecture: the speed worker, the published job."""
    return {LAMBDA: lab.settings.speed_group, KAPPA: replay_scope(VIEW, 1)}


def wait_dead_lettered(lab: LiveLab, places: list[tuple[int, int]]) -> dict[str, float]:
    """Until each architecture's consumer has dead-lettered every bypassing record; when each did
    (seconds since the run began), noted as that architecture's detection signal."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + DEAD_LETTER_WAIT_S
    while len(seen) < len(consumers(lab)):
        for arch, letters in dead_letters_by_consumer(lab, places).items():
            if arch not in seen and letters["records"] == len(places):
                seen[arch] = lab.now()
                lab.monitor.note(arch, "dead-letter", f"{letters['consumer']} dead-lettered all {len(places)} renamed records")
        if time.monotonic() > deadline:
            missing = sorted(set(consumers(lab)) - set(seen))
            raise DrillError(f"not every renamed record was dead-lettered within {DEAD_LETTER_WAIT_S:.0f}s by: {', '.join(missing)}")
        time.sleep(0.5)
    return seen


def dead_letters_by_consumer(lab: LiveLab, places: list[tuple[int, int]]) -> dict[str, dict[str, Any]]:
    """Per architecture: how many of the bypassing records its consumer dead-lettered (at least
    once: the DLQ is at-least-once), and the reasons it gave."""
    wanted = {f"{lab.settings.topic}[{p}]@{o}" for p, o in places}
    letters = [d for d in read_dead_letters(lab.settings) if d.get("source") in wanted]
    out = {}
    for arch, consumer in consumers(lab).items():
        mine = [d for d in letters if d.get("consumer") == consumer]
        out[arch] = {"consumer": consumer, "records": len({d["source"] for d in mine}), "letters": len(mine),
                     "reasons": sorted({str(d.get("reason")) for d in mine})}
    return out


def deploy_to_kappa(lab: LiveLab) -> dict[str, Any]:
    """Kappa's one deploy: the new logic as a new version replaying the whole log, cut over once
    it is hydrated. The diff against v1 is the tips, so the operator accepts it (tolerance 100 %);
    the history gate and the others still decide."""
    lab.act(KAPPA, f"replay revenue logic v{NEW_LOGIC} (tips) as {output_name(VIEW, 2)} from the earliest offset (new consumer group)")
    lab.start_job(2, lab.settings)
    hydration.wait_until_hydrated(lab.settings, lab.engine, VIEW, 2, timeout_s=300)
    replayed = sum(hydration.position(lab.settings, lab.engine, VIEW, 2, with_rows=False).offsets.values())
    lab.act(KAPPA, f"cutover to {output_name(VIEW, 2)}, the diff (tips) accepted as the change")
    result = lab.publish_kappa(2, "drill: revenue logic v2 counts tips")
    return {"cutover_checks": {c.name: c.status for c in result.checks},
            "history_check": next((c.summary for c in result.checks if c.name == "history"), None),
            "cut_over_at_s": lab.now(), "replayed_events": replayed}


def deploy_to_lambda(lab: LiveLab) -> dict[str, Any]:
    """Lambda's two deploys: the speed layer (rolling restart; its state keeps what logic 1 folded),
    then, once the allowed lateness has passed so that T can pass the windows folded under both,
    the batch layer's backfill with the new logic. Where the divergence gate blocks it (the speed
    layer's mixed windows against the new batch), the operator accepts the change for one run."""
    new = lab.settings.model_copy(update={"revenue_logic": NEW_LOGIC})
    lab.act(LAMBDA, f"deploy revenue logic v{NEW_LOGIC} (tips) to the speed layer (rolling restart)")
    lab.speed.deploy(new)
    lab.settings = new  # the batch cadence (default size) builds with it from now on
    time.sleep(max(0.0, lateness_wall_s(lab) + 3))
    lab.act(LAMBDA, f"backfill the batch layer with revenue logic v{NEW_LOGIC} (LKLAB_REVENUE_LOGIC={NEW_LOGIC} lklab batch)")
    promoted = lab.batch(new)
    blocked_by = None if promoted else lab.builds[-1][3]
    forced = None
    if not promoted and DIVERGENCE_GATE in (blocked_by or ""):
        forced = force_batch(lab)
    return {"backfill_promoted": promoted, "backfill_blocked_by": blocked_by, "gate_override_promoted": forced,
            "backfilled_at_s": lab.now()}


def logic_change(reads: list[Read], since: float, interval_s: float) -> dict[str, Any]:
    """What readers got from the deploy on: reader-seconds of answers wholly of each logic, of
    answers behind the log but whole (Read.behind_s), of answers that mix the logics (wrong under
    both at every recent position), and when logic 2 reached readers, first and for good."""
    after = [r for r in reads if r.t >= since]
    on = lambda logic: lambda r: r.correct and r.logic == logic  # noqa: E731 - wholly of that logic
    first_new = next((r.t for r in after if on(NEW_LOGIC)(r)), None)
    last_other = max((r.t for r in after if not (r.correct and r.logic in (NEW_LOGIC, None))), default=None)
    return {"reads": len(after),
            "logic1_reader_s": reader_seconds(after, on(1), interval_s),
            "logic2_reader_s": reader_seconds(after, on(NEW_LOGIC), interval_s),
            "behind_reader_s": reader_seconds(after, lambda r: r.answered and not r.correct and r.behind_s is not None, interval_s),
            "mixed_reader_s": reader_seconds(after, lambda r: r.answered and not r.correct and r.behind_s is None, interval_s),
            "failed_reader_s": reader_seconds(after, lambda r: not r.answered, interval_s),
            "first_logic2_s": None if first_new is None else round(first_new - since, 2),
            "logic2_for_good_s": None if first_new is None else round((last_other or since) - since, 2)}


def lessons(runs: list[ArchRun], evidence: dict[str, Any]) -> list[str]:
    check = evidence["schema_check"]
    lines = [f"lklab schema check refused the rename under {check['mode']}: " + "; ".join(check["breaking"][:2])]
    for run in runs:
        dead, change = run.evidence["dead_lettered"], run.evidence["logic_change"]
        lines.append(f"{run.label}: {dead['records']} of {evidence['bypassed_records']} bypassing records dead-lettered by "
                     f"{dead['consumer']} ({'; '.join(dead['reasons'])[:160]}); {run.figures.wrong_reader_s:.1f} wrong reader-seconds "
                     f"in the whole run")
        lines.append(f"{run.label}: after the logic deploy, {change['logic1_reader_s']:.1f} reader-s on logic 1, "
                     f"{change['behind_reader_s']:.1f} behind the log, {change['mixed_reader_s']:.1f} on a mix of both, {change['logic2_reader_s']:.1f} on logic 2; logic 2 for good "
                     f"{_seconds(change['logic2_for_good_s'])} after the deploy, {run.figures.operator_steps} operator steps")
    return lines


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value} s"


register(Drill("schema", QUESTION, "a breaking rename refused by the check, bypassed and dead-lettered; revenue logic v2 "
               "(tips) deployed over mixed v1/v2 history on both architectures", run_schema))
