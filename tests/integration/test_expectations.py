"""GX 1.x quality gates on a real Spark session, with purpose-built frames for every lake table.

Each valid frame passes its suite. Each broken frame breaks every rule on a different row, and
the gate must report exactly the set of expected failure lines. Each line names the rule and
the column, and quotes the value that broke it, so every line can be traced to its own break.
(A GX run costs a few seconds of Spark jobs, so one frame carries several breaks.)
"""
from __future__ import annotations

import json
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import jinja2
import pytest
from cryptography.fernet import Fernet
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from expectations.runner import GateResult, build_data_docs, data_docs_index, gx_context, run_suite
from expectations.suites import (
    BRONZE_EVENTS,
    GOLD_DAILY_ACTIVE_USERS,
    GOLD_DRIVER_EARNINGS_DAILY,
    GOLD_REVENUE_PER_MINUTE,
    SILVER_EVENTS,
    build_suite,
    minute_coverage,
    minute_coverage_gaps,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

DAY = date(2026, 11, 17)
TOKEN = Fernet(Fernet.generate_key()).encrypt(b'{"name":"Ada","phone":"+49"}').decode()


def at(hhmm: str, day: date = DAY) -> datetime:
    return datetime.fromisoformat(f"{day.isoformat()}T{hhmm}").replace(tzinfo=timezone.utc)


def utc(ts: datetime) -> datetime:
    # PySpark collects timestamps as naive local times.
    return ts.astimezone(timezone.utc)


def frame(spark, rows: list[tuple], schema: str) -> DataFrame:
    # One partition: these frames have a handful of rows, and GX runs ~20 Spark jobs per suite.
    return spark.createDataFrame(rows, schema).coalesce(1)


# ---------------------------------------------------------------- valid frames

BRONZE_SCHEMA = (
    "topic string, partition int, offset long, kafka_timestamp timestamp, key string, value string, "
    "ingested_at timestamp"
)
SILVER_SCHEMA = (
    "event_id string, event_version long, schema_version long, event_type string, ride_id string, "
    "user_id string, driver_id string, city string, amount_cents long, pii string, tip_cents long, currency string, "
    "event_time timestamp, kafka_partition int, kafka_offset long, event_date date"
)


def bronze(spark) -> DataFrame:
    rows = [
        ("rides.events", p, o, at(f"10:0{o}"), f"r{o}", f'{{"event_id":"e{p}{o}"}}', at("10:30"))
        for p in (0, 1)
        for o in range(3)
    ]
    rows.append(("rides.events", 2, 0, at("10:00"), None, "{}", at("10:30")))  # null key is legal in bronze
    return frame(spark, rows, BRONZE_SCHEMA)


def ev(eid, etype, time, city="berlin", amount=None, driver="d1", pii=None, offset=0, day=None, tip=0, currency="EUR"):
    ts = time if isinstance(time, datetime) else at(time)
    return (eid, 1, 2, etype, "r-" + eid[:2], "u-" + eid[:2], driver, city, amount, pii, tip, currency, ts, 0, offset,
            day or ts.date())


SILVER_ROWS = [
    ev("r1-open", "app_opened", "10:00", driver=None, pii=TOKEN, offset=0),
    ev("r1-req", "ride_requested", "10:01", driver=None, offset=1),
    ev("r1-start", "ride_started", "10:03", offset=2),
    ev("r1-done", "ride_completed", "10:10", offset=3),
    ev("r1-pay", "payment_captured", "10:11", amount=1250, offset=4, tip=150, currency="CHF"),
    ev("r1-ref", "payment_refunded", "10:20", amount=250, offset=5),
    ev("r2-open", "app_opened", "23:59", city="paris", driver=None, offset=6, tip=None, currency=None),  # written before v2
]


def silver(spark) -> DataFrame:
    return frame(spark, SILVER_ROWS, SILVER_SCHEMA)


def revenue(spark) -> DataFrame:
    rows = [("berlin", at(f"10:0{m}"), 100 * m, 1, DAY) for m in range(5)]
    rows += [("paris", at("10:00"), 500, 2, DAY), ("paris", at("10:01"), -200, 1, DAY)]  # refunds can go negative
    return frame(spark, rows, "city string, window_start timestamp, revenue_cents long, events int, event_date date")


def dau(spark) -> DataFrame:
    rows = [("berlin", at("00:00"), 12, DAY), ("paris", at("00:00"), 3, DAY)]
    return frame(spark, rows, "city string, window_start timestamp, active_users long, event_date date")


def earnings(spark) -> DataFrame:
    rows = [("d1", at("00:00"), 1000, 2, DAY), ("d2", at("00:00"), -250, 1, DAY)]
    return frame(spark, rows, "driver_id string, window_start timestamp, earnings_cents long, events int, event_date date")


VALID = {
    BRONZE_EVENTS: bronze,
    SILVER_EVENTS: silver,
    GOLD_REVENUE_PER_MINUTE: revenue,
    GOLD_DAILY_ACTIVE_USERS: dau,
    GOLD_DRIVER_EARNINGS_DAILY: earnings,
}


def where(df: DataFrame, condition: str, **updates: str) -> DataFrame:
    """Set columns (to SQL expressions) on the rows matching a SQL condition."""
    for column, expression in updates.items():
        df = df.withColumn(column, F.when(F.expr(condition), F.expr(expression)).otherwise(F.col(column)))
    return df


def failing(result: GateResult) -> dict[str, str]:
    """Failure lines keyed by their head, `type(columns) [description]`: the rule and the column."""
    assert not result.passed
    lines = {line.split(": ", 1)[0]: line for line in result.failures}
    assert len(lines) == len(result.failures), result.describe()
    return lines


# ---------------------------------------------------------------- valid data passes


def counting(compile_, names: list):
    def compile(self, source, name=None, *args, **kwargs):
        names.append(name)
        return compile_(self, source, name, *args, **kwargs)
    return compile


def test_valid_tables_pass_every_suite_and_update_data_docs(spark, tmp_path: Path, monkeypatch) -> None:
    assert not data_docs_index(tmp_path).exists() and not (tmp_path / "gx").exists()  # a lookup, not a scaffold
    for table, make in VALID.items():
        result = run_suite(tmp_path, table, make(spark))
        assert result.passed, result.describe()
        assert result.failures == []
        assert (result.table, result.suite) == (table, table)
        coverage_rules = 3 if table == GOLD_REVENUE_PER_MINUTE else 0
        assert result.evaluated == len(build_suite(table).expectations) + coverage_rules

    index = data_docs_index(tmp_path)
    assert index == result.data_docs_index
    assert index.is_file() and index.suffix == ".html" and index.is_relative_to(tmp_path / "gx")
    html = index.read_text()
    assert "<html" in html.lower() and SILVER_EVENTS in html and GOLD_REVENUE_PER_MINUTE in html
    assert build_data_docs(tmp_path) == index and index.is_file()
    # GX wrote nothing outside <home>/gx (plus the lock file next to it).
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gx.lock", "gx"]
    # Progress bars and analytics are off in the persisted project config.
    config = (tmp_path / "gx" / "great_expectations.yml").read_text()
    assert "analytics_enabled: false" in config and "globally: false" in config
    # No config-variables file to re-read on every substitution; page views that compile once.
    assert "config_variables_file_path:\n" in config and "CachedJinjaPageView" in config and "CachedJinjaIndexPageView" in config

    # Same home, same table again: everything is updated in place, and the latest call's
    # parameters (here a tighter upper time bound) are what the stored suite holds. Its Data
    # Docs pages render from templates compiled before: no template is compiled again.
    compiled = []
    monkeypatch.setattr(jinja2.Environment, "compile", counting(jinja2.Environment.compile, compiled))
    again = run_suite(tmp_path, SILVER_EVENTS, silver(spark), max_time=at("10:05"))
    assert not [name for name in compiled if str(name).endswith(".j2")], compiled
    assert list(failing(again)) == ["expect_column_values_to_be_between(event_time)"]
    assert "4 unexpected of 7 rows" in again.failures[0] and "2026-11-17T10:10:00Z" in again.failures[0]
    assert again.evaluated == len(build_suite(SILVER_EVENTS).expectations)
    stored = json.loads((tmp_path / "gx" / "expectations" / f"{SILVER_EVENTS}.json").read_text())
    assert len(stored["expectations"]) == again.evaluated
    assert "2026-11-17T10:05:00" in json.dumps(stored)
    context = gx_context(tmp_path)
    assert sorted(c.name for c in context.checkpoints.all()) == sorted([*VALID, f"{GOLD_REVENUE_PER_MINUTE}_coverage"])
    assert len(context.validation_definitions.all()) == len(VALID) + 1


# ---------------------------------------------------------------- silver


def test_each_broken_silver_rule_fails_with_a_line_naming_rule_and_column(spark, tmp_path: Path) -> None:
    future = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=7)
    rows = [
        *SILVER_ROWS,
        ev("r1-pay", "payment_captured", "10:11", amount=1250, offset=7),  # duplicate event_id
        ev("r3-open", "app_opened", at("10:10", date(1999, 12, 31)), driver=None, offset=8),  # before 2000
        ev("r4-open", "app_opened", future, driver=None, offset=9),  # more than a day ahead
        ev("r5-open", "app_opened", "11:00", driver=None, offset=10, day=date(2026, 11, 18)),  # wrong event_date
    ]
    df = frame(spark, rows, SILVER_SCHEMA)
    df = where(df, "event_id = 'r1-start'", city="CAST(NULL AS STRING)")
    df = where(df, "event_id = 'r1-ref'", amount_cents="-250")
    df = where(df, "event_id = 'r1-req'", event_type="'ride_teleported'")
    df = where(df, "event_id = 'r1-open'", pii="'Ada +49'")
    df = where(df, "event_id = 'r2-open'", amount_cents="10")
    df = where(df, "event_id = 'r1-done'", tip_cents="5", currency="'eur'")  # schema v2: a tip on a non-capture, a bad code
    df = where(df, "event_id = 'r1-pay' AND kafka_offset = 4", tip_cents="-1")
    # Schema drift too; no rule reads driver_id, so only the schema rule can notice it is gone.
    df = df.drop("driver_id").withColumn("surge_multiplier", F.lit(1.5))

    lines = failing(run_suite(tmp_path, SILVER_EVENTS, df))

    expected = {
        "expect_table_columns_to_match_set": ["missing ['driver_id']", "unexpected ['surge_multiplier']"],
        "expect_column_values_to_be_unique(event_id)": ["2 unexpected of 11 rows", "'r1-pay'"],
        "expect_column_values_to_not_be_null(city)": ["1 unexpected of 11 rows"],
        "expect_column_values_to_be_between(amount_cents)": ["1 unexpected", "-250"],
        "expect_column_values_to_be_between(event_time)": ["2 unexpected", "1999-12-31T10:10:00Z", future.isoformat()[:19]],
        "expect_column_values_to_be_in_set(event_type)": ["1 unexpected", "'ride_teleported'"],
        "expect_column_values_to_match_regex(pii) [pii is a Fernet token, never plaintext]": ["'Ada +49'"],
        "unexpected_rows_expectation [amount_cents is set exactly on payment events]": ["1 unexpected rows", "r2-open"],
        "unexpected_rows_expectation [event_date = to_date(event_time)]": ["1 unexpected rows", "r5-open", "2026-11-18"],
        "expect_column_values_to_be_between(tip_cents)": ["1 unexpected", "-1"],
        "expect_column_values_to_match_regex(currency)": ["'eur'"],
        "unexpected_rows_expectation [a tip only on payment_captured]": ["1 unexpected rows", "r1-done"],
    }
    assert set(lines) == set(expected), "\n".join(lines.values())
    for head, fragments in expected.items():
        for fragment in fragments:
            assert fragment in lines[head], lines[head]


