"""Dagster resources. Embedded vs scaled is chosen here, by configuration (LKLAB_* env or
resource config), never by branches inside assets."""

from typing import Optional

from dagster import ConfigurableResource
from pyspark.sql import SparkSession
from sqlalchemy import Engine

from lklab.log import kafka_io
from lklab.core.config import Settings
from lklab.serving.store import make_engine
from lklab.lake.spark import get_spark

SECRETS = ("pii_key",)  # never Dagster config (it would show in the UI): read from the environment only


class LabSettings(ConfigurableResource):
    """Overrides on top of the LKLAB_* environment, one per lklab.core.config.Settings field (bar
    secrets); unset fields keep the environment's value. A unit test keeps the two in step."""

    home: Optional[str] = None
    bootstrap_servers: Optional[str] = None
    kafka_host: Optional[str] = None
    kafka_port: Optional[int] = None
    kafka_controller_port: Optional[int] = None
    kafka_heap: Optional[str] = None
    topic: Optional[str] = None
    dlq_topic: Optional[str] = None
    partitions: Optional[int] = None
    topic_segment_bytes: Optional[int] = None
    lake_uri: Optional[str] = None
    spark_master: Optional[str] = None
    spark_driver_memory: Optional[str] = None
    spark_shuffle_partitions: Optional[int] = None
    serving_url: Optional[str] = None
    serving_auto_migrate: Optional[bool] = None
    speed_group: Optional[str] = None
    speed_web_port: Optional[int] = None
    speed_batch_max: Optional[int] = None
    speed_batch_within_s: Optional[float] = None
    speed_prefetch: Optional[int] = None
    allowed_lateness_s: Optional[int] = None
    user_sessions_logic: Optional[int] = None
    gate_severity: Optional[dict[str, str]] = None
    blocked_windows_policy: Optional[str] = None
    batch_wait_s: Optional[float] = None
    batch_lease_timeout_s: Optional[float] = None
    schedules_running: Optional[bool] = None
    ledger_grace_s: Optional[int] = None
    speed_heartbeat_timeout_s: Optional[float] = None
    speed_max_lag: Optional[int] = None
    speed_fault: Optional[str] = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "LabSettings":
        dumped = settings.model_dump(exclude=set(SECRETS))
        return cls(**{k: (str(v) if k == "home" else v) for k, v in dumped.items()})

    def settings(self) -> Settings:
        overrides = {k: v for k, v in self.model_dump().items() if k in Settings.model_fields and v is not None}
        return Settings(**overrides)


class SparkResource(ConfigurableResource):
    lab: LabSettings

    def session(self) -> SparkSession:
        return get_spark(self.lab.settings())


class ServingResource(ConfigurableResource):
    lab: LabSettings

    def engine(self) -> Engine:
        return make_engine(self.lab.settings())


class KafkaResource(ConfigurableResource):
    lab: LabSettings

    def end_offsets(self) -> kafka_io.Offsets:
        return kafka_io.run(kafka_io.end_offsets(self.lab.settings()))


def build_resources(lab: LabSettings | None = None) -> dict[str, ConfigurableResource]:
    lab = lab or LabSettings()
    return {
        "lab": lab,
        "spark": SparkResource(lab=lab),
        "serving": ServingResource(lab=lab),
        "kafka": KafkaResource(lab=lab),
    }
