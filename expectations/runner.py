"""Run the lake suites through GX 1.x (file context, Spark datasource, checkpoint + Data Docs).

Dagster asset checks call `run_suite(home, table, df)` and turn the returned `GateResult`
into an `AssetCheckResult`. Everything GX writes lives under `<home>/gx`.

The Spark DataFrame is validated in Spark through GX's Spark datasource (`add_spark`, a
dataframe asset, a whole-dataframe batch definition); nothing is collected to pandas.
Verified with pyspark 4.0.0 and great_expectations 1.24.1.
"""
from __future__ import annotations

import fcntl
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

# Before GX is imported: its analytics client reads this at context creation, and a lab must
# not phone home.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

import great_expectations as gx  # noqa: E402
from great_expectations.checkpoint import UpdateDataDocsAction  # noqa: E402
from great_expectations.data_context.types.base import ProgressBarsConfig  # noqa: E402
from pyspark.sql import DataFrame  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from expectations import offline_docs  # noqa: E402
from expectations.suites import (  # noqa: E402
    GOLD_REVENUE_PER_MINUTE,
    build_suite,
    minute_coverage,
    minute_coverage_gaps,
    minute_coverage_suite,
)
from lklab.core.gates import DATA_DOCS_SITE, GATES, MINUTE_COVERAGE, Severity, data_docs_site, gx_root  # noqa: E402

DATASOURCE = "lklab_lake"
BATCH_DEFINITION = "whole_dataframe"
DOCS_SITE = DATA_DOCS_SITE
SAMPLE = 5  # unexpected values quoted per failure line
# Counts and percentages for every rule, no value samples (see _with_samples). Never COMPLETE:
# it collects every unexpected value of a big table to the driver.
GATE_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 0}
SAMPLE_RESULT_FORMAT = {"result_format": "SUMMARY", "partial_unexpected_count": 20}

# gx.get_context() sets a process-wide "current context" that ValidationDefinition and
# Checkpoint objects resolve through, so two gates in one process must not interleave.
_process_lock = threading.RLock()


@dataclass(frozen=True)
class GateResult:
    """Outcome of one quality gate: one line per failed expectation, and where Data Docs are.
    `failures` block (severity fail); `warnings` are failed expectations of severity warn: shown,
    never blocking. `passed` is False only when something failed."""

    table: str
    suite: str
    passed: bool
    failures: list[str] = field(default_factory=list)
    evaluated: int = 0
    data_docs_index: Path | None = None
    warnings: list[str] = field(default_factory=list)
    data_docs_page: str | None = None  # this validation's page, relative to the site (the API serves it at /quality/<page>)

    @property
    def status(self) -> str:
        """pass | warn | fail, as every command prints a gate."""
        return "fail" if not self.passed else ("warn" if self.warnings else "pass")

    def summary(self) -> str:
        """One line: the verdict and the first failure (or warning)."""
        first = (self.failures or self.warnings or [""])[0]
        more = len(self.failures) + len(self.warnings) - 1
        tail = f": {first}" + (f" (+{more} more)" if more > 0 else "") if first else ""
        return f"{self.suite} ({self.evaluated} expectations){tail}"

    def describe(self) -> str:
        verdict = {"pass": "passed", "warn": "passed with warnings", "fail": "FAILED"}[self.status]
        head = f"{self.suite}: {verdict} ({self.evaluated} expectations)"
        return "\n".join([head, *(f"  - {line}" for line in self.failures), *(f"  - warn: {line}" for line in self.warnings)])