# ---------------------------------------------------------------- bronze


def test_bronze_schema_drift_duplicate_offset_and_null_value_fail(spark, tmp_path: Path) -> None:
    df = bronze(spark)
    broken = (
        where(df, "partition = 1 AND offset = 2", value="CAST(NULL AS STRING)")
        .unionByName(df.where("partition = 0 AND offset = 1"))
        .drop("ingested_at")
        .withColumn("headers", F.lit("{}"))
    )

    lines = failing(run_suite(tmp_path, BRONZE_EVENTS, broken))

    unique = "expect_compound_columns_to_be_unique(topic, partition, offset)"
    assert set(lines) == {
        "expect_table_columns_to_match_set",
        "expect_column_values_to_not_be_null(ingested_at)",
        unique,
        "expect_column_values_to_not_be_null(value)",
    }
    schema = lines["expect_table_columns_to_match_set"]
    assert "missing ['ingested_at']" in schema and "unexpected ['headers']" in schema
    # A rule on an absent column cannot be evaluated: GX reports an error, never a pass.
    assert lines["expect_column_values_to_not_be_null(ingested_at)"].startswith(
        "expect_column_values_to_not_be_null(ingested_at): error:"
    )
    assert "2 unexpected of 8 rows" in lines[unique] and "{topic='rides.events', partition=0, offset=1}" in lines[unique]
    assert "1 unexpected of 8 rows, e.g. [None]" in lines["expect_column_values_to_not_be_null(value)"]


