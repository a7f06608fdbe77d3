"""Dagster Definitions for lklab (loaded by workspace.yaml)."""
from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, load_assets_from_modules

from assets import lake as lake_assets
from assets import serving as serving_assets
from orchestration.resources import LabSettings, build_resources

lambda_batch_job = define_asset_job(
    "lambda_batch",
    selection=AssetSelection.groups("lake", "serving"),
    description="bronze → silver → gold → promoted batch build (the Lambda batch layer)",
)


def make_definitions(lab: LabSettings | None = None) -> Definitions:
    """The same assets and jobs for every deployment; only the resources' configuration differs."""
    return Definitions(
        assets=load_assets_from_modules([lake_assets, serving_assets]),
        jobs=[lambda_batch_job],
        resources=build_resources(lab),
    )


defs = make_definitions()
