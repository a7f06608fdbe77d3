"""Blocking quality gates: Great Expectations suites on bronze, silver and every gold view, gold
against the payments ledger, and batch against speed (divergence). Each gate has a severity
(lklab.core.gates): a failed `fail` gate stops the promotion step downstream, so the previous published
build stays, and records itself on the run's batch_runs row; a failed `warn` gate is reported
to Dagster as a WARN check result, which does not block."""
from datetime import date

from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, AssetKey, MetadataValue, asset_check

from assets.lambda_arch.lake import bronze_events, silver_events
from expectations.runner import GateResult, run_suite
from lklab.lake import tables as lake
from lklab.lake import reconcile
from lklab.lambda_arch import runs
from lklab.evolution import history
from lklab import views
from lklab.lake.tables import silver_watermark
from lklab.core.gates import quality_url, severity, suite_severities
from lklab.serving import gate_log
from lklab.serving.publish import LAMBDA
from lklab.core.gates import status as gate_status
from orchestration.partitions import RANGE_TAGS
from orchestration.resources import LabSettings, ServingResource, SparkResource



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


def _name(context: AssetCheckExecutionContext) -> str:
    return context.check_specs[0].name


def _subject(context: AssetCheckExecutionContext) -> str:
    dates = run_dates(context)
    return "every event date" if dates is None else f"event dates {dates[0]}…{date.fromordinal(dates[1].toordinal() - 1)}"


def _result(context: AssetCheckExecutionContext, serving: ServingResource, status: str, reason: str,
            metadata: dict, diverged: list[dict] | None = None, data_docs: str | None = None) -> AssetCheckResult:
    """pass, warn (failed, WARN severity: shown, not blocking) or fail (ERROR: blocks, and is
    recorded on the run's batch_runs row with the windows it found diverged). Every outcome goes
    to the gate log the dashboard shows."""
    spec = context.check_specs[0]
    gate = f"{spec.asset_key.to_user_string()}.{spec.name}"
    if status == "fail":
        runs.record_gate(serving.engine(), context.run.run_id, gate, reason, diverged)
    gate_log.record(serving.engine(), arch=LAMBDA, subject=_subject(context), gate=gate, status=status, summary=reason,
                    run_id=context.run.run_id, data_docs=data_docs)
    return AssetCheckResult(passed=status == "pass", description=reason, metadata=metadata,
                            severity=AssetCheckSeverity.ERROR if status == "fail" else AssetCheckSeverity.WARN)


def _gx(context: AssetCheckExecutionContext, lab: LabSettings, serving: ServingResource, result: GateResult) -> AssetCheckResult:
    links = {"data_docs_page": MetadataValue.url(quality_url(lab.settings(), result.data_docs_page))} if result.data_docs_page else {}
    return _result(context, serving, result.status, result.summary(), {
        "failures": MetadataValue.md("\n".join(f"- {line}" for line in result.failures) or "none"),
        "warnings": MetadataValue.md("\n".join(f"- {line}" for line in result.warnings) or "none"),
        "expectations": result.evaluated,
        "data_docs": MetadataValue.path(str(result.data_docs_index or "")),
        **links,
    }, data_docs=result.data_docs_page)


def _gate(context: AssetCheckExecutionContext, lab: LabSettings, serving: ServingResource,
          report: reconcile.GateReport) -> AssetCheckResult:
    status = gate_status(report.passed, severity(lab.settings().gate_severity, _name(context)))
    return _result(context, serving, status, report.summary, {
        "differences": MetadataValue.md("\n".join(f"- {line}" for line in report.differences) or "none"),
        "details": MetadataValue.json(report.details),
    }, report.details.get("diverged"))


def _suite(context: AssetCheckExecutionContext, lab: LabSettings, serving: ServingResource, table: str, frame) -> AssetCheckResult:
    settings = lab.settings()
    return _gx(context, lab, serving, run_suite(settings.home, table, frame, **suite_severities(settings, table)))


