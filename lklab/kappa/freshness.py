"""How fresh a Kappa output is: whether its live job runs, its lag behind the log's end, its
event-time watermark, its heartbeat's age, and whether that is stale beyond the budget
(`kappa_heartbeat_timeout_s`, `kappa_max_lag`). Readers (lklab.kappa.query) and
`lklab kappa status` (lklab.kappa.jobs) both judge a job here.

Everything but `running` comes from the serving store (the progress committed with the output,
the heartbeat the job writes), read in the caller's transaction; `running` is the job's pid file
on this machine. The lag needs the log's end offsets, which the caller reads from Kafka first
(None: Kafka did not answer, so the lag is unknown and the heartbeat alone decides)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy.engine import Connection

from lklab import views
from lklab.core import processes
from lklab.core.config import Settings
from lklab.core.staleness import stale_reason
from lklab.kappa.names import replay_scope
from lklab.log.kafka_io import Offsets
from lklab.serving import progress

WORKER_MARKER = b"lklab.kappa.worker"  # in a live job's command line (python -m lklab.kappa.worker)


def pid_file(settings: Settings, output: str) -> Path:
    return settings.home / "kappa" / f"{output}.pid"


def running_pid(settings: Settings, output: str) -> int | None:
    """The pid of the output's live job on this machine, or None."""
    return processes.read_pid(pid_file(settings, output), WORKER_MARKER)


def committed(conn: Connection, settings: Settings, scope: str) -> tuple[Offsets, datetime | None]:
    """A Kappa job's committed offsets and its event-time watermark (None until every partition reported)."""
    offsets = progress.next_offsets(conn, scope, settings.topic)
    return offsets, views.watermark(progress.max_event_times(conn, scope, settings.topic), settings.partitions)


@dataclass(frozen=True)
class Freshness:
    output: str | None  # the versioned output judged; None: the view has no published version
    pid: int | None
    lag: int | None  # records behind the log's end; None when Kafka could not be asked
    watermark: datetime | None  # event time: the slowest partition's latest event
    heartbeat_age_s: float | None  # None: the job never beat
    stale: bool
    stale_reason: str | None

    @property
    def running(self) -> bool:
        return self.pid is not None


def freshness(conn: Connection, settings: Settings, out: views.VersionedOutput, end_offsets: Offsets | None,
              now: datetime | None = None) -> Freshness:
    """The output's freshness, read in `conn`'s transaction (the same one as the rows it qualifies)."""
    scope = replay_scope(out.view, out.version)
    done, watermark = committed(conn, settings, scope)
    beat = progress.heartbeat(conn, scope)
    lag = None if end_offsets is None else progress.lag(done, end_offsets)
    age = None if beat is None else ((now or datetime.now(timezone.utc)) - beat[1]).total_seconds()
    reason = stale_reason(f"Kappa job {out.name}", age, lag, settings.kappa_heartbeat_timeout_s, settings.kappa_max_lag)
    return Freshness(out.name, running_pid(settings, out.name), lag, watermark, age, reason is not None, reason)


# What a reader of a view with no published version gets: no rows, and stale (nothing produces them).
UNPUBLISHED = Freshness(None, None, None, None, None, True, "no version is published (`lklab cutover`)")
