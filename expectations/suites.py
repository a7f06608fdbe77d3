"""Great Expectations 1.x suites for the lake tables, plus the Spark-side minute-coverage check.

One builder per table returns a fresh `gx.ExpectationSuite` named after the table. Builders
take the time bounds as parameters (defaults: 2000-01-01 .. now + 1 day) so a gate can be
tightened per run; `expectations.runner.run_suite` passes its `**suite_params` through.

Minute coverage of gold_revenue_per_minute is not a column property, so it is computed in
Spark (`minute_coverage`, one row per city) and validated by its own small suite
(`minute_coverage_suite`).
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import great_expectations as gx
import great_expectations.expectations as gxe
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from lklab.core.events import EVENT_FIELDS, PAYMENT_TYPES, EventType, as_utc, schema

BRONZE_EVENTS = "bronze_events"
SILVER_EVENTS = "silver_events"
GOLD_REVENUE_PER_MINUTE = "gold_revenue_per_minute"
GOLD_DAILY_ACTIVE_USERS = "gold_daily_active_users"
GOLD_DRIVER_EARNINGS_DAILY = "gold_driver_earnings_daily"
GOLD_USER_SESSIONS = "gold_user_sessions"
MINUTE_COVERAGE = "gold_revenue_per_minute_coverage"

DEFAULT_MIN_TIME = datetime(2000, 1, 1, tzinfo=timezone.utc)
DEFAULT_FUTURE_SLACK = timedelta(days=1)

COLUMNS: dict[str, tuple[str, ...]] = {
    BRONZE_EVENTS: ("topic", "partition", "offset", "kafka_timestamp", "key", "value", "ingested_at"),
    SILVER_EVENTS: (*EVENT_FIELDS, "kafka_partition", "kafka_offset", "event_date"),  # every field of the newest schema
    GOLD_REVENUE_PER_MINUTE: ("city", "window_start", "revenue_cents", "events", "event_date"),
    GOLD_DAILY_ACTIVE_USERS: ("city", "window_start", "active_users", "event_date"),
    GOLD_DRIVER_EARNINGS_DAILY: ("driver_id", "window_start", "earnings_cents", "events", "event_date"),
    GOLD_USER_SESSIONS: ("user_id", "window_start", "sessions", "duration_ms", "event_date"),
    MINUTE_COVERAGE: ("city", "first_minute", "last_minute", "expected_minutes", "present_minutes", "missing_minutes"),
}

# Fernet tokens are urlsafe base64 of 0x80 + a 64-bit timestamp, so they start with "gAAAAA".
# Anything else in `pii` is plaintext that must never reach the lake.
FERNET_TOKEN_REGEX = r"^gAAAAA[A-Za-z0-9_\-]+=*$"


def _bounds(min_time: datetime, max_time: datetime | None) -> tuple[datetime, datetime]:
    # "now" is taken when the suite is built, i.e. once per gate run, not at import.
    min_time = as_utc(min_time)
    upper = as_utc(max_time) if max_time is not None else datetime.now(timezone.utc) + DEFAULT_FUTURE_SLACK
    if min_time >= upper:
        raise ValueError(f"min_time {min_time.isoformat()} is not before max_time {upper.isoformat()}")
    return min_time, upper


def _schema(table: str) -> gxe.Expectation:
    return gxe.ExpectTableColumnsToMatchSet(column_set=list(COLUMNS[table]), exact_match=True)


def _not_null(*columns: str) -> list[gxe.Expectation]:
    return [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in columns]


def _rows(query: str, description: str) -> gxe.Expectation:
    """A row-level rule in Spark SQL; `{batch}` is the validated DataFrame. Passes when no row matches."""
    return gxe.UnexpectedRowsExpectation(unexpected_rows_query=query, description=description)


def _gold_window_rules(key: str, unit: str) -> list[gxe.Expectation]:
    # Windows are tumbling UTC windows: the start is truncated to its unit and event_date is its day.
    # to_date/date_trunc use the session time zone, which lklab pins to UTC (lklab.lake.spark).
    return [
        _rows(
            f"SELECT {key}, window_start FROM {{batch}} WHERE date_trunc('{unit}', window_start) != window_start",
            f"window_start is a UTC {unit} start",
        ),
        _rows(
            f"SELECT {key}, window_start, event_date FROM {{batch}} WHERE event_date != to_date(window_start)",
            "event_date = to_date(window_start)",
        ),
    ]


def bronze_events_suite(min_time: datetime = DEFAULT_MIN_TIME, max_time: datetime | None = None) -> gx.ExpectationSuite:
    """Raw Kafka records: exact columns, offsets present and unique per (topic, partition, offset)."""
    lo, hi = _bounds(min_time, max_time)
    return gx.ExpectationSuite(
        name=BRONZE_EVENTS,
        expectations=[
            _schema(BRONZE_EVENTS),
            # key may be null: bronze keeps whatever the log holds; silver enforces the contract.
            *_not_null("topic", "partition", "offset", "value", "kafka_timestamp", "ingested_at"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["topic", "partition", "offset"]),
            gxe.ExpectColumnValuesToBeBetween(column="partition", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="offset", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="kafka_timestamp", min_value=lo, max_value=hi),
        ],
    )


def silver_events_suite(min_time: datetime = DEFAULT_MIN_TIME, max_time: datetime | None = None) -> gx.ExpectationSuite:
    """Typed, deduplicated events: the event contract (lklab.core.events) checked on the table."""
    lo, hi = _bounds(min_time, max_time)
    payment_types = ", ".join(f"'{t.value}'" for t in sorted(PAYMENT_TYPES))
    return gx.ExpectationSuite(
        name=SILVER_EVENTS,
        expectations=[
            _schema(SILVER_EVENTS),
            *_not_null(
                "event_id", "event_version", "schema_version", "event_type", "ride_id", "user_id", "city",
                "event_time", "kafka_partition", "kafka_offset", "event_date",
            ),
            gxe.ExpectColumnValuesToBeUnique(column="event_id"),
            gxe.ExpectColumnValuesToBeInSet(column="event_type", value_set=[t.value for t in EventType]),
            gxe.ExpectColumnValuesToBeBetween(column="event_version", min_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="schema_version", min_value=1),
            # Column-map expectations skip nulls, so non-payment rows (amount null) are not counted.
            gxe.ExpectColumnValuesToBeBetween(column="amount_cents", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="event_time", min_value=lo, max_value=hi),
            gxe.ExpectColumnValuesToMatchRegex(
                column="pii", regex=FERNET_TOKEN_REGEX, description="pii is a Fernet token, never plaintext"
            ),
            # schema v2's fields: null in partitions written before v2 (read as their defaults)
            gxe.ExpectColumnValuesToBeBetween(column="tip_cents", min_value=0),
            gxe.ExpectColumnValuesToMatchRegex(column="currency", regex=schema()["properties"]["currency"]["pattern"]),
            _rows(
                f"SELECT event_id, event_type, tip_cents FROM {{batch}} "
                f"WHERE tip_cents != 0 AND event_type != '{EventType.PAYMENT_CAPTURED.value}'",
                "a tip only on payment_captured",
            ),
            _rows(
                f"SELECT event_id, event_type, amount_cents FROM {{batch}} "
                f"WHERE (event_type IN ({payment_types})) != (amount_cents IS NOT NULL)",
                "amount_cents is set exactly on payment events",
            ),
            _rows(
                "SELECT event_id, event_time, event_date FROM {batch} WHERE event_date != to_date(event_time)",
                "event_date = to_date(event_time)",
            ),
        ],
    )


def gold_revenue_per_minute_suite(
    min_time: datetime = DEFAULT_MIN_TIME, max_time: datetime | None = None
) -> gx.ExpectationSuite:
    """Revenue per (city, minute). revenue_cents may be negative (refunds), so it is not bounded."""
    lo, hi = _bounds(min_time, max_time)
    return gx.ExpectationSuite(
        name=GOLD_REVENUE_PER_MINUTE,
        expectations=[
            _schema(GOLD_REVENUE_PER_MINUTE),
            *_not_null("city", "window_start", "revenue_cents", "events", "event_date"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["city", "window_start"]),
            gxe.ExpectColumnValuesToBeBetween(column="events", min_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="window_start", min_value=lo, max_value=hi),
            *_gold_window_rules("city", "minute"),
        ],
    )


def gold_daily_active_users_suite(
    min_time: datetime = DEFAULT_MIN_TIME, max_time: datetime | None = None
) -> gx.ExpectationSuite:
    """Distinct users per (city, UTC day): a row exists only if someone was active."""
    lo, hi = _bounds(min_time, max_time)
    return gx.ExpectationSuite(
        name=GOLD_DAILY_ACTIVE_USERS,
        expectations=[
            _schema(GOLD_DAILY_ACTIVE_USERS),
            *_not_null("city", "window_start", "active_users", "event_date"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["city", "window_start"]),
            gxe.ExpectColumnValuesToBeBetween(column="active_users", min_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="window_start", min_value=lo, max_value=hi),
            *_gold_window_rules("city", "day"),
        ],
    )


def gold_driver_earnings_daily_suite(
    min_time: datetime = DEFAULT_MIN_TIME, max_time: datetime | None = None
) -> gx.ExpectationSuite:
    """Earnings per (driver, UTC day); earnings may be negative (refunds), events may not."""
    lo, hi = _bounds(min_time, max_time)
    return gx.ExpectationSuite(
        name=GOLD_DRIVER_EARNINGS_DAILY,
        expectations=[
            _schema(GOLD_DRIVER_EARNINGS_DAILY),
            *_not_null("driver_id", "window_start", "earnings_cents", "events", "event_date"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["driver_id", "window_start"]),
            gxe.ExpectColumnValuesToBeBetween(column="events", min_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="window_start", min_value=lo, max_value=hi),
            *_gold_window_rules("driver_id", "day"),
        ],
    )


def minute_coverage_suite() -> gx.ExpectationSuite:
    """Validates `minute_coverage(df)`: no city may miss a minute between its first and last window."""
    return gx.ExpectationSuite(
        name=MINUTE_COVERAGE,
        expectations=[
            _schema(MINUTE_COVERAGE),
            gxe.ExpectColumnValuesToBeUnique(column="city"),
            gxe.ExpectColumnValuesToBeBetween(
                column="missing_minutes", max_value=0, description="every minute between a city's first and last window has a row"
            ),
        ],
    )


def minute_coverage(revenue: DataFrame) -> DataFrame:
    """One row per city of gold_revenue_per_minute: first/last minute, expected, present and missing minutes.

    Counting (not exploding) keeps this O(rows); `minute_coverage_gaps` lists the actual gaps.
    """
    minute = F.date_trunc("minute", F.col("window_start"))
    return (
        revenue.where(F.col("city").isNotNull() & F.col("window_start").isNotNull())
        .groupBy("city")
        .agg(
            F.min(minute).alias("first_minute"),
            F.max(minute).alias("last_minute"),
            F.countDistinct(minute).cast("long").alias("present_minutes"),
        )
        .withColumn(
            "expected_minutes",
            ((F.unix_timestamp("last_minute") - F.unix_timestamp("first_minute")) / 60 + 1).cast("long"),
        )
        .withColumn("missing_minutes", F.col("expected_minutes") - F.col("present_minutes"))
        .select(*COLUMNS[MINUTE_COVERAGE])
    )


def minute_coverage_gaps(revenue: DataFrame) -> DataFrame:
    """(city, missing_minute) for every minute between a city's first and last window_start with no row."""
    minute = F.date_trunc("minute", F.col("window_start"))
    present = (
        revenue.where(F.col("city").isNotNull() & F.col("window_start").isNotNull())
        .select("city", minute.alias("missing_minute"))
        .distinct()
    )
    spans = present.groupBy("city").agg(F.min("missing_minute").alias("lo"), F.max("missing_minute").alias("hi"))
    expected = spans.select(
        "city", F.explode(F.sequence("lo", "hi", F.expr("INTERVAL 1 MINUTE"))).alias("missing_minute")
    )
    return expected.join(present, ["city", "missing_minute"], "left_anti").orderBy("city", "missing_minute")


