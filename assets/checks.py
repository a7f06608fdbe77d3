"""Blocking quality gates: Great Expectations suites on bronze, silver and every gold view, gold
against the payments ledger, and batch against speed (divergence). A failure stops the
promotion step downstream, so the previous published build stays."""
from datetime import date

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetKey, MetadataValue, asset_check

from assets.lake import bronze_events, silver_events
from expectations.runner import GateResult, run_suite
from lklab import lake, reconcile, views
from lklab.batch import silver_watermark
from orchestration.resources import LabSettings, ServingResource, SparkResource

RANGE_TAGS = ("dagster/asset_partition_range_start", "dagster/asset_partition_range_end")


def run_dates(context: AssetCheckExecutionContext) -> lake.DateRange | None:
    """The event dates this run materialised (from its partition tags); None = the whole table."""
    tags = context.run.tags
    if "dagster/partition" in tags:
        day = date.fromisoformat(tags["dagster/partition"])
        return day, date.fromordinal(day.toordinal() + 1)
    if all(t in tags for t in RANGE_TAGS):
        first, last = (date.fromisoformat(tags[t]) for t in RANGE_TAGS)
        return first, date.fromordinal(last.toordinal() + 1)
    return None


def _scoped(frame, dates: lake.DateRange | None):
    if dates is None:
        return frame
    return frame.where((frame.event_date >= dates[0]) & (frame.event_date < dates[1]))


def _gx(result: GateResult) -> AssetCheckResult:
    return AssetCheckResult(
        passed=result.passed,
        description=f"{result.suite}: {'passed' if result.passed else 'FAILED'} ({result.evaluated} expectations)",
        metadata={
            "failures": MetadataValue.md("\n".join(f"- {line}" for line in result.failures) or "none"),
            "expectations": result.evaluated,
            "data_docs": MetadataValue.path(str(result.data_docs_index or "")),
        },
    )


def _gate(report: reconcile.GateReport) -> AssetCheckResult:
    return AssetCheckResult(
        passed=report.passed,
        description=report.summary,
        metadata={
            "differences": MetadataValue.md("\n".join(f"- {line}" for line in report.differences) or "none"),
            "details": MetadataValue.json(report.details),
        },
    )


@asset_check(asset=bronze_events, blocking=True, name="gx_bronze_events", description="GX suite bronze_events")
def gx_bronze_events(lab: LabSettings, spark: SparkResource) -> AssetCheckResult:
    settings, session = lab.settings(), spark.session()
    return _gx(run_suite(settings.home, "bronze_events", session.read.format("delta").load(lake.path(settings, lake.BRONZE))))


@asset_check(asset=silver_events, blocking=True, name="gx_silver_events", description="GX suite silver_events")
def gx_silver_events(context: AssetCheckExecutionContext, lab: LabSettings, spark: SparkResource) -> AssetCheckResult:
    settings, session = lab.settings(), spark.session()
    silver = _scoped(session.read.format("delta").load(lake.path(settings, lake.SILVER)), run_dates(context))
    return _gx(run_suite(settings.home, "silver_events", silver))


def gx_gold_check(spec: views.ViewSpec):
    params = {"require_minute_coverage": True} if spec.window_s == views.WINDOW_S else {}

    @asset_check(asset=AssetKey(f"gold_{spec.name}"), blocking=True, name=f"gx_gold_{spec.name}",
                 description=f"GX suite gold_{spec.name}")
    def _check(context: AssetCheckExecutionContext, lab: LabSettings, spark: SparkResource) -> AssetCheckResult:
        settings, session = lab.settings(), spark.session()
        gold = _scoped(session.read.format("delta").load(lake.path(settings, lake.gold_table(spec.name))), run_dates(context))
        coverage = {"require_minute_coverage": settings.gate_minute_coverage} if params else {}
        return _gx(run_suite(settings.home, f"gold_{spec.name}", gold, **coverage))

    return _check


def divergence_check(spec: views.ViewSpec):
    @asset_check(asset=AssetKey(f"gold_{spec.name}"), blocking=True, name=f"divergence_{spec.name}",
                 description=f"batch vs speed on the windows of {spec.name} both hold that are final at T")
    def _check(lab: LabSettings, spark: SparkResource, serving: ServingResource) -> AssetCheckResult:
        settings, session = lab.settings(), spark.session()
        T = views.final_through(silver_watermark(session, settings), settings.allowed_lateness_s)
        offsets = lake.bronze_offsets_held(session, settings)
        return _gate(reconcile.divergence(session, settings, serving.engine(), spec, T, offsets))

    return _check


@asset_check(asset=AssetKey("gold_driver_earnings_daily"), blocking=True, name="ledger_reconciliation",
             additional_deps=[AssetKey("gold_revenue_per_minute")],
             description="revenue and driver earnings against the payments ledger, by day, to the cent")
def ledger_reconciliation(lab: LabSettings, spark: SparkResource, serving: ServingResource) -> AssetCheckResult:
    settings, session = lab.settings(), spark.session()
    return _gate(reconcile.reconcile_with_ledger(session, settings, serving.engine(), silver_watermark(session, settings)))


@asset_check(asset=AssetKey("gold_user_sessions"), blocking=True, name="gx_gold_user_sessions",
             description="GX suite gold_user_sessions")
def gx_gold_user_sessions(context: AssetCheckExecutionContext, lab: LabSettings, spark: SparkResource) -> AssetCheckResult:
    settings, session = lab.settings(), spark.session()
    gold = _scoped(session.read.format("delta").load(lake.path(settings, lake.gold_table("user_sessions"))), run_dates(context))
    return _gx(run_suite(settings.home, "gold_user_sessions", gold))


quality_gates = [
    gx_gold_user_sessions,
    gx_bronze_events,
    gx_silver_events,
    *(gx_gold_check(spec) for spec in views.VIEWS.values()),
    *(divergence_check(spec) for spec in views.VIEWS.values()),
    ledger_reconciliation,
]
