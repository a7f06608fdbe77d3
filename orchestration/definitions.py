"""Dagster Definitions for lklab (loaded by workspace.yaml).

Assets and checks are loaded by package, one package per domain under assets/ (lambda_arch,
speed, kappa, hybrid, privacy); each package's folder name is its asset group ("lambda_arch" → "lambda")."""
from types import ModuleType

from dagster import (
    Definitions,
    in_process_executor,
    load_asset_checks_from_package_module,
    load_assets_from_package_module,
    multiprocess_executor,
)

import assets
from assets import hybrid, kappa, lambda_arch, privacy, speed
from assets.kappa.replays import rides_events_log
from orchestration.jobs import daily_snapshots, hybrid_job, ingest_job, lambda_batch_job, nightly_ingest
from orchestration.resources import LabSettings, build_resources
from orchestration.sensors import (
    deletion_deadline_sensor,
    gate_failure_sensor,
    kappa_jobs_sensor,
    rebuild_touched_dates,
    speed_lag_sensor,
)

DOMAINS: tuple[ModuleType, ...] = (lambda_arch, speed, kappa, hybrid, privacy)


EXECUTORS = {"in_process": in_process_executor, "multiprocess": multiprocess_executor}  # Settings.dagster_executor


def group_of(package: ModuleType) -> str:
    """The asset group of a domain package: its folder name, without the `_arch` a Python keyword forces."""
    return package.__name__.rsplit(".", 1)[-1].removesuffix("_arch")


def make_definitions(lab: LabSettings | None = None) -> Definitions:
    """The same assets, checks and jobs for every deployment; only the resources' configuration differs."""
    return Definitions(
        assets=[*(a for package in DOMAINS for a in load_assets_from_package_module(package, group_name=group_of(package))),
                rides_events_log],
        asset_checks=load_asset_checks_from_package_module(assets),
        jobs=[ingest_job, lambda_batch_job, hybrid_job],
        schedules=[nightly_ingest, daily_snapshots],
        sensors=[rebuild_touched_dates, speed_lag_sensor, kappa_jobs_sensor, gate_failure_sensor, deletion_deadline_sensor],
        resources=build_resources(lab),
        executor=EXECUTORS[(lab or LabSettings()).settings().dagster_executor],
    )


defs = make_definitions()
