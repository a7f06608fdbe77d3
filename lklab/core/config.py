"""Settings for one lklab deployment (embedded by default, scaled by config only)."""
from __future__ import annotations

import json
import os
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


ReaderPolicy = Literal["serve-stale", "error"]
SERVE_STALE, ERROR = "serve-stale", "error"
# the layers a named fault (lklab.views.faults) can be switched on in: the two that run the shared
# fold (speed, kappa: logic faults), and the two publishing transactions (batch: the promotion of
# a batch build; cutover: the Kappa alias swap) where a stall fault holds the commit open
FAULT_LAYERS = ("speed", "kappa", "batch", "cutover")
# `lklab kafka start` records the embedded cluster it started here, relative to home (see started_brokers)
CLUSTER_FILE = Path("kafka") / "cluster.json"


def default_home() -> Path:
    return Path.cwd() / ".lklab"


def started_brokers(home: Path) -> int | None:
    """The node count of the embedded cluster last started under `home`, or None (never started
    with a cluster file: a fresh home, or one from before multi-broker clusters)."""
    path = home / CLUSTER_FILE
    try:
        return int(json.loads(path.read_text())["brokers"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{path} is not an lklab cluster file (expected {{\"brokers\": N}}); delete {path.parent} to start over") from None


class Settings(BaseSettings):
    """Every knob, read from `LKLAB_*` environment variables or passed explicitly."""

    model_config = SettingsConfigDict(env_prefix="LKLAB_", frozen=True)

    home: Path = Field(default_factory=default_home, description="state, logs, lake, Kafka data")

    # event log
    bootstrap_servers: str | None = Field(None, description="external Kafka; None = the embedded broker")
    kafka_host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    kafka_brokers: int = Field(1, ge=1, le=9, description="nodes of the embedded KRaft cluster (each broker+controller); node i "
                               "listens on kafka_port + i - 1 and kafka_controller_port + i - 1. Unset = the size of the cluster "
                               "`lklab kafka start --brokers N` last started under home (<home>/kafka/cluster.json), else 1")
    kafka_java_options: str = Field("-XX:+UseG1GC", description="JVM options of each broker node (the heap is kafka_heap). "
                                    "The tests run brokers with the serial collector and C1 only: a test broker's CPU is "
                                    "mostly its JVM's start-up, not its traffic")
    kafka_heap: str = Field("512m", description="JVM heap of a single-node broker; nodes of a larger cluster get at most 384m each")
    replication_factor: int | None = Field(None, ge=1, description="replicas of the topics lklab creates; None = min(3, kafka_brokers). "
                                           "Set it (and min_insync_replicas) for an external cluster (bootstrap_servers)")
    min_insync_replicas: int | None = Field(None, ge=1, description="topic min.insync.replicas: an acks=all write needs this many "
                                            "replicas; None = 2 when the replication factor is 3 or more, else 1")
    topic: str = "rides.events"
    dlq_topic: str = "rides.events.dlq"
    partitions: int = Field(4, ge=1)
    topic_segment_bytes: int | None = Field(None, ge=1024, description="segment size of the topics lklab creates; small = retention bites sooner")

    # lake / batch
    lake_uri: str | None = Field(None, description="Delta root; None = <home>/lake")
    spark_master: str = "local[2]"
    spark_driver_memory: str = "1g"
    spark_shuffle_partitions: int = Field(default_factory=lambda: os.cpu_count() or 2,
                                          description="Spark's shuffle partitions and default parallelism: the cores "
                                                      "(gold's groups are small, and each extra task is fixed cost)")
    spark_java_options: str = Field("-XX:+UseSerialGC", description="JVM options for Spark's driver and executors. The "
                                    "serial collector: on 2 cores and a heap of 1-2 GB, G1's concurrent threads took "
                                    "CPU from the batch (three small batch runs: 226-252 JVM CPU-s against 273-282 with G1, measured)")
    spark_codegen: bool = Field(True, description="Spark's code generation, whole-stage and per expression (off: "
                                "expressions are interpreted). The tests turn it off: on their tiny tables Janino compiling "
                                "generated Java was a quarter of the Spark JVM's samples (JFR); a gate test's machine CPU "
                                "went from about 145 to 125 s without it. Keep it on for volume (the bench)")

    # speed layer / serving
    serving_url: str | None = Field(None, description="SQLAlchemy URL; None = SQLite (WAL) under <home>")
    serving_auto_migrate: bool = Field(True, description="upgrade a serving store behind the code on start; off = refuse and name `lklab db upgrade`")
    api_token: SecretStr | None = Field(None, description="bearer token the HTTP API requires on every request but /health "
                                        "(LKLAB_API_TOKEN, ≥ 16 characters; never logged); without one `lklab serve` binds loopback only")
    speed_group: str = "lklab-speed"
    speed_web_port: int = 6066
    speed_source: Literal["batch", "stream"] = Field("batch", description="how the speed worker takes records: `batch`, whole "
                                                     "Kafka fetches from a consumer in the speed group (Faust runs the worker, "
                                                     "its web, timers and DLQ producer); `stream`, a Faust agent event by event, "
                                                     "whose per-event dispatch capped it at about 8 % of a raw consume")
    speed_batch_max: int = Field(5000, ge=1, description="records per speed-layer sink transaction, at most")
    speed_batch_within_s: float = Field(0.2, gt=0, description="stream source: a partial batch is applied after this long (added latency); "
                                        "batch source: how long an idle worker waits for records before asking Kafka again")
    speed_prefetch: int = Field(20_000, ge=1, description="Faust stream buffer per partition (back-pressure; `stream` source)")
    speed_workers: int = Field(1, ge=1, le=16, description="speed-layer worker processes in one consumer group, sharing "
                               "the partitions; with more than one, each batch looks its events' held state up")
    speed_worker_index: int = Field(0, ge=0, description="which speed worker this process is (`lklab speed start` sets it for "
                                    "each); worker i listens on speed_web_port + i")
    speed_event_loop: Literal["uvloop", "asyncio"] = Field("uvloop", description="the speed worker's event loop: uvloop "
                                                           "lifted one Faust worker's ceiling by about 18 % over asyncio's")
    speed_state_in_memory: bool = Field(True, description="hold the speed layer's dedup and contribution state in memory "
                                        "while one worker owns every partition (lklab.engine.sink.OwnedState); off: looked up "
                                        "per batch, as it always is while several workers share the partitions")
    allowed_lateness_s: int = Field(300, ge=0, description="99.9% of the seed's events arrive within 5 minutes")
    correction_horizon_s: int = Field(72 * 3600, gt=0, description="dedup and correction state is kept for this much event time "
                                      "behind each partition's progress (the seed's events arrive within 48 h): a record older than "
                                      "that is refused by Kappa and left to batch by Lambda (lklab.engine.horizon)")
    user_sessions_logic: int = Field(2, ge=1, le=2, description="batch sessionization logic: 1 has the midnight bug, 2 the fix")
    revenue_logic: int | None = Field(None, ge=1, le=2, description="revenue_per_minute logic of the Lambda layers (batch and "
                                      "speed): 1 ignores tips, 2 counts them (schema v2); unset: the view's current logic (1)")
    gate_severity: dict[str, str] = Field(default_factory=dict, description="per-gate severity overrides (fail | warn | drop); "
                                          "names and defaults in lklab.core.gates.GATES")
    blocked_windows_policy: Literal["serve-flagged", "refuse"] = Field(
        "serve-flagged", description="while the batch layer is blocked: serve speed rows of diverged windows flagged, or refuse them")
    batch_views: list[str] | None = Field(None, description="the views the Lambda batch layer builds, gates and promotes; None = every "
                                          "view. A lab for one view (a drill) builds only it; the others are not served by Lambda")
    batch_wait_s: float = Field(600.0, ge=0, description="`lklab batch` waits this long for a batch run in flight on its dates")
    batch_lease_timeout_s: float = Field(3600.0, gt=0, description="a running batch run's hold on its dates expires after this long")
    dagster_executor: Literal["in_process", "multiprocess"] = Field(
        "in_process", description="how a Dagster run executes its steps: in_process shares one Spark session per run (the "
                                  "embedded lab: a JVM per step would swamp a small machine); multiprocess, a process per step")
    schedules_running: bool = Field(False, description="the nightly_ingest and daily_snapshots schedules start switched on")
    partitions_start: str = Field("2026-01-01", description="first event date (YYYY-MM-DD, UTC) of the Dagster daily partitions; "
                                  "earlier dates are outside the partition set (read when orchestration.partitions is imported)")
    kappa_checkpoint_interval_s: float = Field(0.25, gt=0, description="a live Kappa job checkpoints (makes its output visible) "
                                               "at least this often: 0.25 s held the p99 to 523 ms at 90 % of its rate, where 0.5 s "
                                               "gave 1,184 ms, at the same sustained rate (bench/BOUNDS.md)")
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

    # The running lab (`lklab up`): its listeners (127.0.0.1) and the live traffic of --with-traffic
    api_port: int = Field(8000, ge=1, le=65535, description="the query API and dashboard (`lklab up`, links in Dagster's gate metadata)")
    dagster_port: int = Field(3000, ge=1, le=65535, description="the Dagster web UI that `lklab up` starts")
    traffic_rides_per_minute: float = Field(30.0, gt=0, description="`lklab up --with-traffic`: rides per event-time minute, paced in real time")
    traffic_late_fraction: float = Field(0.001, ge=0, le=1, description="`--with-traffic`: of deliveries, late beyond on-time (the seed's profile)")
    traffic_late_max_s: int = Field(48 * 3600, ge=2, description="`--with-traffic`: the latest a late delivery arrives after its event time")
    traffic_on_time_max_s: int = Field(300, ge=1, description="`--with-traffic`: an on-time delivery arrives within this of its event time")

    # PII
    pii_key: str | None = Field(None, description="Fernet key; None = a 0600 key file under <home>")

    @model_validator(mode="before")
    @classmethod
    def _started_cluster(cls, data: Any) -> Any:
        # A cluster started with `--brokers 3` is found by every later command (and, through
        # to_env, every child process) without repeating the flag; an explicit value still wins.
        if not isinstance(data, dict) or data.get("kafka_brokers") is not None or data.get("bootstrap_servers"):
            return data
        brokers = started_brokers(Path(data.get("home") or default_home()))
        return data if brokers is None else {**data, "kafka_brokers": brokers}

    @model_validator(mode="after")
    def _replication_fits(self) -> Settings:
        if self.topic_min_insync_replicas > self.topic_replication_factor:
            raise ValueError(f"min_insync_replicas {self.topic_min_insync_replicas} exceeds the replication factor "
                             f"{self.topic_replication_factor}: no acks=all write could ever succeed")
        return self

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
        """Every broker of the embedded cluster, so a client still connects while any one is down."""
        if self.bootstrap_servers:
            return self.bootstrap_servers
        return ",".join(f"{self.kafka_host}:{self.kafka_port + i}" for i in range(self.kafka_brokers))

    @property
    def topic_replication_factor(self) -> int:
        """Replicas of every topic lklab creates: one per broker, up to 3."""
        return self.replication_factor or min(3, self.kafka_brokers)

    @property
    def topic_min_insync_replicas(self) -> int:
        """With 3 replicas an acknowledged write is on 2 of them, so losing any one broker loses nothing."""
        return self.min_insync_replicas or (2 if self.topic_replication_factor >= 3 else 1)

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
            f"LKLAB_{name.upper()}": json.dumps(value) if isinstance(value, (dict, list))
            else value.get_secret_value() if isinstance(value, SecretStr) else str(value)  # a child needs the secret itself
            for name, value in self.model_dump().items()
            if value is not None
        }
