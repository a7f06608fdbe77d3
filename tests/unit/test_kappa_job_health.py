"""kappa_jobs_sensor's judgment of one job: down (the published version not running, a running job
that never beat or whose heartbeat is too old), lagging (over kappa_max_lag), or fine (a job
stopped on purpose is not an alarm). The sensor itself runs on real services in
tests/integration/test_kappa_dagster.py."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from lklab.core.config import Settings
from lklab.core.staleness import stale_reason
from lklab.kappa.jobs import JobStatus
from orchestration.sensors import KAPPA_DOWN, KAPPA_LAGGING, kappa_job_problem

SETTINGS = Settings(kappa_heartbeat_timeout_s=10.0, kappa_max_lag=100)


def job(pid: int | None = 4242, lag: int | None = 0, heartbeat_age_s: float | None = 1.0) -> JobStatus:
    """A job's status as lklab.kappa.jobs reports it: stale by the readers' rule."""
    reason = stale_reason("revenue_per_minute__v2", heartbeat_age_s, lag, SETTINGS.kappa_heartbeat_timeout_s, SETTINGS.kappa_max_lag)
    return JobStatus("revenue_per_minute", 2, "revenue_per_minute__v2", pid, lag, datetime(2026, 11, 17, tzinfo=timezone.utc),
                     heartbeat_age_s, Path("kappa-revenue_per_minute__v2.log"), reason is not None, reason)


@pytest.mark.parametrize("status, published, problem, words", [
    (job(), True, None, None),
    (job(lag=100), True, None, None),  # at the threshold: fine
    (job(pid=None, heartbeat_age_s=3600.0), False, None, None),  # a stopped candidate or retired version
    (job(pid=None, heartbeat_age_s=3600.0), True, KAPPA_DOWN, "is published but its live job is not running"),
    (job(pid=None, lag=None, heartbeat_age_s=None), True, KAPPA_DOWN, "is published but its live job is not running"),
    (job(heartbeat_age_s=None), False, KAPPA_DOWN, "has never run"),
    (job(heartbeat_age_s=10.5), False, KAPPA_DOWN, "heartbeat is 10s old, over the 10s timeout"),
    (job(heartbeat_age_s=10.5, lag=10_000), True, KAPPA_DOWN, "heartbeat"),  # down wins over lagging
    (job(lag=101), True, KAPPA_LAGGING, "lag 101 records exceeds 100"),
    (job(lag=101), False, KAPPA_LAGGING, "lag 101 records exceeds 100"),  # a candidate that lags is reported too
    (job(lag=None), True, None, None),  # Kafka did not answer: the heartbeat decides
])
def test_a_job_is_down_lagging_or_fine(status: JobStatus, published: bool, problem: str | None, words: str | None) -> None:
    found = kappa_job_problem(status, published, SETTINGS)
    if problem is None:
        assert found is None
    else:
        assert found is not None and found[0] == problem and words in found[1] and "\n" not in found[1], found
        assert found[1].startswith("revenue_per_minute__v2")
