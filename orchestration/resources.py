"""Dagster resources. Embedded vs scaled is chosen here, by configuration (LKLAB_* env or
resource config), never by branches inside assets."""

from pathlib import Path
from types import UnionType
from typing import Any, Literal, Optional, Union, get_args, get_origin

from dagster import ConfigurableResource
from pydantic import Field, create_model
from pyspark.sql import SparkSession
from sqlalchemy import Engine

from lklab.log import kafka_io
from lklab.core.config import Settings
from lklab.serving.store import make_engine
from lklab.lake.spark import get_spark

SECRETS = ("pii_key", "api_token")  # never Dagster config (it would show in the UI): read from the environment only


def _config_type(annotation: Any) -> Any:
    """The Dagster-config type of a Settings field's override: its type without None, a Path as
    str (Dagster config has no paths), a Literal as str (Settings validates the value)."""
    if get_origin(annotation) in (Union, UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else Union[tuple(args)]
    if annotation is Path or get_origin(annotation) is Literal:
        return str
    return annotation


class _LabSettingsBase(ConfigurableResource):
    @classmethod
    def from_settings(cls, settings: Settings) -> "LabSettings":
        dumped = settings.model_dump(exclude=set(SECRETS))
        return cls(**{k: (str(v) if isinstance(v, Path) else v) for k, v in dumped.items()})

    def settings(self) -> Settings:
        overrides = {k: v for k, v in self.model_dump().items() if k in Settings.model_fields and v is not None}
        return Settings(**overrides)


# One Optional override per lklab.core.config.Settings field (bar secrets), generated from Settings
# so a new setting is Dagster config with no edit here; unset fields keep the environment's value.
LabSettings = create_model(
    "LabSettings",
    __base__=_LabSettingsBase,
    __module__=__name__,
    __doc__="Overrides on top of the LKLAB_* environment, one per lklab.core.config.Settings field (bar secrets, "
            "generated from Settings); unset fields keep the environment's value.",
    **{
        name: (Optional[_config_type(field.annotation)], Field(None, description=field.description))
        for name, field in Settings.model_fields.items()
        if name not in SECRETS
    },
)


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
