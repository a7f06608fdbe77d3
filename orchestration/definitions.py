"""Dagster Definitions for lklab (loaded by workspace.yaml)."""
from dagster import Definitions, load_asset_checks_from_modules, load_assets_from_modules

from assets import checks as check_module
from assets import hybrid as hybrid_assets
from assets import kappa as kappa_assets
from assets import lake as lake_assets
from assets import serving as serving_assets
from assets import speed as speed_assets
from orchestration.jobs import daily_snapshots, hybrid_job, ingest_job, lambda_batch_job, nightly_ingest
from orchestration.resources import LabSettings, build_resources
from orchestration.sensors import gate_failure_sensor, rebuild_touched_dates, speed_lag_sensor


def make_definitions(lab: LabSettings | None = None) -> Definitions:
    """The same assets, checks and jobs for every deployment; only the resources' configuration differs."""
    return Definitions(
        assets=[*load_assets_from_modules([lake_assets, serving_assets, speed_assets, kappa_assets, hybrid_assets]), kappa_assets.rides_events_log],
        asset_checks=load_asset_checks_from_modules([check_module]),
        jobs=[ingest_job, lambda_batch_job, hybrid_job],
        schedules=[nightly_ingest, daily_snapshots],
        sensors=[rebuild_touched_dates, speed_lag_sensor, gate_failure_sensor],
        resources=build_resources(lab),
    )


defs = make_definitions()