def gx_context(home: Path) -> gx.data_context.FileDataContext:
    """The file-backed GX context at `<home>/gx`: scaffolded on first use, reused afterwards."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    # project_root_dir=home makes GX use (or scaffold) <home>/gx; never cwd or GX_HOME.
    context = gx.get_context(mode="file", project_root_dir=str(home))
    variables = context.variables
    sites = dict(variables.data_docs_sites or {})
    site = sites.get(DOCS_SITE)
    if (variables.analytics_enabled is not False or not _bars_off(variables.progress_bars)
            or variables.config_variables_file_path or (site is not None and site != _with_cached_views(site))):
        # Persisted once in great_expectations.yml: no tqdm "Calculating Metrics" bars, no analytics;
        # no config-variables file (GX re-read it on every substitution, about 160 times a gate,
        # and the lab keeps no credentials in GX's config); page views that compile their
        # templates once per process.
        variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        variables.analytics_enabled = False
        variables.config_variables_file_path = None
        if site is not None:
            variables.data_docs_sites = {**sites, DOCS_SITE: _with_cached_views(site)}
        variables.save()
    return context


def _with_cached_views(site: dict) -> dict:
    """The Data Docs site with expectations.docs_views' page views (GX's site `view` settings)."""
    page = {"module_name": "expectations.docs_views", "class_name": "CachedJinjaPageView"}
    index = {"module_name": "expectations.docs_views", "class_name": "CachedJinjaIndexPageView"}
    sections = {section: {"view": dict(page)} for section in ("expectations", "validations", "profiling")}  # copies: no YAML anchors
    return {**site, "site_section_builders": sections, "site_index_builder": {**dict(site.get("site_index_builder") or {}), "view": index}}


def _bars_off(bars: Any) -> bool:
    # A ProgressBarsConfig when set in-process, a plain dict once read back from the yml.
    if bars is None:
        return False
    flags = bars if isinstance(bars, dict) else {k: getattr(bars, k, None) for k in ("globally", "metric_calculations")}
    return flags.get("globally") is False and flags.get("metric_calculations") is False


def data_docs_index(home: Path) -> Path:
    """The local Data Docs site's index.html (it may not exist before the first run).

    A pure lookup: it does not scaffold a GX project under a home that has none yet.
    """
    if not (gx_root(home) / "great_expectations.yml").is_file():
        return _default_index(home)
    return _docs_index(gx_context(home), home)


def _default_index(home: Path) -> Path:
    return data_docs_site(home) / "index.html"


def _docs_index(context, home: Path) -> Path:
    for site in context.get_docs_sites_urls(site_name=DOCS_SITE, only_if_exists=False):
        if site.get("site_url"):
            return _file_url_path(site["site_url"])
    return _default_index(home)


def build_data_docs(home: Path) -> Path:
    """Rebuild the whole local Data Docs site from the stored suites and results; returns index.html."""
    with _locked(home):
        context = gx_context(home)
        context.build_data_docs(site_names=[DOCS_SITE])
        return _offline(_docs_index(context, home))


def _offline(index: Path) -> Path:
    """Point the site's pages at local copies of the scripts and styles GX loads from CDNs."""
    if index.is_file():
        offline_docs.localize(index.parent)
    return index


def run_suite(home: Path, table: str, df: DataFrame, **suite_params: Any) -> GateResult:
    """Validate a Spark DataFrame of `table` against its suite; updates Data Docs.

    `suite_params` go to the table's suite builder (e.g. min_time, max_time). For
    gold_revenue_per_minute, `require_minute_coverage` (default True) also validates
    `minute_coverage(df)` with the coverage suite, at `coverage_severity` (default: the gate's
    default in lklab.core.gates, warn): its failures go to `warnings` or, at fail, to `failures`.
    `severity` (default fail) is that of the table's own suite.
    Repeated calls add-or-update every GX object, so the latest call's parameters win.
    """
    gold_revenue = table == GOLD_REVENUE_PER_MINUTE
    require_coverage = bool(suite_params.pop("require_minute_coverage", True)) if gold_revenue else False
    coverage_level = Severity(suite_params.pop("coverage_severity", GATES[MINUTE_COVERAGE][0])) if gold_revenue else None
    level = Severity(suite_params.pop("severity", Severity.FAIL))
    suite = build_suite(table, **suite_params)
    with _locked(home), _cached(df):
        context = gx_context(home)
        validated = _validate(context, suite, df)
        passed, failures, evaluated = validated.passed, validated.failures, validated.evaluated
        warnings: list[str] = []
        if level != Severity.FAIL:
            passed, failures, warnings = True, [], failures
        if require_coverage:
            coverage = minute_coverage(df)
            with _cached(coverage):
                coverage_result = _validate(context, minute_coverage_suite(), coverage)
                ok, lines, count = coverage_result.passed, coverage_result.failures, coverage_result.evaluated
                if any("(missing_minutes)" in line for line in lines):
                    # GX only sees per-city counts; name the actual missing minutes on the same line.
                    gaps = _gap_summary(coverage, df)
                    lines = [f"{line}; {gaps}" if "(missing_minutes)" in line else line for line in lines]
            evaluated += count
            if coverage_level == Severity.FAIL:
                passed, failures = passed and ok, failures + lines
            else:
                warnings += lines
        index = _offline(_docs_index(context, home))
    return GateResult(
        table=table,
        suite=suite.name,
        passed=passed,
        failures=failures,
        evaluated=evaluated,
        data_docs_index=index if index.is_file() else None,
        warnings=warnings,
        data_docs_page=validated.page,
    )


