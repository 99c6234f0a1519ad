"""Real OAuth client libraries against credgate's authorization server (issue #3).

- Authlib's OAuth2Client with `client_secret_basic`, `client_secret_post` and RFC 7523
  `private_key_jwt` (for a client registered with a public JWK), then a proxied call
  carrying the token Authlib placed itself;
- the `mcp` package's `PrivateKeyJWTOAuthProvider` doing the whole discovery flow through
  credgate to the real MCP server's `whoami` tool, both transport revisions;
- the TypeScript SDK (`@modelcontextprotocol/sdk`, tests/node) with `ClientCredentialsProvider`
  (and `PrivateKeyJwtProvider`) over StreamableHTTPClientTransport, run as a subprocess;
- PyJWT's `PyJWKClient` verifying a private_key_jwt-obtained token against the `jwks_uri`
  credgate advertises.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import anyio
import jwt
import pytest
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT as _AuthlibPrivateKeyJWT
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey
from support import Client, Credgate, MemoryTokenStorage, describe, http, run_node_client, unique, upstream_auth


# ----- helpers ---------------------------------------------------------------------------


class PrivateKeyJWT(_AuthlibPrivateKeyJWT):
    """Authlib's `private_key_jwt`, with assertions that live 5 minutes: credgate refuses
    longer ones (Authlib's default is an hour; the MCP SDKs use 300 s)."""

    def sign(self, auth, token_endpoint):  # noqa: ANN001, ANN201
        return private_key_jwt_sign(
            auth.client_secret,
            client_id=auth.client_id,
            token_endpoint=token_endpoint,
            claims=None if self.claims is None else dict(self.claims),
            header=self.headers,
            alg=self.alg,
            expires_in=300,
        )


def _key_pair(kind: str) -> tuple[Any, dict[str, Any], str, str]:
    """A fresh private key: (cryptography key, public JWK, PKCS#8 PEM, JWS alg)."""
    kid = unique("k")
    if kind == "ed25519":
        priv = ed25519.Ed25519PrivateKey.generate()
        jwk, alg = OKPKey.import_key(priv.public_key()).as_dict(), "EdDSA"
    elif kind == "p256":
        priv = ec.generate_private_key(ec.SECP256R1())
        jwk, alg = ECKey.import_key(priv.public_key()).as_dict(), "ES256"
    elif kind == "rsa":
        priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk, alg = RSAKey.import_key(priv.public_key()).as_dict(), "RS256"
    else:  # pragma: no cover
        raise ValueError(kind)
    assert "d" not in jwk, jwk
    jwk = {**jwk, "kid": kid, "use": "sig", "alg": alg}
    pem = priv.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return priv, jwk, pem, alg


def _jwk_client(gate: Credgate, tenant: str, jwk: dict[str, Any], integrations: list[str]) -> Client:
    return gate.create_client(tenant=tenant, integrations=integrations, jwks={"keys": [jwk]})


def _oauth2_client(client_id: str, secret: Any, method: str, **kw: Any) -> OAuth2Client:
    return OAuth2Client(
        client_id, secret, token_endpoint_auth_method=method, timeout=10.0, trust_env=False, **kw
    )


def _echo_auth_header(resp: Any) -> str | None:
    """The Authorization header the echo upstream received."""
    return next(iter(upstream_auth(resp)), None)


# ----- 1. Authlib --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_authlib_client_secret(gate: Credgate, method: str) -> None:
    tenant = unique("authlib")
    upstream = f"up-{unique('cred')}"
    gate.put_bearer(tenant, "echo", upstream)
    client = gate.create_client(tenant=tenant, integrations=["echo"])
    token_url = f"{gate.url}/oauth/token"

    with _oauth2_client(client.client_id, client.client_secret, method) as oc:
        sent: list[Any] = []
        oc.event_hooks["request"] = [sent.append]
        tok = oc.fetch_token(token_url, grant_type="client_credentials", resource=f"{gate.url}/echo")
        assert tok["token_type"] == "Bearer", tok
        assert tok["scope"] == "mcp", tok
        assert isinstance(tok["expires_in"], int) and tok["expires_in"] > 0, tok
        assert tok.get("expires_at"), "Authlib could not compute the expiry"

        # Authlib used the method asked for, and only that one.
        req = sent[0]
        body = req.content.decode()
        if method == "client_secret_basic":
            assert req.headers.get("authorization", "").startswith("Basic "), req.headers
            assert "client_secret" not in body, body
        else:
            assert "authorization" not in req.headers, req.headers
            assert f"client_id={client.client_id}" in body and "client_secret=" in body, body

        # Authlib places the bearer itself on the proxied request.
        r = oc.get(f"{gate.url}/echo/authlib")
        assert r.status_code == 200, describe(r)
        assert _echo_auth_header(r) == f"Bearer {upstream}"
        assert tok["access_token"] not in r.text, "credgate's token reached the upstream"

        # the token was bound to the /echo route (RFC 8707): another route refuses it
        r = oc.get(f"{gate.url}/github/mcp")
        assert r.status_code == 401, describe(r)


def test_authlib_wrong_secret_is_invalid_client(gate: Credgate) -> None:
    client = gate.create_client(tenant=unique("authlib"), integrations=["echo"])
    with _oauth2_client(client.client_id, client.client_secret[:-2] + "xx", "client_secret_basic") as oc:
        with pytest.raises(OAuthError) as ei:
            oc.fetch_token(f"{gate.url}/oauth/token", grant_type="client_credentials")
    assert ei.value.error == "invalid_client", ei.value


@pytest.mark.filterwarnings("ignore:EdDSA is deprecated")  # joserfc, RFC 9864; still what credgate signs with
@pytest.mark.parametrize("kind", ["ed25519", "p256", "rsa"])
def test_authlib_private_key_jwt(gate: Credgate, kind: str) -> None:
    tenant = unique("pkjwt")
    upstream = f"up-{unique('cred')}"
    gate.put_bearer(tenant, "echo", upstream)
    priv, jwk, _pem, alg = _key_pair(kind)
    client = _jwk_client(gate, tenant, jwk, ["echo"])
    token_url = f"{gate.url}/oauth/token"

    key = {"ed25519": OKPKey, "p256": ECKey, "rsa": RSAKey}[kind].import_key(priv)
    with _oauth2_client(client.client_id, key, "private_key_jwt") as oc:
        oc.register_client_auth_method(PrivateKeyJWT(token_url, alg=alg, headers={"kid": jwk["kid"]}))
        sent: list[Any] = []
        oc.event_hooks["request"] = [sent.append]
        tok = oc.fetch_token(token_url, grant_type="client_credentials")
        body = sent[0].content.decode()
        assert "client_assertion_type=urn" in body and "client_secret" not in body, body
        assert "authorization" not in sent[0].headers
        assert tok["token_type"] == "Bearer" and tok["scope"] == "mcp", tok

        r = oc.get(f"{gate.url}/echo/pkjwt")
        assert r.status_code == 200, describe(r)
        assert _echo_auth_header(r) == f"Bearer {upstream}"

    # the same assertion signed by another key of the same type is refused
    other_priv = _key_pair(kind)[0]
    other = {"ed25519": OKPKey, "p256": ECKey, "rsa": RSAKey}[kind].import_key(other_priv)
    with _oauth2_client(client.client_id, other, "private_key_jwt") as oc:
        oc.register_client_auth_method(PrivateKeyJWT(token_url, alg=alg, headers={"kid": jwk["kid"]}))
        with pytest.raises(OAuthError) as ei:
            oc.fetch_token(token_url, grant_type="client_credentials")
        assert ei.value.error == "invalid_client", ei.value


@pytest.mark.parametrize("method", ["client_secret_basic", "private_key_jwt"])
def test_authlib_introspect_and_revoke(gate: Credgate, method: str) -> None:
    """RFC 7662 and RFC 7009 through Authlib's own helpers, authenticated like the token request."""
    tenant = unique("revoke")
    gate.put_bearer(tenant, "echo", f"up-{unique('cred')}")
    token_url = f"{gate.url}/oauth/token"
    if method == "client_secret_basic":
        client = gate.create_client(tenant=tenant, integrations=["echo"], scopes=["mcp", "introspect"])
        secret: Any = client.client_secret
    else:
        priv, jwk, _pem, alg = _key_pair("p256")
        client = _jwk_client(gate, tenant, jwk, ["echo"])
        secret = ECKey.import_key(priv)
    with _oauth2_client(client.client_id, secret, method, revocation_endpoint_auth_method=method) as oc:
        if method == "private_key_jwt":
            # aud = the token endpoint for every assertion, as RFC 7523 §3 suggests
            oc.register_client_auth_method(PrivateKeyJWT(token_url, alg=alg))
        tok = oc.fetch_token(token_url, grant_type="client_credentials")
        assert oc.get(f"{gate.url}/echo/before").status_code == 200
        if method == "client_secret_basic":
            r = oc.introspect_token(f"{gate.url}/oauth/introspect", token=tok["access_token"])
            assert r.status_code == 200, describe(r)
            info = r.json()
            assert info["active"] is True and info["client_id"] == client.client_id, info
            assert info["tenant"] == tenant and info["token_type"].lower() in ("bearer", "access_token"), info
        r = oc.revoke_token(f"{gate.url}/oauth/revoke", token=tok["access_token"], token_type_hint="access_token")
        assert r.status_code == 200, describe(r)
        r = oc.get(f"{gate.url}/echo/after")
        assert r.status_code == 401, describe(r)
        assert 'error="invalid_token"' in r.headers.get("www-authenticate", ""), r.headers
        if method == "client_secret_basic":
            r = oc.introspect_token(f"{gate.url}/oauth/introspect", token=tok["access_token"])
            assert r.status_code == 200 and r.json() == {"active": False}, describe(r)


# ----- 4. PyJWT against the advertised jwks_uri -------------------------------------------


def test_private_key_jwt_token_verifies_against_jwks_uri(gate: Credgate) -> None:
    tenant = unique("pyjwt")
    priv, jwk, _pem, alg = _key_pair("p256")
    client = _jwk_client(gate, tenant, jwk, ["github"])
    token_url = f"{gate.url}/oauth/token"
    resource = f"{gate.url}/github"
    with _oauth2_client(client.client_id, ECKey.import_key(priv), "private_key_jwt") as oc:
        oc.register_client_auth_method(PrivateKeyJWT(token_url, alg=alg))
        before = int(time.time())
        tok = oc.fetch_token(token_url, grant_type="client_credentials", resource=resource)
    access = tok["access_token"]

    with http() as c:
        md = c.get(f"{gate.url}/.well-known/oauth-authorization-server").json()
    assert md["jwks_uri"].startswith(gate.url), md
    signing_key = jwt.PyJWKClient(md["jwks_uri"], cache_keys=False, timeout=10).get_signing_key_from_jwt(access)
    header = jwt.get_unverified_header(access)
    claims = jwt.decode(
        access,
        signing_key,
        algorithms=[header["alg"]],
        audience=resource,
        issuer=md["issuer"],
        options={"require": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"]},
    )
    assert header["typ"].lower() == "at+jwt", header
    assert claims["sub"] == client.client_id
    assert claims["tenant"] == tenant
    assert claims["scope"] == "mcp"
    assert before - 5 <= claims["iat"] <= time.time() + 5
    # the signature really is checked: a flipped byte fails
    tampered = access[:-4] + ("AAAA" if not access.endswith("AAAA") else "BBBB")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(tampered, signing_key, algorithms=[header["alg"]], audience=resource)


# ----- 2. mcp PrivateKeyJWTOAuthProvider ----------------------------------------------------


async def _mcp_private_key_jwt_session(
    server_url: str, client_id: str, pem: str, alg: str, *, issuer: str, mode: str, timeout: float = 45.0
) -> dict[str, Any]:
    import httpx2
    from mcp import Client as McpClient
    from mcp.client.auth.extensions.client_credentials import PrivateKeyJWTOAuthProvider, SignedJWTParameters
    from mcp.client.streamable_http import streamable_http_client

    audiences: list[str] = []
    sign = SignedJWTParameters(issuer=client_id, subject=client_id, signing_key=pem, signing_algorithm=alg)
    inner = sign.create_assertion_provider()

    async def assertion_provider(audience: str) -> str:
        audiences.append(audience)
        return await inner(audience)

    provider = PrivateKeyJWTOAuthProvider(
        server_url=server_url,
        storage=MemoryTokenStorage(),
        client_id=client_id,
        assertion_provider=assertion_provider,
        issuer=issuer,
    )
    http_log: list[tuple[str, str, int]] = []
    token_bodies: list[str] = []
    bearers: list[str] = []

    async def on_request(req: httpx2.Request) -> None:
        if req.url.path == "/oauth/token":
            token_bodies.append(req.content.decode())

    async def on_response(resp: httpx2.Response) -> None:
        http_log.append((resp.request.method, str(resp.request.url), resp.status_code))
        auth = resp.request.headers.get("authorization", "")
        if auth.startswith("Bearer ") and auth[7:] not in bearers:
            bearers.append(auth[7:])

    with anyio.fail_after(timeout):
        async with httpx2.AsyncClient(
            auth=provider,
            timeout=httpx2.Timeout(10.0, read=30.0),
            trust_env=False,
            event_hooks={"request": [on_request], "response": [on_response]},
        ) as hc:
            async with McpClient(
                streamable_http_client(server_url, http_client=hc),
                mode=mode,  # type: ignore[arg-type]
                read_timeout_seconds=30,
                raise_exceptions=True,
            ) as mc:
                r = await mc.call_tool("whoami", {})
                assert not r.is_error, f"whoami failed: {r}"
                whoami = r.structured_content
    return {
        "whoami": whoami,
        "http_log": http_log,
        "token_bodies": token_bodies,
        "bearers": bearers,
        "audiences": audiences,
    }


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_mcp_private_key_jwt_provider_reaches_tool(
    gate: Credgate, take_mcp_token: Callable[[], str], mode: str
) -> None:
    tenant = unique("mcpjwt")
    upstream_cred = take_mcp_token()
    gate.put_bearer(tenant, "github", upstream_cred)
    _priv, jwk, pem, alg = _key_pair("p256")
    client = _jwk_client(gate, tenant, jwk, ["github"])

    res = anyio.run(
        lambda: _mcp_private_key_jwt_session(
            f"{gate.url}/github/mcp", client.client_id, pem, alg, issuer=gate.url, mode=mode
        )
    )

    whoami = res["whoami"]
    assert whoami is not None
    assert whoami["authorization"] == f"Bearer {upstream_cred}", whoami
    assert res["bearers"], f"the client never sent a bearer token: {res['http_log']}"
    for tok in res["bearers"]:
        assert tok not in json.dumps(whoami), "credgate's own token reached the MCP server"
        claims = jwt.decode(tok, options={"verify_signature": False})
        assert claims["sub"] == client.client_id and claims["tenant"] == tenant, claims
        aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        assert f"{gate.url}/github" in aud, claims
    if mode == "legacy":
        assert whoami["mcp_protocol_version"] == "2025-11-25"
        assert whoami["mcp_session_id"]
    else:
        assert whoami["mcp_protocol_version"] == "2026-07-28"
    # discovery, then a token request authenticated by a signed assertion only
    urls = [u for _, u, _ in res["http_log"]]
    assert any("/.well-known/oauth-protected-resource" in u for u in urls), res["http_log"]
    assert any(u.endswith("/.well-known/oauth-authorization-server") for u in urls), res["http_log"]
    assert any(
        m == "POST" and u == f"{gate.url}/oauth/token" and s == 200 for m, u, s in res["http_log"]
    ), res["http_log"]
    assert res["audiences"] and all(a.rstrip("/") == gate.url for a in res["audiences"]), res["audiences"]
    assert res["token_bodies"], res["http_log"]
    for body in res["token_bodies"]:
        assert "client_assertion=" in body and "client_secret" not in body, body


# ----- 3. TypeScript SDK --------------------------------------------------------------------


def _check_node_result(gate: Credgate, res: dict[str, Any], client: Client, tenant: str, upstream: str) -> None:
    whoami = res["whoami"]
    assert whoami["authorization"] == f"Bearer {upstream}", whoami
    assert whoami["mcp_protocol_version"] == res["protocolVersion"], res
    assert whoami["mcp_session_id"] == res["sessionId"], res
    assert res["bearers"], res["http"]
    for tok in res["bearers"]:
        assert tok not in json.dumps(whoami), "credgate's own token reached the MCP server"
        claims = jwt.decode(tok, options={"verify_signature": False})
        assert claims["sub"] == client.client_id and claims["tenant"] == tenant, claims
        aud = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        assert f"{gate.url}/github" in aud, f"the SDK's RFC 8707 resource did not set aud: {claims}"
    http_log = [tuple(x) for x in res["http"]]
    assert ("POST", f"{gate.url}/github/mcp", 401) in http_log, http_log
    assert any("/.well-known/oauth-protected-resource" in u and s == 200 for _, u, s in http_log), http_log
    assert any(u.endswith("/.well-known/oauth-authorization-server") and s == 200 for _, u, s in http_log), http_log
    assert ("POST", f"{gate.url}/oauth/token", 200) in http_log, http_log
    # the session ended through credgate (the SDK's terminateSession)
    assert ("DELETE", f"{gate.url}/github/mcp", 200) in http_log, http_log


def test_node_sdk_client_credentials_provider(gate: Credgate, take_mcp_token: Callable[[], str]) -> None:
    tenant = unique("node")
    upstream = take_mcp_token()
    gate.put_bearer(tenant, "github", upstream)
    client = gate.create_client(tenant=tenant)
    res = run_node_client(
        "mcp_client.mjs",
        {
            "MCP_URL": f"{gate.url}/github/mcp",
            "ISSUER": gate.url,
            "CLIENT_ID": client.client_id,
            "CLIENT_SECRET": client.client_secret,
            "AUTH": "client_credentials",
        }
    )
    _check_node_result(gate, res, client, tenant, upstream)


def test_node_sdk_private_key_jwt_provider(gate: Credgate, take_mcp_token: Callable[[], str]) -> None:
    tenant = unique("nodejwt")
    upstream = take_mcp_token()
    gate.put_bearer(tenant, "github", upstream)
    _priv, jwk, pem, alg = _key_pair("p256")
    client = _jwk_client(gate, tenant, jwk, ["github"])
    res = run_node_client(
        "mcp_client.mjs",
        {
            "MCP_URL": f"{gate.url}/github/mcp",
            "ISSUER": gate.url,
            "CLIENT_ID": client.client_id,
            "PRIVATE_KEY": pem,
            "ALG": alg,
            "AUTH": "private_key_jwt",
        }
    )
    _check_node_result(gate, res, client, tenant, upstream)