# ---------------------------------------------------------------- gold


def test_gold_duplicate_keys_bad_counts_and_misaligned_windows_fail(spark, tmp_path: Path) -> None:
    rev = revenue(spark)
    rev = rev.unionByName(rev.where("city = 'paris' AND minute(window_start) = 1"))  # duplicate key
    rev = where(rev, "city = 'berlin' AND minute(window_start) = 4", events="0")  # a row without events
    rev = rev.where("NOT (city = 'berlin' AND minute(window_start) = 2)")  # a gap, legal with coverage off
    result = run_suite(tmp_path, GOLD_REVENUE_PER_MINUTE, rev, require_minute_coverage=False)
    assert result.evaluated == len(build_suite(GOLD_REVENUE_PER_MINUTE).expectations)  # no coverage suite ran
    lines = failing(result)
    assert set(lines) == {
        "expect_compound_columns_to_be_unique(city, window_start)",
        "expect_column_values_to_be_between(events)",
    }
    assert "city='paris', window_start=2026-11-17T10:01:00Z" in lines["expect_compound_columns_to_be_unique(city, window_start)"]
    assert "e.g. [0]" in lines["expect_column_values_to_be_between(events)"]

    users = dau(spark)
    users = users.unionByName(users.where("city = 'berlin'"))  # duplicate key
    users = where(users, "city = 'paris'", active_users="0", window_start="TIMESTAMP'2026-11-17 06:00:00'")
    lines = failing(run_suite(tmp_path, GOLD_DAILY_ACTIVE_USERS, users))
    assert set(lines) == {
        "expect_compound_columns_to_be_unique(city, window_start)",
        "expect_column_values_to_be_between(active_users)",
        "unexpected_rows_expectation [window_start is a UTC day start]",
    }
    assert "city='berlin'" in lines["expect_compound_columns_to_be_unique(city, window_start)"]
    assert "city='paris'" in lines["unexpected_rows_expectation [window_start is a UTC day start]"]

    drivers = earnings(spark)
    drivers = drivers.unionByName(drivers.where("driver_id = 'd2'"))  # duplicate key
    drivers = where(drivers, "driver_id = 'd1'", event_date="DATE'2026-11-18'")  # day != window's day
    lines = failing(run_suite(tmp_path, GOLD_DRIVER_EARNINGS_DAILY, drivers))
    assert set(lines) == {
        "expect_compound_columns_to_be_unique(driver_id, window_start)",
        "unexpected_rows_expectation [event_date = to_date(window_start)]",
    }
    assert "driver_id='d2'" in lines["expect_compound_columns_to_be_unique(driver_id, window_start)"]
    assert "driver_id='d1'" in lines["unexpected_rows_expectation [event_date = to_date(window_start)]"]


