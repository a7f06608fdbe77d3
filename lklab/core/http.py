"""Plain HTTP reads of the lab's own loopback services (the query API, the Dagster web server):
no client library, one shape for every caller."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

READ_TIMEOUT_S = 5.0


def get_json(url: str, timeout_s: float = READ_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    """(status, body) of a GET; (0, {}) when nothing answered."""
    return _json(urllib.request.Request(url), timeout_s)


def post_json(url: str, body: dict[str, Any], timeout_s: float = READ_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    """(status, body) of a JSON POST (a GraphQL query, say); (0, {}) when nothing answered."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    return _json(request, timeout_s)


def _json(request: urllib.request.Request, timeout_s: float) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - loopback URL we built
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"{}")
        except ValueError:
            return exc.code, {}
    except (OSError, ValueError):
        return 0, {}
