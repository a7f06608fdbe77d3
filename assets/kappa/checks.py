"""The Kappa side of the history gate: before a cutover to a logic that reads a field an older
schema version lacks (revenue_per_minute v2 reads tip_cents), every record of the log must decode
with the current code. `lklab cutover` runs the same check (lklab.kappa.cutover.history_check)
and refuses on it; here it is visible, and blocking, on each view's Kappa asset."""
from dagster import AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity, MetadataValue, asset_check

from assets.kappa.replays import kappa_asset_key
from lklab import views
from lklab.kappa.cutover import history_check
from orchestration.resources import LabSettings


def materialized_version(context: AssetCheckExecutionContext, view: str) -> int | None:
    """The version the last materialization of kappa_<view> ran (its `version` metadata)."""
    event = context.instance.get_latest_materialization_event(kappa_asset_key(view))
    metadata = event.asset_materialization.metadata if event is not None and event.asset_materialization else {}
    return int(metadata["version"].value) if "version" in metadata else None


def history_readable(view: str):
    @asset_check(asset=kappa_asset_key(view), blocking=True, name="history_readable",
                 description=f"the version of {view} just materialized: when its logic reads a field an older schema "
                             f"version lacks, the whole log must decode with the current code")
    def _check(context: AssetCheckExecutionContext, lab: LabSettings) -> AssetCheckResult:
        version = materialized_version(context, view)
        spec = views.spec_at(view, version if version is not None else max(views.LOGIC_VERSIONS[view]))
        check = history_check(lab.settings(), spec)
        return AssetCheckResult(passed=check.passed, description=check.summary, severity=AssetCheckSeverity.ERROR,
                                metadata={"unreadable": MetadataValue.md("\n".join(f"- {line}" for line in check.lines) or "none")})

    return _check


history_checks = [history_readable(view) for view in views.VIEWS]