def gold_user_sessions_suite(min_time: datetime = DEFAULT_MIN_TIME, max_time: datetime | None = None) -> gx.ExpectationSuite:
    """Sessions per rider and UTC day: unique keys, at least one session, non-negative duration."""
    lo, hi = _bounds(min_time, max_time)
    return gx.ExpectationSuite(
        name=GOLD_USER_SESSIONS,
        expectations=[
            _schema(GOLD_USER_SESSIONS),
            *_not_null("user_id", "window_start", "sessions", "duration_ms", "event_date"),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["user_id", "window_start"]),
            gxe.ExpectColumnValuesToBeBetween(column="sessions", min_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="duration_ms", min_value=0),
            gxe.ExpectColumnValuesToBeBetween(column="window_start", min_value=lo, max_value=hi),
            *_gold_window_rules("user_id", "day"),
        ],
    )


SUITES: dict[str, Callable[..., gx.ExpectationSuite]] = {
    BRONZE_EVENTS: bronze_events_suite,
    SILVER_EVENTS: silver_events_suite,
    GOLD_REVENUE_PER_MINUTE: gold_revenue_per_minute_suite,
    GOLD_DAILY_ACTIVE_USERS: gold_daily_active_users_suite,
    GOLD_DRIVER_EARNINGS_DAILY: gold_driver_earnings_daily_suite,
    GOLD_USER_SESSIONS: gold_user_sessions_suite,
}


def build_suite(table: str, **params) -> gx.ExpectationSuite:
    """The suite for one lake table; unknown tables and parameters raise."""
    try:
        builder = SUITES[table]
    except KeyError:
        raise KeyError(f"no suite for table {table!r}; known: {', '.join(SUITES)}") from None
    return builder(**params)
