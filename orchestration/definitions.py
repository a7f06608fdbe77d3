"""Dagster Definitions for lklab (loaded by workspace.yaml)."""
from __future__ import annotations

from dagster import AssetSelection, Definitions, define_asset_job, load_assets_from_modules

from assets import lake as lake_assets
from assets import serving as serving_assets
from orchestration.resources import build_resources


def batch_assets() -> list:
    return load_assets_from_modules([lake_assets, serving_assets])


lambda_batch_job = define_asset_job(
    "lambda_batch",
    selection=AssetSelection.groups("lake", "serving"),
    description="bronze → silver → gold → promoted batch build (the Lambda batch layer)",
)

defs = Definitions(assets=batch_assets(), jobs=[lambda_batch_job], resources=build_resources())
