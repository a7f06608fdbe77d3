"""The HTTP query API's edges: unknown query parameters, the CLI's key aliases, /health's status
and the offline /docs. The speed views are written by the speed layer's own sink; the broker is real."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from fastapi.testclient import TestClient

from lklab.api.app import create_app
from lklab.core.config import Settings
from lklab.core.events import SCHEMA_VERSION, Event, EventType
from lklab.serving.store import make_engine
from lklab.engine.sink import apply_records
from lklab.serving.progress import beat

pytestmark = pytest.mark.integration
CAP = EventType.PAYMENT_CAPTURED


def payment(eid: str, city: str, driver: str, amount: int) -> bytes:
    return Event(event_id=eid, event_version=1, schema_version=SCHEMA_VERSION, event_type=CAP,
                 event_time=datetime(2026, 11, 17, 10, 0, 30, tzinfo=timezone.utc), ride_id=eid, user_id="u1",
                 driver_id=driver, city=city, amount_cents=amount).to_json().encode()


@pytest.fixture
def client(isolated: Settings) -> TestClient:
    """Speed rows for two cities and two drivers, and a live heartbeat (else serving is batch-only)."""
    records = [(0, 0, payment("r1", "Zürich", "d1", 700)), (0, 1, payment("r2", "berlin", "d2", 300))]
    apply_records(make_engine(isolated), isolated, isolated.topic, records)
    beat(make_engine(isolated), isolated.speed_group)
    return TestClient(create_app(isolated))


def rows(response) -> list[tuple]:
    assert response.status_code == 200, response.text
    body = response.json()
    return sorted((r.get("city") or r.get("driver_id"), r[body["view"] == "driver_earnings_daily" and "earnings_cents" or "revenue_cents"])
                  for r in body["rows"])


def test_city_and_driver_filter_like_the_cli_and_unknown_parameters_are_refused(client: TestClient) -> None:
    assert rows(client.get("/views/revenue_per_minute")) == [("Zürich", 700), ("berlin", 300)]
    assert rows(client.get("/views/revenue_per_minute", params={"city": "Zürich"})) == [("Zürich", 700)]
    assert rows(client.get("/views/revenue_per_minute", params={"key": "berlin"})) == [("berlin", 300)]
    assert rows(client.get("/views/driver_earnings_daily", params={"driver": "d2"})) == [("d2", 300)]
    refused = {
        "arch=kappa": "unknown query parameter 'arch'; /views/revenue_per_minute accepts city, driver, from, key, limit, to",
        "cty=Z%C3%BCrich": "unknown query parameter 'cty'; /views/revenue_per_minute accepts city, driver, from, key, limit, to",
        "driver=": "query parameter 'driver': revenue_per_minute is keyed by city (use 'key' or 'city')",
        "city=": "query parameter 'city' is empty",
        "key=berlin&city=berlin": "query parameters 'key' and 'city' both filter the key: give one",
    }
    for query, detail in refused.items():
        response = client.get(f"/views/revenue_per_minute?{query}")
        assert (response.status_code, response.json()) == (422, {"detail": detail}), query
    response = client.get("/lambda/status?verbose=1")
    assert (response.status_code, response.json()["detail"]) == (422, "unknown query parameter 'verbose'; /lambda/status accepts none")


def test_health_is_503_while_the_speed_layer_is_unhealthy(isolated: Settings) -> None:
    client = TestClient(create_app(isolated))
    down = client.get("/health")
    assert down.status_code == 503 and down.json()["speed"]["healthy"] is False  # no heartbeat yet
    beat(make_engine(isolated), isolated.speed_group)
    up = client.get("/health")
    assert up.status_code == 200 and up.json()["speed"]["healthy"] is True, up.json()


def test_docs_load_swagger_ui_from_the_api_itself(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "https://" not in page.text and "http://" not in page.text, page.text  # nothing from a CDN
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert f"/static-offline-docs/{asset}" in page.text
        assert client.get(f"/static-offline-docs/{asset}").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "lklab query API"


def test_the_kappa_routes_take_the_same_parameters_and_refuse_in_one_line(isolated: Settings) -> None:
    client = TestClient(create_app(isolated))
    views_list = "revenue_per_minute, daily_active_users, driver_earnings_daily, user_sessions"
    accepts = "accepts city, driver, from, key, limit, to"
    refused = {
        "/kappa/views/revenue_per_day": (404, f"unknown view 'revenue_per_day'; one of: {views_list}"),
        "/kappa/views/revenue_per_minute?cty=berlin": (422, f"unknown query parameter 'cty'; /kappa/views/revenue_per_minute {accepts}"),
        "/kappa/views/revenue_per_minute?driver=d1": (422, "query parameter 'driver': revenue_per_minute is keyed by city (use 'key' or 'city')"),
        "/kappa/views/revenue_per_minute?from=noon": (422, "query parameter 'from': 'noon' is not an ISO-8601 time like 2026-11-17T10:00Z"),
        "/kappa/views/revenue_per_minute?from=2026-11-17T11:00Z&to=2026-11-17T10:00Z":
            (422, "query parameter 'from' (2026-11-17T11:00Z) is not before 'to' (2026-11-17T10:00Z)"),
        "/kappa/views/revenue_per_minute?limit=0": (422, "query parameter 'limit': Input should be greater than or equal to 1"),
        "/kappa/views?view=x": (422, "unknown query parameter 'view'; /kappa/views accepts none"),
        "/kappa/status?all=1": (422, "unknown query parameter 'all'; /kappa/status accepts none"),
    }
    for url, (status, detail) in refused.items():
        response = client.get(url)
        assert (response.status_code, response.json()) == (status, {"detail": detail}), url
    documented = client.get("/openapi.json").json()["paths"]
    for path in ("/views/{view}", "/kappa/views/{view}"):
        assert "503" in documented[path]["get"]["responses"], path
        assert {p["name"] for p in documented[path]["get"]["parameters"]} == {"view", "key", "city", "driver", "from", "to", "limit"}


def test_a_lab_whose_batch_layer_builds_one_view_refuses_the_others_by_name(isolated: Settings) -> None:
    one = isolated.model_copy(update={"batch_views": ["revenue_per_minute"]})
    records = [(0, 0, payment("r1", "Zürich", "d1", 700))]
    apply_records(make_engine(one), one, one.topic, records)
    beat(make_engine(one), one.speed_group)
    client = TestClient(create_app(one))
    assert rows(client.get("/views/revenue_per_minute")) == [("Zürich", 700)]
    response = client.get("/views/driver_earnings_daily")
    assert (response.status_code, response.json()) == (
        404, {"detail": "driver_earnings_daily is not built by this lab's batch layer (batch_views: revenue_per_minute)"})
    with pytest.raises(ValueError, match="batch_views: revenue_per_hour is not a view"):
        create_app(isolated.model_copy(update={"batch_views": ["revenue_per_hour"]}))
