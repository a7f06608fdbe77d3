"""Correctness gates that compare a batch build with something independent of it: the payments
ledger (the source of truth for money) and the speed layer (semantic divergence)."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from sqlalchemy import Engine, select

from lklab.lake import tables as lake
from lklab import views
from lklab.core.config import Settings
from lklab.engine.outputs import late_windows
from lklab.serving import progress
from lklab.serving.store import payments_ledger

MAX_REPORTED = 20  # differences listed in a gate's report; the counts cover all of them


@dataclass
class GateReport:
    """Outcome of one gate: `passed`, a one-line `summary`, and the differences behind it."""

    passed: bool
    summary: str
    differences: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=timezone.utc)


def ledger_by_day(engine: Engine, revenue_tips: bool = False) -> tuple[dict[date, int], dict[tuple[str, date], int]]:
    """Ledger money per UTC day (revenue: captures minus refunds, plus tips with `revenue_tips`)
    and per (driver, day) (earnings: captures minus refunds), in cents."""
    per_day: dict[date, int] = defaultdict(int)
    per_driver: dict[tuple[str, date], int] = defaultdict(int)
    t = payments_ledger.c
    with engine.connect() as conn:
        for event_type, driver_id, event_time, amount, tip in conn.execute(
                select(t.event_type, t.driver_id, t.event_time, t.amount_cents, t.tip_cents)):
            signed = views.MONEY_SIGN[event_type] * amount
            per_day[event_time.date()] += signed + (views.MONEY_SIGN[event_type] * tip if revenue_tips else 0)
            if driver_id is not None:
                per_driver[(driver_id, event_time.date())] += signed
    return dict(per_day), dict(per_driver)


def _gold_sums(spark: SparkSession, settings: Settings, view: str, by: list[str]) -> dict:
    spec = views.view(view)
    gold = spark.read.format("delta").load(lake.path(settings, lake.gold_table(view)))
    rows = gold.groupBy(*by).agg(F.sum(spec.value_column).alias("v")).collect()
    return {tuple(r[c] for c in by) if len(by) > 1 else r[by[0]]: int(r["v"]) for r in rows}


def reconcile_with_ledger(spark: SparkSession, settings: Settings, engine: Engine, watermark: datetime | None) -> GateReport:
    """Gold money against the ledger, by day and by (driver, day), to the cent (see compare_to_ledger)."""
    revenue_day = _gold_sums(spark, settings, "revenue_per_minute", ["event_date"])
    driver_day = _gold_sums(spark, settings, "driver_earnings_daily", ["driver_id", "event_date"])
    tips = views.batch_spec(views.view("revenue_per_minute"), settings).measure.with_tips
    return compare_to_ledger(engine, settings, revenue_day, driver_day, watermark, revenue_tips=tips)


def compare_to_ledger(engine: Engine, settings: Settings, revenue_day: dict[date, int] | None,
                      driver_day: dict[tuple[str, date], int] | None, watermark: datetime | None,
                      revenue_tips: bool = False) -> GateReport:
    """Money per day (and per driver-day) against the ledger, to the cent. A day is closed once
    its end plus `ledger_grace_s` (the log's worst lateness) is behind the watermark: a
    difference on a closed day fails the gate; on an open day it is reported as in flight.
    Pass None for a breakdown that the output does not have; `revenue_tips` when the revenue
    logic counts tips."""
    ledger_day, ledger_driver = ledger_by_day(engine, revenue_tips)
    if not ledger_day:
        return GateReport(True, "no ledger rows: nothing to reconcile against", details={"evaluated": False})
    grace = timedelta(seconds=settings.ledger_grace_s)
    closed = lambda day: watermark is not None and _day_start(day) + timedelta(days=1) + grace <= watermark  # noqa: E731
    failures, in_flight = [], []
    if revenue_day is not None:
        for day in sorted(set(ledger_day) | set(revenue_day)):
            want, got = ledger_day.get(day, 0), revenue_day.get(day, 0)
            if want != got:
                (failures if closed(day) else in_flight).append(f"revenue {day}: got {got} vs ledger {want} ({got - want:+d} cents)")
    if driver_day is not None:
        for key in sorted(set(ledger_driver) | set(driver_day)):
            want, got = ledger_driver.get(key, 0), driver_day.get(key, 0)
            if want != got:
                (failures if closed(key[1]) else in_flight).append(f"driver {key[0]} {key[1]}: got {got} vs ledger {want} ({got - want:+d} cents)")
    days = sorted(ledger_day)
    details = {"evaluated": True, "days": [str(d) for d in days], "closed_days": [str(d) for d in days if closed(d)],
               "failures": len(failures), "in_flight": len(in_flight)}
    if failures:
        return GateReport(False, f"{len(failures)} differences from the ledger on closed days", failures[:MAX_REPORTED], details)
    note = f"; {len(in_flight)} differences on open days (events still in flight)" if in_flight else ""
    return GateReport(True, f"equals the ledger to the cent on {len(details['closed_days'])} closed days{note}",
                      in_flight[:MAX_REPORTED], details)


def divergence(
    spark: SparkSession, settings: Settings, engine: Engine, spec: views.ViewSpec, T: datetime | None,
    batch_offsets: dict[int, list[int]],
) -> GateReport:
    """Batch against speed on the windows both hold that are final at T. Windows the speed layer
    knowingly left to batch (too-late events) are excluded. details["diverged"] names every
    differing window ({view, entity, window_start}): the speed rows readers get flagged. Evaluated only when the speed layer
    has consumed at least what the batch read; otherwise a difference would mean nothing."""
    with engine.connect() as conn:
        done = progress.next_offsets(conn, settings.speed_group, settings.topic)
        behind = {p: end - done.get(p, 0) for p, (_, end) in batch_offsets.items() if done.get(p, 0) < end}
        if behind:
            return GateReport(True, f"not evaluated: the speed layer is {sum(behind.values())} records behind the batch's input",
                              details={"evaluated": False, "behind": {str(k): v for k, v in behind.items()}})
        late = set(late_windows(conn, spec.name))
        speed = {(e, w): v for e, w, v in conn.execute(spec.measure.output_query(spec))}
    gold = spark.read.format("delta").load(lake.path(settings, lake.gold_table(spec.name)))
    batch = {(r[0], r[1].replace(tzinfo=timezone.utc)): int(r[2]) for r in gold.select(spec.entity, "window_start", spec.value_column).collect()}
    shared = [k for k in batch.keys() & speed.keys() if spec.is_final(k[1], T) and k not in late]
    diffs = sorted((k for k in shared if batch[k] != speed[k]), key=lambda k: (k[1], k[0]))
    lines = [f"{spec.entity}={k[0]} window {k[1].isoformat()}: batch {batch[k]} vs speed {speed[k]} ({speed[k] - batch[k]:+d})"
             for k in diffs]
    details = {"evaluated": True, "windows_compared": len(shared), "windows_excluded_late": len(late), "differing": len(diffs),
               "total_abs_difference": sum(abs(speed[k] - batch[k]) for k in diffs),
               "diverged": [{"view": spec.name, "entity": k[0], "window_start": k[1].isoformat()} for k in diffs]}
    if diffs:
        return GateReport(False, f"{spec.name}: batch and speed differ on {len(diffs)} of {len(shared)} shared final windows",
                          lines[:MAX_REPORTED], details)
    return GateReport(True, f"{spec.name}: batch equals speed on all {len(shared)} shared final windows", details=details)