def test_a_gap_minute_in_revenue_warns_by_default_and_fails_at_severity_fail(spark, tmp_path: Path) -> None:
    gappy = revenue(spark).where("NOT (city = 'berlin' AND minute(window_start) IN (2, 3))")

    gaps = [(r["city"], utc(r["missing_minute"])) for r in minute_coverage_gaps(gappy).collect()]
    assert gaps == [("berlin", at("10:02")), ("berlin", at("10:03"))]
    coverage = {r["city"]: (r["expected_minutes"], r["present_minutes"], r["missing_minutes"]) for r in minute_coverage(gappy).collect()}
    assert coverage == {"berlin": (5, 3, 2), "paris": (2, 2, 0)}

    head = "expect_column_values_to_be_between(missing_minutes) [every minute between a city's first and last window has a row]"
    default = run_suite(tmp_path, GOLD_REVENUE_PER_MINUTE, gappy)  # coverage is a heuristic: it warns
    assert default.passed and default.status == "warn" and default.failures == [], default.describe()
    assert [line.split(": ", 1)[0] for line in default.warnings] == [head]
    assert "berlin: 2 of 5 minutes missing" in default.summary()

    strict = run_suite(tmp_path, GOLD_REVENUE_PER_MINUTE, gappy, coverage_severity="fail")
    lines = failing(strict)
    assert list(lines) == [head] and strict.status == "fail"
    assert "1 unexpected of 2 rows" in lines[head]
    assert "berlin: 2 of 5 minutes missing, e.g. ['2026-11-17T10:02:00Z', '2026-11-17T10:03:00Z']" in lines[head]


def test_the_kappa_cutover_applies_the_same_severities(spark, tmp_path: Path) -> None:
    from lklab.kappa import cutover
    from lklab.core.config import Settings

    rows = [(r["city"], utc(r["window_start"]), int(r["revenue_cents"]))
            for r in revenue(spark).where("NOT (city = 'berlin' AND minute(window_start) IN (2, 3))").collect()]
    check = cutover._gx_check(Settings(home=tmp_path), spark, "revenue_per_minute", rows, run_suite)
    assert check.passed and check.status == "warn" and "berlin: 2 of 5 minutes missing" in check.summary, check
    strict = Settings(home=tmp_path, gate_severity={"gx_gold_revenue_per_minute.minute_coverage": "fail"})
    assert cutover._gx_check(strict, spark, "revenue_per_minute", rows, run_suite).status == "fail"


def test_unknown_tables_and_parameters_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no suite for table 'gold_nope'"):
        run_suite(tmp_path, "gold_nope", None)
    with pytest.raises(TypeError):
        run_suite(tmp_path, SILVER_EVENTS, None, require_minute_coverage=False)
    with pytest.raises(ValueError, match="is not before"):
        build_suite(SILVER_EVENTS, min_time=datetime(2100, 1, 1))
    assert not (tmp_path / "gx").exists()
