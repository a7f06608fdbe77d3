"""Settings for one lklab deployment (embedded by default, scaled by config only)."""
from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


ReaderPolicy = Literal["serve-stale", "error"]
SERVE_STALE, ERROR = "serve-stale", "error"
# the layers a named fault (lklab.views.faults) can be switched on in: the two that run the shared
# fold (speed, kappa: logic faults), and the two publishing transactions (batch: the promotion of
# a batch build; cutover: the Kappa alias swap) where a stall fault holds the commit open
FAULT_LAYERS = ("speed", "kappa", "batch", "cutover")


class Settings(BaseSettings):
    """Every knob, read from `LKLAB_*` environment variables or passed explicitly."""

    model_config = SettingsConfigDict(env_prefix="LKLAB_", frozen=True)

    home: Path = Field(default_factory=lambda: Path.cwd() / ".lklab", description="state, logs, lake, Kafka data")

    # event log
    bootstrap_servers: str | None = Field(None, description="external Kafka; None = the embedded broker")
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_heap: str = "512m"
    topic: str = "rides.events"
    dlq_topic: str = "rides.events.dlq"
    partitions: int = Field(4, ge=1)
    topic_segment_bytes: int | None = Field(None, ge=1024, description="segment size of the topics lklab creates; small = retention bites sooner")

    # lake / batch
    lake_uri: str | None = Field(None, description="Delta root; None = <home>/lake")
    spark_master: str = "local[2]"
    spark_driver_memory: str = "1g"
    spark_shuffle_partitions: int = 4

    # speed layer / serving
    serving_url: str | None = Field(None, description="SQLAlchemy URL; None = SQLite (WAL) under <home>")
    serving_auto_migrate: bool = Field(True, description="upgrade a serving store behind the code on start; off = refuse and name `lklab db upgrade`")
    speed_group: str = "lklab-speed"
    speed_web_port: int = 6066
    speed_batch_max: int = Field(5000, ge=1, description="records per speed-layer sink transaction, at most")
    speed_batch_within_s: float = Field(0.2, gt=0, description="a partial batch is applied after this long: added latency")
    speed_prefetch: int = Field(20_000, ge=1, description="Faust stream buffer per partition (back-pressure)")
    allowed_lateness_s: int = Field(300, ge=0, description="99.9% of the seed's events arrive within 5 minutes")
    user_sessions_logic: int = Field(2, ge=1, le=2, description="batch sessionization logic: 1 has the midnight bug, 2 the fix")
    gate_severity: dict[str, str] = Field(default_factory=dict, description="per-gate severity overrides (fail | warn | drop); "
                                          "names and defaults in lklab.core.gates.GATES")
    blocked_windows_policy: Literal["serve-flagged", "refuse"] = Field(
        "serve-flagged", description="while the batch layer is blocked: serve speed rows of diverged windows flagged, or refuse them")
    batch_views: list[str] | None = Field(None, description="the views the Lambda batch layer builds, gates and promotes; None = every "
                                          "view. A lab for one view (a drill) builds only it; the others are not served by Lambda")
    batch_wait_s: float = Field(600.0, ge=0, description="`lklab batch` waits this long for a batch run in flight on its dates")
    batch_lease_timeout_s: float = Field(3600.0, gt=0, description="a running batch run's hold on its dates expires after this long")
    schedules_running: bool = Field(False, description="the nightly_ingest and daily_snapshots schedules start switched on")
    partitions_start: str = Field("2026-01-01", description="first event date (YYYY-MM-DD, UTC) of the Dagster daily partitions; "
                                  "earlier dates are outside the partition set (read when orchestration.partitions is imported)")
    kappa_checkpoint_interval_s: float = Field(0.5, gt=0, description="a live Kappa job checkpoints (makes its output visible) at least this often")
    kappa_heartbeat_timeout_s: float = Field(10.0, gt=0, description="older heartbeat = the Kappa job is down: its answers are stale")
    kappa_max_lag: int = Field(50_000, ge=0, description="records behind the log end before a Kappa answer is stale")
    kappa_hydration_max_lag: int = Field(1_000, ge=0, description="a candidate version is hydrated once its lag is at most this many records ...")
    kappa_hydration_tolerance_s: float = Field(60.0, ge=0, description="... and its event-time watermark is within this of the published job's")
    kappa_rollback_window_s: float = Field(900.0, ge=0, description="after a swap the replaced version's job keeps running this long "
                                           "(rollback is instant), then stops; its output is kept for audit")
    reader_policy: ReaderPolicy = Field("serve-stale", description="when a view's producer is stale beyond its budget (heartbeat timeout, "
                                        "max lag): serve-stale answers flagged, error refuses (HTTP 503, CLI exit 3)")
    reader_policy_views: dict[str, str] = Field(default_factory=dict, description="per-view overrides of reader_policy, "
                                                         'e.g. {"revenue_per_minute": "error"}')
    ledger_grace_s: int = Field(48 * 3600, ge=0, description="a day reconciles strictly once it is this far behind the watermark")
    speed_heartbeat_timeout_s: float = Field(10.0, gt=0, description="older heartbeat = speed layer down")
    speed_max_lag: int = Field(50_000, ge=0, description="records behind the log end before serving goes batch-only")
    faults: dict[str, str] = Field(default_factory=dict, description="drills and tests only: a deliberate bug per layer, "
                                   '{"speed"|"kappa"|"batch"|"cutover": name}; names in lklab.views.faults.FAULTS')

    # PII
    pii_key: str | None = Field(None, description="Fernet key; None = a 0600 key file under <home>")

    @field_validator("gate_severity")
    @classmethod
    def _known_gates(cls, value: dict[str, str]) -> dict[str, str]:
        from lklab.core.gates import check_overrides

        return check_overrides(value)

    @field_validator("faults")
    @classmethod
    def _fault_layers(cls, value: dict[str, str]) -> dict[str, str]:
        # the fault names live with the view logic (lklab.views.faults checks them where they are applied)
        for layer in value:
            if layer not in FAULT_LAYERS:
                raise ValueError(f"faults: {layer!r} is not a layer ({' | '.join(FAULT_LAYERS)})")
        return value

    @field_validator("reader_policy_views")
    @classmethod
    def _known_policies(cls, value: dict[str, str]) -> dict[str, str]:
        for view, policy in value.items():
            if policy not in (SERVE_STALE, ERROR):
                raise ValueError(f"{view}: {policy!r} is not a reader policy (serve-stale | error)")
        return value

    @field_validator("partitions_start")
    @classmethod
    def _iso_date(cls, value: str) -> str:
        try:
            if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value):
                date.fromisoformat(value)  # a real day: 2026-02-30 is not
                return value
        except ValueError:
            pass
        raise ValueError(f"{value!r} is not an ISO date (YYYY-MM-DD)")

    def reader_policy_for(self, view: str) -> ReaderPolicy:
        """The reader policy of one view: its override, else reader_policy."""
        return self.reader_policy_views.get(view, self.reader_policy)  # type: ignore[return-value]

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_servers or f"{self.kafka_host}:{self.kafka_port}"

    @property
    def lake_root(self) -> str:
        return self.lake_uri or str(self.home / "lake")

    @property
    def serving(self) -> str:
        return self.serving_url or f"sqlite:///{self.home / 'serving.db'}"

    @property
    def jars_dir(self) -> Path:
        return Path(__file__).resolve().parents[2] / ".lklab" / "jars"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    def to_env(self) -> dict[str, str]:
        """LKLAB_* variables that rebuild these settings in a child process (workers, Dagster runs)."""
        return {
            f"LKLAB_{name.upper()}": json.dumps(value) if isinstance(value, (dict, list)) else str(value)
            for name, value in self.model_dump().items()
            if value is not None
        }
