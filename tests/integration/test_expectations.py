"""GX 1.x quality gates on a real Spark session: purpose-built frames for every lake table.

Each valid frame passes its suite; each broken variant breaks one rule (or, for gold, a known
set of rules) and must fail with exactly the failure lines that name that rule and column.
"""
from __future__ import annotations

import json
from datetime import date, datetime
from pathlib import Path

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


def at(hhmm: str) -> datetime:
    # Naive datetimes are read as UTC: the lklab session time zone is UTC.
    return datetime.fromisoformat(f"{DAY.isoformat()}T{hhmm}")


# ---------------------------------------------------------------- frames

BRONZE_SCHEMA = (
    "topic string, partition int, offset long, kafka_timestamp timestamp, key string, value string, "
    "ingested_at timestamp"
)
SILVER_SCHEMA = (
    "event_id string, event_version long, schema_version long, event_type string, ride_id string, "
    "user_id string, driver_id string, city string, amount_cents long, pii string, event_time timestamp, "
    "kafka_partition int, kafka_offset long, event_date date"
)
REVENUE_SCHEMA = "city string, window_start timestamp, revenue_cents long, events int, event_date date"
DAU_SCHEMA = "city string, window_start timestamp, active_users long, event_date date"
EARNINGS_SCHEMA = "driver_id string, window_start timestamp, earnings_cents long, events int, event_date date"


def bronze(spark) -> DataFrame:
    rows = [
        ("rides.events", p, o, at(f"10:0{o}"), f"r{o}", f'{{"event_id":"e{p}{o}"}}', at("10:30"))
        for p in (0, 1)
        for o in range(3)
    ]
    rows.append(("rides.events", 2, 0, at("10:00"), None, "{}", at("10:30")))  # null key is legal in bronze
    return spark.createDataFrame(rows, BRONZE_SCHEMA)


def silver(spark) -> DataFrame:
    def ev(eid, etype, hhmm, city="berlin", amount=None, driver="d1", pii=None, offset=0):
        return (eid, 1, 1, etype, "r-" + eid[:2], "u-" + eid[:2], driver, city, amount, pii, at(hhmm), 0, offset, DAY)

    rows = [
        ev("r1-open", "app_opened", "10:00", driver=None, pii=TOKEN, offset=0),
        ev("r1-req", "ride_requested", "10:01", driver=None, offset=1),
        ev("r1-start", "ride_started", "10:03", offset=2),
        ev("r1-done", "ride_completed", "10:10", offset=3),
        ev("r1-pay", "payment_captured", "10:11", amount=1250, offset=4),
        ev("r1-ref", "payment_refunded", "10:20", amount=250, offset=5),
        ev("r2-open", "app_opened", "23:59", city="paris", driver=None, offset=6),
    ]
    return spark.createDataFrame(rows, SILVER_SCHEMA)


def revenue(spark) -> DataFrame:
    rows = [("berlin", at(f"10:0{m}"), 100 * m, 1, DAY) for m in range(5)]
    rows += [("paris", at("10:00"), 500, 2, DAY), ("paris", at("10:01"), -200, 1, DAY)]  # refunds can go negative
    return spark.createDataFrame(rows, REVENUE_SCHEMA)


def dau(spark) -> DataFrame:
    rows = [("berlin", at("00:00"), 12, DAY), ("paris", at("00:00"), 3, DAY)]
    return spark.createDataFrame(rows, DAU_SCHEMA)


def earnings(spark) -> DataFrame:
    rows = [("d1", at("00:00"), 1000, 2, DAY), ("d2", at("00:00"), -250, 1, DAY)]
    return spark.createDataFrame(rows, EARNINGS_SCHEMA)


VALID = {
    BRONZE_EVENTS: bronze,
    SILVER_EVENTS: silver,
    GOLD_REVENUE_PER_MINUTE: revenue,
    GOLD_DAILY_ACTIVE_USERS: dau,
    GOLD_DRIVER_EARNINGS_DAILY: earnings,
}


def where(df: DataFrame, condition: str, **updates) -> DataFrame:
    """Set columns on the rows matching a SQL condition (values are SQL literals)."""
    for column, literal in updates.items():
        df = df.withColumn(column, F.when(F.expr(condition), F.expr(literal)).otherwise(F.col(column)))
    return df


def failing(result: GateResult) -> dict[str, str]:
    """Failure lines keyed by their `type(columns)` head, which names the rule and column."""
    return {line.split(" [")[0].split(":")[0]: line for line in result.failures}


# ---------------------------------------------------------------- valid data passes


