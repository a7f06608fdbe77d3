"""Dagster resources. Embedded vs scaled is chosen here, by configuration (LKLAB_* env or
resource config), never by branches inside assets."""

from typing import Optional

from dagster import ConfigurableResource
from pyspark.sql import SparkSession
from sqlalchemy import Engine

from lklab import kafka_io
from lklab.config import Settings
from lklab.serving import make_engine
from lklab.spark import get_spark

_OVERRIDABLE = ("home", "bootstrap_servers", "kafka_port", "topic", "dlq_topic", "lake_uri", "serving_url",
                "spark_master", "spark_driver_memory", "allowed_lateness_s")


class LabSettings(ConfigurableResource):
    """Overrides on top of the LKLAB_* environment; unset fields keep the environment's value."""

    home: Optional[str] = None
    bootstrap_servers: Optional[str] = None
    kafka_port: Optional[int] = None
    topic: Optional[str] = None
    dlq_topic: Optional[str] = None
    lake_uri: Optional[str] = None
    serving_url: Optional[str] = None
    spark_master: Optional[str] = None
    spark_driver_memory: Optional[str] = None
    allowed_lateness_s: Optional[int] = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "LabSettings":
        dumped = settings.model_dump()
        return cls(**{k: (str(dumped[k]) if k == "home" else dumped[k]) for k in _OVERRIDABLE})

    def settings(self) -> Settings:
        return Settings(**{k: getattr(self, k) for k in _OVERRIDABLE if getattr(self, k) is not None})


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