@asset_check(asset=bronze_events, blocking=True, name="gx_bronze_events", description="GX suite bronze_events")
def gx_bronze_events(context: AssetCheckExecutionContext, lab: LabSettings, spark: SparkResource,
                     serving: ServingResource) -> AssetCheckResult:
    settings, session = lab.settings(), spark.session()
    return _suite(context, lab, serving, "bronze_events", session.read.format("delta").load(lake.path(settings, lake.BRONZE)))


@asset_check(asset=silver_events, blocking=True, name="gx_silver_events", description="GX suite silver_events")
def gx_silver_events(context: AssetCheckExecutionContext, lab: LabSettings, spark: SparkResource,
                     serving: ServingResource) -> AssetCheckResult:
    settings, session = lab.settings(), spark.session()
    silver = _scoped(session.read.format("delta").load(lake.path(settings, lake.SILVER)), run_dates(context))
    return _suite(context, lab, serving, "silver_events", silver)


def gx_gold_check(spec: views.ViewSpec):
    @asset_check(asset=AssetKey(f"gold_{spec.name}"), blocking=True, name=f"gx_gold_{spec.name}",
                 description=f"GX suite gold_{spec.name}")
    def _check(context: AssetCheckExecutionContext, lab: LabSettings, spark: SparkResource, serving: ServingResource) -> AssetCheckResult:
        settings, session = lab.settings(), spark.session()
        gold = _scoped(session.read.format("delta").load(lake.path(settings, lake.gold_table(spec.name))), run_dates(context))
        return _suite(context, lab, serving, f"gold_{spec.name}", gold)

    return _check


def divergence_check(spec: views.ViewSpec):
    @asset_check(asset=AssetKey(f"gold_{spec.name}"), blocking=True, name=f"divergence_{spec.name}",
                 description=f"batch vs speed on the windows of {spec.name} both hold that are final at T")
    def _check(context: AssetCheckExecutionContext, lab: LabSettings, spark: SparkResource, serving: ServingResource) -> AssetCheckResult:
        settings, session = lab.settings(), spark.session()
        T = views.final_through(silver_watermark(session, settings), settings.allowed_lateness_s)
        offsets = lake.bronze_offsets_held(session, settings)
        return _gate(context, lab, serving, reconcile.divergence(session, settings, serving.engine(), spec, T, offsets))

    return _check


@asset_check(asset=AssetKey("gold_driver_earnings_daily"), blocking=True, name="ledger_reconciliation",
             additional_deps=[AssetKey("gold_revenue_per_minute")],
             description="revenue and driver earnings against the payments ledger, by day, to the cent")
def ledger_reconciliation(context: AssetCheckExecutionContext, lab: LabSettings, spark: SparkResource,
                          serving: ServingResource) -> AssetCheckResult:
    settings, session = lab.settings(), spark.session()
    return _gate(context, lab, serving, reconcile.reconcile_with_ledger(session, settings, serving.engine(), silver_watermark(session, settings)))


@asset_check(asset=bronze_events, blocking=True, name="history_readable",
             description="when a batch logic reads a field an older schema version lacks (revenue v2: tip_cents), every "
                         "record of the log (Kafka and bronze) must decode with the current code")
def history_readable(context: AssetCheckExecutionContext, lab: LabSettings, serving: ServingResource) -> AssetCheckResult:
    settings = lab.settings()
    fields = sorted({f for spec in views.VIEWS.values() for f in history.new_fields(views.batch_spec(spec, settings))})
    if not fields:
        return _gate(context, lab, serving, reconcile.GateReport(True, "no batch logic reads a field an older schema version lacks"))
    try:
        report = history.verify_history(settings)
    except history.HistoryError as exc:
        return _gate(context, lab, serving, reconcile.GateReport(False, f"reads {', '.join(fields)}; history unreadable: {exc}"))
    lines = list(history.gate_lines(report))
    return _gate(context, lab, serving, reconcile.GateReport(report.readable, f"reads {', '.join(fields)}: {lines[0]}", lines[1:],
                                                             {"unreadable": len(report.blocking)}))


quality_gates = [
    gx_bronze_events,
    history_readable,
    gx_silver_events,
    *(gx_gold_check(spec) for spec in views.VIEWS.values()),
    *(divergence_check(spec) for spec in views.SPEED_LAYER.values()),
    ledger_reconciliation,
]