def test_valid_tables_pass_every_suite_and_update_data_docs(spark, tmp_path: Path) -> None:
    for table, make in VALID.items():
        result = run_suite(tmp_path, table, make(spark))
        assert result.passed, result.describe()
        assert result.failures == []
        assert result.table == table and result.suite == table
        assert result.evaluated == len(build_suite(table).expectations) + (3 if table == GOLD_REVENUE_PER_MINUTE else 0)

    index = data_docs_index(tmp_path)
    assert index == result.data_docs_index
    assert index.is_file() and index.suffix == ".html"
    assert index.is_relative_to(tmp_path / "gx")
    html = index.read_text()
    assert "<html" in html.lower() and SILVER_EVENTS in html and GOLD_REVENUE_PER_MINUTE in html
    assert build_data_docs(tmp_path) == index and index.is_file()
    # Progress bars and analytics are switched off in the persisted project config.
    config = (tmp_path / "gx" / "great_expectations.yml").read_text()
    assert "analytics_enabled: false" in config and "globally: false" in config


# ---------------------------------------------------------------- silver: one rule per variant

SILVER_BREAKS = {
    "duplicate event_id": (
        lambda df: df.unionByName(where(df.where("event_id = 'r1-pay'"), "true", kafka_offset="99")),
        {"expect_column_values_to_be_unique(event_id)": "'r1-pay'"},
    ),
    "null city": (
        lambda df: where(df, "event_id = 'r1-start'", city="CAST(NULL AS STRING)"),
        {"expect_column_values_to_not_be_null(city)": "1 unexpected of 7 rows"},
    ),
    "negative amount": (
        lambda df: where(df, "event_id = 'r1-pay'", amount_cents="-1250"),
        {"expect_column_values_to_be_between(amount_cents)": "-1250"},
    ),
    "event_time in 1999": (
        lambda df: where(
            df, "event_id = 'r1-done'", event_time="TIMESTAMP'1999-12-31 10:10:00'", event_date="DATE'1999-12-31'"
        ),
        {"expect_column_values_to_be_between(event_time)": "1999-12-31T10:10:00"},
    ),
    "event_time a week ahead": (
        lambda df: where(
            df, "event_id = 'r1-done'", event_time="current_timestamp() + INTERVAL 7 DAYS",
            event_date="to_date(current_timestamp() + INTERVAL 7 DAYS)",
        ),
        {"expect_column_values_to_be_between(event_time)": "1 unexpected of 7 rows"},
    ),
    "unknown event_type": (
        lambda df: where(df, "event_id = 'r1-start'", event_type="'ride_teleported'"),
        {"expect_column_values_to_be_in_set(event_type)": "'ride_teleported'"},
    ),
    "plaintext pii": (
        lambda df: where(df, "event_id = 'r1-req'", pii="'{\"name\":\"Ada\"}'"),
        {"expect_column_values_to_match_regex(pii)": "Ada"},
    ),
    "amount on a non-payment event": (
        lambda df: where(df, "event_id = 'r1-done'", amount_cents="10"),
        {"unexpected_rows_expectation": "r1-done"},
    ),
    "extra column": (
        lambda df: df.withColumn("surge_multiplier", F.lit(1.5)),
        {"expect_table_columns_to_match_set": "unexpected ['surge_multiplier']"},
    ),
}


@pytest.mark.parametrize("case", list(SILVER_BREAKS))
def test_each_broken_silver_rule_fails_with_a_line_naming_it(spark, tmp_path: Path, case: str) -> None:
    breaker, expected = SILVER_BREAKS[case]
    result = run_suite(tmp_path, SILVER_EVENTS, breaker(silver(spark)))

    assert not result.passed
    lines = failing(result)
    assert set(lines) == set(expected), result.describe()
    for head, fragment in expected.items():
        assert fragment in lines[head], lines[head]


def test_missing_column_fails_the_schema_rule_and_the_rules_on_that_column(spark, tmp_path: Path) -> None:
    result = run_suite(tmp_path, SILVER_EVENTS, silver(spark).drop("city"))

    lines = failing(result)
    assert "missing ['city']" in lines["expect_table_columns_to_match_set"]
    # Rules on the absent column cannot be evaluated: GX reports them as errors, not passes.
    assert lines["expect_column_values_to_not_be_null(city)"].split(": ", 1)[1].startswith("error:")
    assert set(lines) == {"expect_table_columns_to_match_set", "expect_column_values_to_not_be_null(city)"}


def test_repeated_runs_on_one_home_update_instead_of_duplicating(spark, tmp_path: Path) -> None:
    first = run_suite(tmp_path, SILVER_EVENTS, silver(spark))
    # The bound is a per-call parameter, and the stored suite follows the latest call.
    second = run_suite(tmp_path, SILVER_EVENTS, silver(spark), min_time=datetime(2026, 11, 17, 10, 5))

    assert first.passed and not second.passed
    assert first.evaluated == second.evaluated == len(build_suite(SILVER_EVENTS).expectations)
    assert set(failing(second)) == {"expect_column_values_to_be_between(event_time)"}
    assert "3 unexpected of 7 rows" in second.failures[0]
    stored = json.loads((tmp_path / "gx" / "expectations" / f"{SILVER_EVENTS}.json").read_text())
    assert len(stored["expectations"]) == first.evaluated
    context = gx_context(tmp_path)
    assert [c.name for c in context.checkpoints.all()] == [SILVER_EVENTS]