@dataclass(frozen=True)
class Validated:
    passed: bool
    failures: list[str]
    evaluated: int
    page: str | None  # the validation's Data Docs page, relative to the site


def _validate(context, suite: gx.ExpectationSuite, df: DataFrame) -> Validated:
    """Add-or-update asset, batch definition, suite, validation definition, checkpoint; run it."""
    batch_definition = _batch_definition(context, suite.name)
    suite = context.suites.add_or_update(suite)
    validation = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(name=suite.name, data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=suite.name,
            validation_definitions=[validation],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[DOCS_SITE])],
            result_format=GATE_RESULT_FORMAT,
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": df})
    failures: list[str] = []
    evaluated = 0
    for run in result.run_results.values():
        evaluated += int(run.statistics.get("evaluated_expectations", 0))
        failed = [r for r in run.results if not r.success]
        failed = _with_samples(batch_definition, df, failed)
        failures += [_failure_line(r, df) for r in failed]
    return Validated(result.success, failures, evaluated, _validation_page(context, list(result.run_results)))


def _validation_page(context, identifiers: list) -> str | None:
    """The Data Docs page of the (first) validation a checkpoint ran, relative to the site root."""
    for identifier in identifiers[:1]:
        for site in context.get_docs_sites_urls(resource_identifier=identifier, site_name=DOCS_SITE, only_if_exists=False):
            if site.get("site_url"):
                page = _file_url_path(site["site_url"])
                try:
                    return page.relative_to(_docs_index(context, Path(context.root_directory).parent).parent).as_posix()
                except ValueError:
                    return None
    return None


def _with_samples(batch_definition, df: DataFrame, failed: list) -> list:
    """Re-validate only the failed row-level rules, with a few unexpected values each.

    The gate itself runs with partial_unexpected_count=0: otherwise GX runs one extra Spark
    job per column rule even when it passes, which doubles the cost of a passing gate.
    """
    needs = [r for r in failed if "unexpected_count" in (r.result or {}) and _exception_message(r.exception_info) is None]
    if not needs:
        return failed
    batch = batch_definition.get_batch(batch_parameters={"dataframe": df})
    # One unsaved suite, so GX bundles the metrics; batch.validate stores nothing and leaves
    # Data Docs alone: the samples are only for the failure lines.
    probe = gx.ExpectationSuite(name="lklab_samples", expectations=[_unsaved(r.expectation_config) for r in needs])
    again = batch.validate(probe, result_format=SAMPLE_RESULT_FORMAT).results
    sampled = {id(r): s for r, s in zip(needs, again) if s.expectation_config.type == r.expectation_config.type and not s.success}
    return [sampled.get(id(r), r) for r in failed]


def _unsaved(config) -> gx.expectations.Expectation:
    # An expectation that carries a stored suite's id may not join another suite.
    expectation = config.to_domain_obj()
    expectation.id = None
    return expectation


def _batch_definition(context, asset_name: str):
    try:
        source = context.data_sources.get(DATASOURCE)
    except KeyError:
        # persist=False: GX would otherwise persist() every batch and never unpersist it;
        # run_suite caches the frame itself for the duration of one gate.
        source = context.data_sources.add_spark(name=DATASOURCE, persist=False)
    try:
        asset = source.get_asset(asset_name)
    except LookupError:
        asset = source.add_dataframe_asset(name=asset_name)
    try:
        return asset.get_batch_definition(BATCH_DEFINITION)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(BATCH_DEFINITION)


