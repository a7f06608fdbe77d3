"""Dagster's GraphQL API, over plain HTTP (the core never imports Dagster): what a user does in the
UI, done by a script or a test against the web server `lklab up` started. The daemon the lab
runs beside it launches queued runs and backfills."""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from lklab.core.config import Settings
from lklab.core.http import post_json

REPOSITORY = "__repository__"  # a Definitions object's repository
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}

LOCATIONS = """query { repositoriesOrError { __typename ... on RepositoryConnection { nodes { name location { name } } }
  ... on PythonError { message } } }"""
LAUNCH_RUN = """mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) { __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on InvalidSubsetError { message } ... on RunConfigValidationInvalid { errors { message } }
    ... on PipelineNotFoundError { message } ... on UnauthorizedError { message } ... on PythonError { message } } }"""
RUN_STATUS = """query RunStatus($runId: ID!) { runOrError(runId: $runId) { __typename
  ... on Run { runId status jobName } ... on RunNotFoundError { message } ... on PythonError { message } } }"""
LAUNCH_BACKFILL = """mutation LaunchBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) { __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionSetNotFoundError { message } ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message } ... on UnauthorizedError { message } ... on PipelineNotFoundError { message }
    ... on RunConflict { message } ... on PythonError { message } } }"""
BACKFILL_STATUS = """query BackfillStatus($backfillId: String!) { partitionBackfillOrError(backfillId: $backfillId) { __typename
  ... on PartitionBackfill { id status numPartitions partitionNames error { message }
    partitionStatuses { results { partitionName runId runStatus } } }
  ... on BackfillNotFoundError { message } ... on PythonError { message } } }"""
SENSOR = """query Sensor($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) { __typename
  ... on Sensor { id sensorState { status } } ... on SensorNotFoundError { message } ... on PythonError { message } } }"""
STOP_SENSOR = """mutation StopSensor($id: String!) { stopSensor(id: $id) { __typename
  ... on StopSensorMutationResult { instigationState { status } } ... on UnauthorizedError { message } ... on PythonError { message } } }"""


class DagsterApiError(RuntimeError):
    """The web server refused or did not answer: one line."""


def graphql(settings: Settings, query: str, variables: dict[str, Any] | None = None, timeout_s: float = 30.0) -> dict[str, Any]:
    """The `data` of one GraphQL request (a resolver's error comes back as HTTP 500 with a typed body)."""
    status, body = post_json(f"http://127.0.0.1:{settings.dagster_port}/graphql", {"query": query, "variables": variables or {}}, timeout_s)
    if status == 0:
        raise DagsterApiError(f"the Dagster web server on 127.0.0.1:{settings.dagster_port} did not answer")
    if body.get("errors") and not body.get("data"):
        raise DagsterApiError(f"GraphQL error: {body['errors'][0].get('message', body['errors'][0])}")
    return body.get("data") or {}


def _ok(result: dict[str, Any], success: str) -> dict[str, Any]:
    if result.get("__typename") != success:
        raise DagsterApiError(f"{result.get('__typename')}: {result.get('message') or result.get('errors') or result}")
    return result


def repository_location(settings: Settings) -> str:
    """The code location that holds the lab's Definitions (workspace.yaml's module)."""
    found = graphql(settings, LOCATIONS)["repositoriesOrError"]
    for repo in _ok(found, "RepositoryConnection")["nodes"]:
        if repo["name"] == REPOSITORY:
            return repo["location"]["name"]
    raise DagsterApiError("no code location holds the lab's Definitions")


def launch_run(settings: Settings, job: str, tags: dict[str, str] | None = None) -> str:
    """Queue one run of `job` (the daemon's run queue launches it); its run id."""
    params = {"selector": {"repositoryLocationName": repository_location(settings), "repositoryName": REPOSITORY, "jobName": job},
              "runConfigData": {}, "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in (tags or {}).items()]}}
    result = _ok(graphql(settings, LAUNCH_RUN, {"executionParams": params})["launchRun"], "LaunchRunSuccess")
    return result["run"]["runId"]


def stop_sensor(settings: Settings, name: str) -> str:
    """Switch a sensor off, as its toggle in the UI does; its new status."""
    selector = {"repositoryLocationName": repository_location(settings), "repositoryName": REPOSITORY, "sensorName": name}
    sensor = _ok(graphql(settings, SENSOR, {"selector": selector})["sensorOrError"], "Sensor")
    stopped = _ok(graphql(settings, STOP_SENSOR, {"id": sensor["id"]})["stopSensor"], "StopSensorMutationResult")
    return stopped["instigationState"]["status"]


def run_status(settings: Settings, run_id: str) -> str:
    return _ok(graphql(settings, RUN_STATUS, {"runId": run_id})["runOrError"], "Run")["status"]


def launch_backfill(settings: Settings, job: str, partitions: Sequence[str], assets: Sequence[str] | None = None,
                    title: str = "") -> str:
    """Backfill `partitions` of `job`'s partition set (only `assets` of it, when given), as the
    UI's "Materialize…" dialog does; its id."""
    params = {"selector": {"partitionSetName": f"{job}_partition_set",
                           "repositorySelector": {"repositoryLocationName": repository_location(settings), "repositoryName": REPOSITORY}},
              "partitionNames": list(partitions), "fromFailure": False, "title": title or None}
    if assets is not None:
        params["assetSelection"] = [{"path": [name]} for name in assets]
    result = _ok(graphql(settings, LAUNCH_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"], "LaunchBackfillSuccess")
    return result["backfillId"]


def backfill(settings: Settings, backfill_id: str) -> dict[str, Any]:
    return _ok(graphql(settings, BACKFILL_STATUS, {"backfillId": backfill_id})["partitionBackfillOrError"], "PartitionBackfill")


def wait(probe, done: set[str], timeout_s: float, what: str, poll_s: float = 2.0) -> str:
    """Poll `probe()` (a status) until it is in `done`; DagsterApiError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while (status := probe()) not in done:
        if time.monotonic() > deadline:
            raise DagsterApiError(f"{what} still {status} after {timeout_s:.0f}s")
        time.sleep(poll_s)
    return status