# ---------------------------------------------------------------- bronze


def test_bronze_duplicate_offset_and_null_value_fail(spark, tmp_path: Path) -> None:
    df = bronze(spark)
    broken = where(df, "partition = 1 AND offset = 2", value="CAST(NULL AS STRING)").unionByName(
        df.where("partition = 0 AND offset = 1")
    )
    result = run_suite(tmp_path, BRONZE_EVENTS, broken)

    lines = failing(result)
    assert set(lines) == {
        "expect_compound_columns_to_be_unique(topic, partition, offset)",
        "expect_column_values_to_not_be_null(value)",
    }, result.describe()
    assert "{topic='rides.events', partition=0, offset=1}" in lines["expect_compound_columns_to_be_unique(topic, partition, offset)"]


# ---------------------------------------------------------------- gold


def test_gold_duplicate_keys_and_bad_counts_fail(spark, tmp_path: Path) -> None:
    rev = revenue(spark)
    rev = rev.unionByName(rev.where("city = 'paris' AND window_start = TIMESTAMP'2026-11-17 10:01:00'")).transform(
        lambda df: where(df, "city = 'berlin' AND minute(window_start) = 4", events="0")
    )
    result = run_suite(tmp_path, GOLD_REVENUE_PER_MINUTE, rev)
    lines = failing(result)
    assert set(lines) == {
        "expect_compound_columns_to_be_unique(city, window_start)",
        "expect_column_values_to_be_between(events)",
    }, result.describe()
    assert "city='paris', window_start=2026-11-17T10:01:00" in lines["expect_compound_columns_to_be_unique(city, window_start)"]

    users = dau(spark)
    users = users.unionByName(users.where("city = 'berlin'")).transform(
        lambda df: where(df, "city = 'paris'", active_users="0", window_start="TIMESTAMP'2026-11-17 06:00:00'")
    )
    result = run_suite(tmp_path, GOLD_DAILY_ACTIVE_USERS, users)
    lines = failing(result)
    assert set(lines) == {
        "expect_compound_columns_to_be_unique(city, window_start)",
        "expect_column_values_to_be_between(active_users)",
        "unexpected_rows_expectation",
    }, result.describe()
    assert "[window_start is a UTC day start]" in lines["unexpected_rows_expectation"]
    assert "city='paris'" in lines["unexpected_rows_expectation"]

    drivers = earnings(spark)
    drivers = drivers.unionByName(drivers.where("driver_id = 'd2'")).transform(
        lambda df: where(df, "driver_id = 'd1'", event_date="DATE'2026-11-18'")
    )
    result = run_suite(tmp_path, GOLD_DRIVER_EARNINGS_DAILY, drivers)
    lines = failing(result)
    assert set(lines) == {"expect_compound_columns_to_be_unique(driver_id, window_start)", "unexpected_rows_expectation"}
    assert "[event_date = to_date(window_start)]" in lines["unexpected_rows_expectation"]


def test_a_gap_minute_in_revenue_fails_coverage_unless_coverage_is_optional(spark, tmp_path: Path) -> None:
    gappy = revenue(spark).where("NOT (city = 'berlin' AND minute(window_start) IN (2, 3))")

    assert sorted(tuple(r) for r in minute_coverage_gaps(gappy).collect()) == [
        ("berlin", at("10:02")),
        ("berlin", at("10:03")),
    ]
    coverage = {r["city"]: (r["expected_minutes"], r["present_minutes"], r["missing_minutes"]) for r in minute_coverage(gappy).collect()}
    assert coverage == {"berlin": (5, 3, 2), "paris": (2, 2, 0)}
    assert minute_coverage_gaps(revenue(spark)).count() == 0

    strict = run_suite(tmp_path, GOLD_REVENUE_PER_MINUTE, gappy)
    assert not strict.passed
    assert len(strict.failures) == 1, strict.describe()
    line = strict.failures[0]
    assert line.startswith("expect_column_values_to_be_between(missing_minutes)")
    assert "berlin: 2 of 5 minutes missing" in line and "2026-11-17T10:02:00" in line

    lenient = run_suite(tmp_path, GOLD_REVENUE_PER_MINUTE, gappy, require_minute_coverage=False)
    assert lenient.passed and lenient.evaluated == len(build_suite(GOLD_REVENUE_PER_MINUTE).expectations)


def test_unknown_tables_and_parameters_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no suite for table 'gold_nope'"):
        run_suite(tmp_path, "gold_nope", None)
    with pytest.raises(TypeError):
        run_suite(tmp_path, SILVER_EVENTS, None, require_minute_coverage=False)
    with pytest.raises(ValueError, match="is not before"):
        build_suite(SILVER_EVENTS, min_time=datetime(2100, 1, 1).astimezone())
