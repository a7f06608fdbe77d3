"""The seed's sessionization scenario: user_sessions v1 ships the midnight bug, v2 fixes it, both
engines agree on each. The oracle is the generator's truth sessionized by independent code
(lklab.core.oracle.user_sessions). The fix applied both ways, with readers polling, is the drill
sessionization-backfill (tests/integration/test_drill_sessionization.py)."""
from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

from lklab import kappa
from lklab.lake import tables as lake
from lklab.core import oracle
from lklab import views
from lklab.core.config import Settings
from lklab.log.generator import GeneratorConfig, generate
from lklab.serving.store import make_engine
from lklab.engine.sink import apply_records

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def as_map(rows) -> dict:
    return {(u, d): v for u, d, v in rows}


def test_both_engines_sessionize_like_the_spec_and_v2_like_the_oracle(spark) -> None:
    workload = generate(GeneratorConfig(seed=71, duration_s=4 * 3600, rides_per_minute=6, users=25,
                                        start=datetime(2026, 11, 17, 22, 0, tzinfo=timezone.utc)))
    truth = oracle.user_sessions(workload.truth)
    bronze = spark.createDataFrame([("t", 0, i, e.to_json()) for i, e in enumerate(workload.deliveries)],
                                   "topic string, partition int, offset long, value string")
    silver = lake.dedup_latest(lake.valid_events(lake.parse_bronze(bronze)))
    for version, spec in views.LOGIC_VERSIONS["user_sessions"].items():
        spark_rows = {(r[0], r[1].replace(tzinfo=timezone.utc)): (r[2], r[3])
                      for r in lake.view_frame(silver, spec).select("user_id", "window_start", "sessions", "duration_ms").collect()}
        with tempfile.TemporaryDirectory() as home:
            settings = Settings(home=Path(home))
            engine = make_engine(settings)
            records = [(0, i, e.to_json().encode()) for i, e in enumerate(workload.deliveries)]
            sink_spec = kappa.spec_for("user_sessions", version)
            for start in range(0, len(records), 500):
                apply_records(engine, settings, "t", records[start:start + 500], specs=[sink_spec], scope="s", close_windows=False)
            with engine.connect() as conn:
                sink_rows = {(u, d): (n, ms) for u, d, n, ms in conn.execute(sink_spec.measure.output_query(sink_spec))}
        assert spark_rows == sink_rows == spec.evaluate(workload.deliveries), f"v{version}"
    assert as_map([(u, d, v) for (u, d), v in views.spec_at("user_sessions", 2).evaluate(workload.deliveries).items()]) == truth
    assert views.spec_at("user_sessions", 1).evaluate(workload.deliveries) != truth  # the bug shows across midnight
