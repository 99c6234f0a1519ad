"""Client lifecycle through the admin API (docs/http-api.md, OAuth endpoints and admin API): introspection, revocation,
suspension, secret rotation, static API keys, limits on lifetimes."""

from __future__ import annotations

from support import ECHO_INTEGRATIONS, Client, Credgate, describe, http, oauth_error, spec_error, unique


def _client_with_cred(gate: Credgate, **kw) -> Client:  # noqa: ANN003
    t = unique("life")
    gate.put_bearer(t, "echo", f"c-{unique('x')}")
    return gate.create_client(tenant=t, integrations=ECHO_INTEGRATIONS, **kw)


def _introspect_as_admin(gate: Credgate, token: str) -> dict:
    with http() as c:
        r = c.post(
            f"{gate.url}/oauth/introspect",
            data={"token": token},
            headers={"Authorization": f"Bearer {gate.admin_token}"},
        )
    assert r.status_code == 200, describe(r)
    return r.json()


def test_introspection(gate: Credgate) -> None:
    client = _client_with_cred(gate)
    token = gate.token(client)
    info = _introspect_as_admin(gate, token)
    assert info["active"] is True, info
    assert info["client_id"] == client.client_id
    assert info["sub"] == client.client_id
    assert info["tenant"] == client.tenant
    assert info["iss"] == gate.url
    for k in ("scope", "exp", "iat", "aud", "token_type"):
        assert k in info, f"{k} missing from introspection: {info}"
    assert _introspect_as_admin(gate, "garbage") == {"active": False}


def test_introspection_by_client_needs_introspect_scope(gate: Credgate) -> None:
    target = gate.token(_client_with_cred(gate))
    plain = _client_with_cred(gate)
    with http() as c:
        r = c.post(f"{gate.url}/oauth/introspect", data={"token": target}, auth=(plain.client_id, plain.client_secret))
    assert r.status_code in (401, 403), f"client without `introspect` scope could introspect: {describe(r)}"
    inspector = gate.create_client(tenant=unique("insp"), scopes=["introspect"], integrations=[])
    with http() as c:
        r = c.post(
            f"{gate.url}/oauth/introspect", data={"token": target}, auth=(inspector.client_id, inspector.client_secret)
        )
    assert r.status_code == 200, describe(r)
    assert r.json()["active"] is True


def test_revocation(gate: Credgate) -> None:
    client = _client_with_cred(gate)
    token, other = gate.token(client), gate.token(client)
    assert gate.proxy("GET", "/echo/r", token).status_code == 200
    with http() as c:
        r = c.post(f"{gate.url}/oauth/revoke", data={"token": token}, auth=(client.client_id, client.client_secret))
        assert r.status_code == 200, describe(r)
        r2 = c.post(
            f"{gate.url}/oauth/revoke", data={"token": "garbage"}, auth=(client.client_id, client.client_secret)
        )
        assert r2.status_code == 200, describe(r2)
    r = gate.proxy("GET", "/echo/r", token)
    assert r.status_code == 401, f"revoked token still accepted: {describe(r)}"
    assert _introspect_as_admin(gate, token)["active"] is False
    assert gate.proxy("GET", "/echo/r", other).status_code == 200, "revoking one token revoked another"


def test_suspension_stops_tokens_at_once(gate: Credgate) -> None:
    client = _client_with_cred(gate)
    token = gate.token(client)
    assert gate.proxy("GET", "/echo/s", token).status_code == 200
    r = gate.admin("PUT", f"/api/admin/oauth/clients/{client.client_id}", json={"active": False})
    assert r.status_code == 200, describe(r)
    r = gate.proxy("GET", "/echo/s", token)
    assert r.status_code == 401, f"suspended client's token still accepted: {describe(r)}"
    assert spec_error(r)["code"] == "UNAUTHORIZED"
    r = gate.token_request(client)
    assert r.status_code == 403, describe(r)
    assert oauth_error(r)["error"] == "access_denied"
    # reactivated: a new token works, the one issued before the suspension does not
    r = gate.admin("PUT", f"/api/admin/oauth/clients/{client.client_id}", json={"active": True})
    assert r.status_code == 200, describe(r)
    assert gate.proxy("GET", "/echo/s", gate.token(client)).status_code == 200
    assert gate.proxy("GET", "/echo/s", token).status_code == 401


