"""The security chaos check at size small, on real services (broker, the API, `dagster dev`,
PostgreSQL, the Faust worker, a Kappa job, Spark): every listener is on loopback, no plaintext PII
is found in any store, and the API's bind rule holds through the CLI."""
from __future__ import annotations

import json

import pytest

from lklab.chaos.catalog import check
from lklab.chaos.registry import ChaosContext
from lklab.chaos.result import CheckResult
from lklab.core.config import Settings
from lklab.core.pii import WITHHELD
from lklab.privacy import keys

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture
def result(isolated: Settings, spark) -> CheckResult:
    return check("security").run(ChaosContext(name="security", settings=isolated, size="small", seed=7, spark=spark))


def test_listeners_are_on_loopback_no_plaintext_pii_is_kept_and_the_bind_rule_holds(result: CheckResult) -> None:
    figures = {f.name: f for f in result.figures}
    assert result.passed, [(f.name, f.shown(), f.bound) for f in result.figures if not f.ok]
    for service in ("Kafka broker", "query API", "Dagster UI (dagster dev)", "PostgreSQL", "Faust speed worker", "Spark driver"):
        assert figures[f"{service} listeners (OS socket table)"].value >= 1, (service, result.evidence["listeners"])
    assert figures["listeners not on loopback"].value == 0
    assert figures["a listener on 0.0.0.0 is seen as not loopback (control)"].ok
    assert figures["plaintext PII values found"].value == 0, result.evidence["hits"]
    assert figures["values the scan finds in a plaintext copy (control)"].ok
    assert figures["bad lines carrying PII dead-lettered"].value == 12  # 6 kinds, 2 each
    assert result.evidence["bind_rule"]["no_token"]["www_authenticate"] == "Bearer"


def test_a_dead_letter_keeps_no_plaintext_pii(tmp_path) -> None:
    cipher = keys.cipher(Settings(home=tmp_path))
    pii = {"name": "Zoë Qvix-1", "phone": "+999 555 1"}
    cases = {
        "another field is bad": ("field 'event_type': 'teleport' is not one of …", json.dumps({"event_type": "teleport", "pii": pii})),
        "the pii itself is bad": ("field 'pii': ['Zoë Qvix-1', '+999 555 1'] is not valid", json.dumps({"pii": list(pii.values())})),
        "not JSON": ("malformed JSON: …", '{"event_id": "e1", "pii": {"name": "Zoë Qvix-1", '),
        "a reason quotes a field inside it": ("field 'name': 'Zoë \\ud800Qvix-1' holds a lone UTF-16 surrogate",
                                              json.dumps({"pii": {"name": "Zoë \ud800Qvix-1"}})),
    }
    for name, (reason, line) in cases.items():
        sealed_reason, sealed = cipher.seal_dead_letter(reason, line)
        assert "Qvix" not in sealed and "Qvix" not in sealed_reason and "+999" not in sealed, (name, sealed, sealed_reason)
    assert cipher.seal_dead_letter(*cases["the pii itself is bad"])[0] == WITHHELD
    token = json.loads(cipher.seal_dead_letter(*cases["another field is bad"])[1])["pii"]
    assert cipher.open(None, token) == pii  # sealed, not lost: the operator who holds the key can still read it
    assert cipher.seal_dead_letter("r", '{"event_id": "e2"}') == ("r", '{"event_id": "e2"}')


def test_with_a_token_every_path_but_health_needs_it(isolated: Settings) -> None:
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from lklab.api.app import create_app

    token = "t" * 8 + "0123456789abcdef"
    settings = isolated.model_copy(update={"api_token": SecretStr(token)})
    assert token not in repr(settings) and token not in str(settings.model_dump())  # never printed with the settings
    assert settings.to_env()["LKLAB_API_TOKEN"] == token  # a child process (the API) gets the secret itself
    client = TestClient(create_app(settings))
    for path in ("/views", "/kappa/views/user_sessions", "/openapi.json", "/docs", "/no-such-path"):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            response = client.get(path, headers=headers)
            assert response.status_code == 401, (path, headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer" and "\n" not in response.json()["detail"]
            assert token not in response.text
    bearer = {"Authorization": f"Bearer {token}"}
    assert client.get("/views", headers=bearer).status_code == 200
    assert client.get("/views", headers={"Authorization": f"bearer {token}"}).status_code == 200  # the scheme is case-insensitive
    assert client.get("/health").status_code in (200, 503)  # probes need no credentials
    schema = client.get("/openapi.json", headers=bearer).json()
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert schema["paths"]["/views"]["get"]["security"] == [{"bearer": []}] and "401" in schema["paths"]["/views"]["get"]["responses"]
    assert "security" not in schema["paths"]["/health"]["get"] and "401" not in schema["paths"]["/health"]["get"]["responses"]
    # without a token the API stays open, as on loopback it always was
    assert TestClient(create_app(isolated)).get("/views").status_code == 200


def test_the_bind_rule_and_a_short_token_are_refused_in_one_line(isolated: Settings) -> None:
    from pydantic import SecretStr

    from lklab.api.app import create_app, is_loopback, serve_refusal

    for host in ("127.0.0.1", "127.9.9.9", "::1", "[::1]", "::ffff:127.0.0.1", "localhost", "LOCALHOST"):
        assert is_loopback(host) and serve_refusal(host, isolated) is None, host
    for host in ("0.0.0.0", "::", "", "10.0.0.5", "192.168.1.2", "example.org", "::ffff:10.0.0.1"):
        assert not is_loopback(host), host
        refusal = serve_refusal(host, isolated)
        assert refusal and "LKLAB_API_TOKEN" in refusal and "\n" not in refusal, host
    assert serve_refusal("0.0.0.0", isolated.model_copy(update={"api_token": SecretStr("s" * 32)})) is None
    short = isolated.model_copy(update={"api_token": SecretStr("hunter2")})
    with pytest.raises(ValueError, match="LKLAB_API_TOKEN has 7 characters") as refused:
        create_app(short)
    assert "hunter2" not in str(refused.value)