def _failure_line(result, df: DataFrame) -> str:
    """`<expectation type>(<columns>) [description]: <what was observed>` on one line."""
    config = result.expectation_config
    kwargs = config.kwargs
    columns = kwargs.get("column") or ", ".join(kwargs.get("column_list") or ())
    if not columns and "column_A" in kwargs:
        columns = f"{kwargs['column_A']}, {kwargs['column_B']}"
    label = f"{config.type}({columns})" if columns else config.type
    if config.description:
        label += f" [{config.description}]"
    error = _exception_message(result.exception_info)
    if error is not None:
        return f"{label}: error: {error}"
    res = result.result or {}
    if "unexpected_count" in res:
        total = res.get("element_count")
        sample = _sample(res.get("partial_unexpected_list") or [])
        return f"{label}: {res['unexpected_count']} unexpected of {total} rows, e.g. {sample}"
    details = res.get("details") or {}
    if "unexpected_rows_query" in kwargs:
        # GX returns the offending rows only with result_format COMPLETE (which would also collect
        # every unexpected value of every other rule), so re-run the query for a small sample.
        rows = details.get("unexpected_rows") or _query_sample(df, kwargs["unexpected_rows_query"])
        return f"{label}: {res.get('observed_value')} unexpected rows, e.g. {_sample(rows)}"
    mismatched = details.get("mismatched")
    if isinstance(mismatched, dict):  # ExpectTableColumnsToMatchSet
        return f"{label}: " + "; ".join(f"{k} {sorted(v)}" for k, v in mismatched.items() if v)
    return f"{label}: observed {_fmt(res.get('observed_value'))}"


def _exception_message(info: Any) -> str | None:
    """GX reports errors either flat or keyed by the metric that raised; None when nothing raised."""
    if not isinstance(info, dict):
        return None
    entries = [info] if "raised_exception" in info else [v for v in info.values() if isinstance(v, dict)]
    for entry in entries:
        if entry.get("raised_exception") or entry.get("exception_message"):
            lines = str(entry.get("exception_message") or "exception").strip().splitlines()
            return lines[0][:300] if lines else "exception"
    return None


def _query_sample(df: DataFrame, query: str) -> list[dict]:
    view = f"lklab_gx_sample_{uuid.uuid4().hex}"
    df.createOrReplaceTempView(view)
    try:
        return [row.asDict() for row in df.sparkSession.sql(query.replace("{batch}", view)).limit(SAMPLE).collect()]
    finally:
        df.sparkSession.catalog.dropTempView(view)


def _gap_summary(coverage: DataFrame, revenue: DataFrame) -> str:
    """Names the cities with gaps and their first missing minutes (only computed on failure)."""
    cities = coverage.where("missing_minutes > 0").orderBy("city").limit(SAMPLE).collect()
    names = [c["city"] for c in cities]
    gaps = minute_coverage_gaps(revenue).where(F.col("city").isin(names)).limit(SAMPLE * 4).collect()
    first: dict[str, list[str]] = {}
    for row in gaps:
        first.setdefault(row["city"], []).append(_fmt(row["missing_minute"]))
    parts = [
        f"{c['city']}: {c['missing_minutes']} of {c['expected_minutes']} minutes missing, e.g. {first.get(c['city'], [])[:3]}"
        for c in cities
    ]
    return "gaps by city: " + "; ".join(parts)


def _sample(values: list) -> str:
    seen: list[str] = []
    for value in values:
        text = _fmt(value)
        if text not in seen:
            seen.append(text)
        if len(seen) == SAMPLE:
            break
    return "[" + ", ".join(seen) + "]"


def _fmt(value: Any) -> str:
    if isinstance(value, datetime):
        # PySpark collects timestamps as naive local times; print them as UTC instants.
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_fmt(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return repr(value)


def _file_url_path(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Serialise gates on one GX home across threads and processes (Dagster runs steps in
    subprocesses): great_expectations.yml holds every asset, and concurrent saves lose updates."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    with _process_lock, open(home / ".gx.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _cached(df: DataFrame) -> Iterator[None]:
    """Cache the frame for the ~10 Spark jobs of one validation, unless the caller already did."""
    owned = not df.is_cached
    if owned:
        df.persist()
    try:
        yield
    finally:
        if owned:
            df.unpersist()