def test_secret_rotation_with_grace(gate: Credgate) -> None:
    client = _client_with_cred(gate)
    r = gate.admin("POST", f"/api/admin/oauth/clients/{client.client_id}/rotate-secret", json={"graceMinutes": 5})
    assert r.status_code == 200, describe(r)
    body = r.json()
    assert body["success"] is True and body["clientId"] == client.client_id
    for k in ("clientSecret", "rotatedAt", "previousSecretValidUntil"):
        assert body.get(k), f"{k} missing: {body}"
    new = Client(client.client_id, body["clientSecret"], client.tenant, {})
    assert new.client_secret != client.client_secret
    assert gate.token_request(new).status_code == 200
    assert gate.token_request(client).status_code == 200, "old secret refused inside the grace period"


def test_secret_rotation_without_grace(gate: Credgate) -> None:
    client = _client_with_cred(gate)
    r = gate.admin("POST", f"/api/admin/oauth/clients/{client.client_id}/rotate-secret", json={"graceMinutes": 0})
    assert r.status_code == 200, describe(r)
    new = Client(client.client_id, r.json()["clientSecret"], client.tenant, {})
    assert gate.token_request(new).status_code == 200
    r = gate.token_request(client)
    assert r.status_code == 401, describe(r)
    assert oauth_error(r)["error"] == "invalid_client"


def test_static_api_key(gate: Credgate) -> None:
    client = _client_with_cred(gate)
    r = gate.admin("POST", f"/api/admin/oauth/clients/{client.client_id}/generate-token", json={"expirationDays": 30})
    assert r.status_code in (200, 201), describe(r)
    body = r.json()
    for k in ("api_key", "token_type", "expires_in", "expires_at", "scope"):
        assert k in body, f"{k} missing: {body}"
    assert 29 * 86400 <= body["expires_in"] <= 30 * 86400
    assert gate.proxy("GET", "/echo/k", body["api_key"]).status_code == 200
    r = gate.admin(
        "POST", f"/api/admin/oauth/clients/{client.client_id}/generate-token", json={"expirationDays": 100000}
    )
    assert r.status_code == 400, describe(r)
    assert spec_error(r)["code"] == "BAD_REQUEST"


def test_token_lifetime_over_max_refused(gate: Credgate) -> None:
    r = gate.admin(
        "POST",
        "/api/admin/oauth/clients",
        json={
            "name": "too-long",
            "tenant": unique("max"),
            "scopes": ["mcp"],
            "allowedIntegrations": ["echo"],
            "tokenExpirationMinutes": 1441,
        },
    )
    assert r.status_code == 400, describe(r)
    assert spec_error(r)["code"] == "BAD_REQUEST"


def test_custom_token_lifetime(gate: Credgate) -> None:
    client = gate.create_client(tenant=unique("ttl"), tokenExpirationMinutes=5)
    r = gate.token_request(client)
    assert r.status_code == 200, describe(r)
    assert 290 <= r.json()["expires_in"] <= 300


def test_client_crud(gate: Credgate) -> None:
    client = _client_with_cred(gate)
    r = gate.admin("GET", "/api/admin/oauth/clients")
    assert r.status_code == 200, describe(r)
    assert client.client_id in r.text
    assert client.client_secret not in r.text
    r = gate.admin("DELETE", f"/api/admin/oauth/clients/{client.client_id}")
    assert r.status_code in (200, 204), describe(r)
    r = gate.admin("GET", f"/api/admin/oauth/clients/{client.client_id}")
    assert r.status_code == 404, describe(r)
    assert gate.token_request(client).status_code == 401


def test_credential_delete(gate: Credgate) -> None:
    client = _client_with_cred(gate)
    token = gate.token(client)
    assert gate.proxy("GET", "/echo/d", token).status_code == 200
    r = gate.admin("DELETE", f"/api/admin/credentials/{client.tenant}/echo")
    assert r.status_code in (200, 204), describe(r)
    r = gate.proxy("GET", "/echo/d", token)
    assert r.status_code == 403, describe(r)
    assert spec_error(r)["code"] == "INTEGRATION_NOT_CONNECTED"
