"""credgate as an authorization server: token responses, JWT shape checked with PyJWT
against the published JWKS, RFC 8414 and RFC 9728 metadata."""

from __future__ import annotations

import time

import jwt
import pytest
from support import Credgate, describe, http, oauth_error, unique


def _jwks_key(gate: Credgate, token: str) -> jwt.PyJWK:
    with http() as c:
        r = c.get(f"{gate.url}/.well-known/jwks.json")
    assert r.status_code == 200, describe(r)
    keys = r.json()["keys"]
    kid = jwt.get_unverified_header(token).get("kid")
    match = [k for k in keys if k.get("kid") == kid]
    assert match, f"kid {kid!r} not in JWKS {[k.get('kid') for k in keys]}"
    for k in keys:
        assert "d" not in k, "private key material in the JWKS"
    return jwt.PyJWK(match[0])


@pytest.mark.parametrize("method", ["basic", "post"])
def test_token_response_and_jwt(gate: Credgate, method: str) -> None:
    tenant = unique("tok")
    client = gate.create_client(tenant=tenant)
    before = int(time.time())
    r = gate.token_request(client, method=method)
    assert r.status_code == 200, describe(r)
    assert "no-store" in r.headers.get("cache-control", ""), r.headers
    body = r.json()
    assert body["token_type"] == "Bearer"
    assert isinstance(body["expires_in"], int) and 3500 <= body["expires_in"] <= 3600, body
    assert body["scope"] == "mcp"
    token = body["access_token"]

    header = jwt.get_unverified_header(token)
    assert header["alg"] == "EdDSA"
    assert header["typ"].lower() == "at+jwt", header
    assert header.get("kid")
    claims = jwt.decode(
        token,
        _jwks_key(gate, token),
        algorithms=["EdDSA"],
        audience=gate.url,
        issuer=gate.url,
        options={"require": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"]},
    )
    assert claims["sub"] == client.client_id
    assert claims["tenant"] == tenant
    assert claims["scope"] == "mcp"
    assert before - 5 <= claims["iat"] <= time.time() + 5
    assert claims["exp"] - claims["iat"] == 3600
    assert claims["nbf"] <= claims["iat"] + 1


def test_resource_sets_audience(gate: Credgate) -> None:
    client = gate.create_client(tenant=unique("aud"))
    r = gate.token_request(client, resource=f"{gate.url}/github")
    assert r.status_code == 200, describe(r)
    token = r.json()["access_token"]
    claims = jwt.decode(token, _jwks_key(gate, token), algorithms=["EdDSA"], audience=f"{gate.url}/github")
    aud = claims["aud"]
    assert aud == f"{gate.url}/github" or aud == [f"{gate.url}/github"], aud


def test_json_body_token_request(gate: Credgate) -> None:
    client = gate.create_client(tenant=unique("json"))
    with http() as c:
        r = c.post(
            f"{gate.url}/oauth/token",
            json={
                "grant_type": "client_credentials",
                "client_id": client.client_id,
                "client_secret": client.client_secret,
            },
        )
    assert r.status_code == 200, describe(r)
    assert r.json()["token_type"] == "Bearer"


def test_two_tokens_differ(gate: Credgate) -> None:
    client = gate.create_client(tenant=unique("jti"))
    t1, t2 = gate.token(client), gate.token(client)
    assert t1 != t2
    assert (
        jwt.decode(t1, options={"verify_signature": False})["jti"]
        != jwt.decode(t2, options={"verify_signature": False})["jti"]
    )


def test_authorization_server_metadata(gate: Credgate) -> None:
    with http() as c:
        r = c.get(f"{gate.url}/.well-known/oauth-authorization-server")
    assert r.status_code == 200, describe(r)
    md = r.json()
    assert md["issuer"] == gate.url
    assert md["token_endpoint"] == f"{gate.url}/oauth/token"
    assert md["authorization_endpoint"] == f"{gate.url}/oauth/authorize"
    assert md["jwks_uri"] == f"{gate.url}/.well-known/jwks.json"
    assert md["grant_types_supported"] == ["client_credentials"]
    assert md["response_types_supported"] == []
    methods = set(md["token_endpoint_auth_methods_supported"])
    assert {"client_secret_basic", "client_secret_post", "private_key_jwt"} <= methods, methods
    algs = [v for k, v in md.items() if k.endswith("signing_alg_values_supported")]
    assert any("EdDSA" in v for v in algs), f"no *_signing_alg_values_supported naming EdDSA: {md}"
    # the mcp SDK parses it with its own model: it must accept it
    from mcp.shared.auth import OAuthMetadata

    OAuthMetadata.model_validate(md)


def test_authorize_endpoint_refuses(gate: Credgate) -> None:
    with http() as c:
        r = c.get(f"{gate.url}/oauth/authorize", params={"response_type": "code", "client_id": "x"})
    assert r.status_code == 400, describe(r)
    assert oauth_error(r)["error"] == "unsupported_response_type"


def test_protected_resource_metadata(gate: Credgate) -> None:
    with http() as c:
        r = c.get(f"{gate.url}/.well-known/oauth-protected-resource/github")
        root = c.get(f"{gate.url}/.well-known/oauth-protected-resource")
    assert r.status_code == 200, describe(r)
    md = r.json()
    assert md["resource"] == f"{gate.url}/github"
    assert md["authorization_servers"] == [gate.url]
    from mcp.shared.auth import ProtectedResourceMetadata

    ProtectedResourceMetadata.model_validate(md)
    assert root.status_code == 200, describe(root)
    assert root.json()["authorization_servers"] == [gate.url]
