"""Malformed and hostile input: token endpoint, admin paths, bearer tokens, body size,
dead upstreams. Runs against a credgate of its own so failure counters (429 after repeated
bad client credentials) do not leak into other tests."""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.client as httpclient
import json
import time
from collections.abc import Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from echo_upstream import EchoUpstream
from support import (
    ECHO_INTEGRATIONS,
    Client,
    Credgate,
    access_claims,
    b64url,
    describe,
    free_port,
    http,
    jwt_kid,
    oauth_error,
    route,
    spec_error,
    unique,
)

MAX_BODY = 65536


@pytest.fixture(scope="module")
def bad_gate(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream) -> Iterator[Credgate]:
    routes = [
        route("echo", "/echo", echo.url),
        route("github", "/github", echo.url),
        route("dead", "/dead", f"http://127.0.0.1:{free_port()}"),
    ]
    g = Credgate(
        tmp_path_factory.mktemp("bad"),
        routes,
        {"proxy": {"max_body_bytes": MAX_BODY, "max_replay_body_bytes": MAX_BODY // 4}},
    )
    g.start()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def tenant_client(bad_gate: Credgate) -> Client:
    t = unique("bad")
    bad_gate.put_bearer(t, "echo", f"cred-{unique('e')}")
    return bad_gate.create_client(tenant=t, integrations=[*ECHO_INTEGRATIONS, "dead", "github"])


# ----- token endpoint --------------------------------------------------------------------


def _post_token(gate: Credgate, **kw) -> httpx.Response:  # noqa: ANN003
    with http() as c:
        return c.post(f"{gate.url}/oauth/token", **kw)


def test_missing_grant_type(bad_gate: Credgate, tenant_client: Client) -> None:
    r = _post_token(bad_gate, data={"client_id": tenant_client.client_id, "client_secret": tenant_client.client_secret})
    assert r.status_code == 400, describe(r)
    assert oauth_error(r)["error"] == "invalid_request"


@pytest.mark.parametrize("grant", ["password", "authorization_code", "refresh_token", "urn:x"])
def test_wrong_grant_type(bad_gate: Credgate, tenant_client: Client, grant: str) -> None:
    r = _post_token(
        bad_gate,
        data={"grant_type": grant},
        auth=(tenant_client.client_id, tenant_client.client_secret),
    )
    assert r.status_code == 400, describe(r)
    assert oauth_error(r)["error"] == "unsupported_grant_type"


def test_bad_secret_basic(bad_gate: Credgate, tenant_client: Client) -> None:
    c = Client(tenant_client.client_id, tenant_client.client_secret + "x", None, {})
    r = bad_gate.token_request(c, method="basic")
    assert r.status_code == 401, describe(r)
    assert oauth_error(r)["error"] == "invalid_client"
    www = r.headers.get("www-authenticate", "")
    assert www.startswith("Basic") and 'realm="credgate"' in www, www


def test_bad_secret_post(bad_gate: Credgate, tenant_client: Client) -> None:
    c = Client(tenant_client.client_id, "wrong-" + tenant_client.client_secret, None, {})
    r = bad_gate.token_request(c, method="post")
    assert r.status_code == 401, describe(r)
    assert oauth_error(r)["error"] == "invalid_client"


def test_unknown_client(bad_gate: Credgate) -> None:
    r = bad_gate.token_request(Client("no-such-client", "whatever", None, {}), method="basic")
    assert r.status_code == 401, describe(r)
    assert oauth_error(r)["error"] == "invalid_client"


def test_basic_and_body_credentials_at_once(bad_gate: Credgate, tenant_client: Client) -> None:
    r = _post_token(
        bad_gate,
        data={
            "grant_type": "client_credentials",
            "client_id": tenant_client.client_id,
            "client_secret": tenant_client.client_secret,
        },
        auth=(tenant_client.client_id, tenant_client.client_secret),
    )
    assert r.status_code == 400, describe(r)
    assert oauth_error(r)["error"] == "invalid_request"


@pytest.mark.parametrize(
    "content_type,body",
    [
        ("application/json", b'{"grant_type": "client_credentials",'),
        ("application/json", b"[1, 2, 3]"),
        ("application/x-www-form-urlencoded", b""),
        ("application/x-www-form-urlencoded", b"\xff\xfe%zz=&&=="),
    ],
)
def test_unparseable_body(bad_gate: Credgate, content_type: str, body: bytes) -> None:
    r = _post_token(bad_gate, content=body, headers={"Content-Type": content_type})
    assert r.status_code == 400, describe(r)
    assert oauth_error(r)["error"] in ("invalid_request", "unsupported_grant_type"), r.text


def test_malformed_basic_header(bad_gate: Credgate) -> None:
    r = _post_token(
        bad_gate, data={"grant_type": "client_credentials"}, headers={"Authorization": "Basic !!!not-base64!!!"}
    )
    assert r.status_code in (400, 401), describe(r)
    assert oauth_error(r)["error"] in ("invalid_request", "invalid_client")


def test_scope_not_allowed(bad_gate: Credgate, tenant_client: Client) -> None:
    r = bad_gate.token_request(tenant_client, scope="mcp admin")
    assert r.status_code == 400, describe(r)
    assert oauth_error(r)["error"] == "invalid_scope"


@pytest.mark.parametrize("resource", ["/nope", "/github/extra", "http://evil.example/github", "not a url"])
def test_resource_not_a_route(bad_gate: Credgate, tenant_client: Client, resource: str) -> None:
    if resource.startswith("/"):
        resource = bad_gate.url + resource
    r = bad_gate.token_request(tenant_client, resource=resource)
    assert r.status_code == 400, describe(r)
    assert oauth_error(r)["error"] == "invalid_target"


def test_repeated_failures_are_rate_limited(bad_gate: Credgate) -> None:
    client = bad_gate.create_client(tenant=unique("lock"), integrations=["echo"])
    wrong = Client(client.client_id, "definitely-wrong", None, {})
    statuses = []
    for _ in range(12):
        r = bad_gate.token_request(wrong)
        statuses.append(r.status_code)
        if r.status_code == 429:
            assert r.headers.get("retry-after", "").isdigit(), describe(r)
            oauth_error(r)
            break
    assert statuses[:10] == [401] * 10 and 429 in statuses, statuses


# ----- admin API -------------------------------------------------------------------------


def _raw(
    gate: Credgate, method: str, path: str, body: dict | None = None, token: str | None = None
) -> tuple[int, dict]:
    """Send `path` byte for byte (httpx would normalise `%2e%2e` and friends)."""
    conn = httpclient.HTTPConnection("127.0.0.1", gate.proxy_port, timeout=10)
    try:
        headers = {"Authorization": f"Bearer {token or gate.admin_token}"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            return resp.status, json.loads(raw)
        except ValueError:
            return resp.status, {"raw": raw.decode(errors="replace")}
    finally:
        conn.close()


BAD_IDS = ["BAD", "a.b", "%2e%2e", "%2E%2E", "%2F", "a%2Fb", "%00", "a%00b", "a" * 64, "_credgate", "-a", "a%20b"]
CRED = {"access_token": "bad-id-test-token", "token_type": "Bearer", "expires_in": 3600}


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.parametrize("where", ["tenant", "integration"])
def test_bad_identifier_in_admin_path(bad_gate: Credgate, bad: str, where: str) -> None:
    path = f"/api/admin/credentials/{bad}/echo" if where == "tenant" else f"/api/admin/credentials/acme/{bad}"
    for method in ("PUT", "GET", "DELETE"):
        status, body = _raw(bad_gate, method, path, CRED if method == "PUT" else None)
        assert status == 400, f"{method} {path} -> {status} {body}"
        assert body.get("error", {}).get("code") == "BAD_REQUEST", body
        assert body.get("request_id"), body


def test_longest_valid_identifier_accepted(bad_gate: Credgate) -> None:
    status, body = _raw(bad_gate, "PUT", f"/api/admin/credentials/{'a' * 63}/echo", CRED)
    assert status in (200, 201, 204), body


@pytest.mark.parametrize("field,value", [("tenant", "BAD"), ("tenant", "a/b"), ("allowedIntegrations", ["x.y"])])
def test_bad_identifier_in_admin_body(bad_gate: Credgate, field: str, value: object) -> None:
    body = {"name": "x", "tenant": "ok-tenant", "scopes": ["mcp"], "allowedIntegrations": ["echo"], field: value}
    r = bad_gate.admin("POST", "/api/admin/oauth/clients", json=body)
    assert r.status_code == 400, describe(r)
    assert spec_error(r)["code"] == "BAD_REQUEST"


@pytest.mark.parametrize("token", [None, "wrong-admin-token", "Basic"])
def test_admin_api_requires_admin_token(bad_gate: Credgate, token: str | None) -> None:
    if token == "Basic":
        with http() as c:
            r = c.get(f"{bad_gate.url}/api/admin/oauth/clients", auth=("admin", bad_gate.admin_token))
    else:
        r = bad_gate.admin("GET", "/api/admin/oauth/clients", token=token)
    assert r.status_code == 401, describe(r)
    assert spec_error(r)["code"] == "UNAUTHORIZED"


def test_admin_api_refuses_client_token_without_admin_scope(bad_gate: Credgate, tenant_client: Client) -> None:
    token = bad_gate.token(tenant_client)
    r = bad_gate.admin("GET", "/api/admin/oauth/clients", token=token)
    assert r.status_code == 403, describe(r)
    assert spec_error(r)["code"] == "FORBIDDEN"


# ----- bearer tokens on the proxy --------------------------------------------------------


def _assert_invalid_token(gate: Credgate, r) -> None:  # noqa: ANN001
    assert r.status_code == 401, describe(r)
    assert spec_error(r)["code"] == "UNAUTHORIZED"
    www = r.headers.get("www-authenticate", "")
    assert www.startswith("Bearer "), www
    assert 'realm="credgate"' in www, www
    assert 'resource_metadata="' in www, www
    assert 'error="invalid_token"' in www, www


def test_garbage_tokens(bad_gate: Credgate) -> None:
    for tok in ["garbage", "a.b.c", "eyJhbGciOiJFZERTQSJ9.e30.", "x" * 5000]:
        _assert_invalid_token(bad_gate, bad_gate.proxy("GET", "/echo/x", tok))


def test_token_signed_by_another_key(bad_gate: Credgate, tenant_client: Client) -> None:
    real = bad_gate.token(tenant_client)
    other = Ed25519PrivateKey.generate()
    forged = jwt.encode(
        access_claims(bad_gate, tenant_client), other, algorithm="EdDSA", headers={"kid": jwt_kid(real), "typ": "at+jwt"}
    )
    _assert_invalid_token(bad_gate, bad_gate.proxy("GET", "/echo/x", forged))
    # the genuine one works, so the forged one failed on its signature
    assert bad_gate.proxy("GET", "/echo/x", real).status_code == 200


def test_expired_forged_token(bad_gate: Credgate, tenant_client: Client) -> None:
    real = bad_gate.token(tenant_client)
    old = int(time.time()) - 7200
    forged = jwt.encode(
        access_claims(bad_gate, tenant_client, iat=old, nbf=old, exp=old + 60),
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": jwt_kid(real), "typ": "at+jwt"},
    )
    _assert_invalid_token(bad_gate, bad_gate.proxy("GET", "/echo/x", forged))


def test_alg_none_and_hs256_confusion(bad_gate: Credgate, tenant_client: Client) -> None:
    real = bad_gate.token(tenant_client)
    claims = access_claims(bad_gate, tenant_client)
    kid = jwt_kid(real)
    none_tok = jwt.encode(claims, None, algorithm="none", headers={"kid": kid, "typ": "at+jwt"})
    _assert_invalid_token(bad_gate, bad_gate.proxy("GET", "/echo/x", none_tok))
    with http() as c:
        jwks = c.get(f"{bad_gate.url}/.well-known/jwks.json").json()
    key = next(k for k in jwks["keys"] if k.get("kid") == kid)
    # classic algorithm confusion: HMAC keyed with the public key material
    signing_input = (
        b64url(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": kid}).encode())
        + "."
        + b64url(json.dumps(claims).encode())
    )
    for secret in (
        key.get("x", "").encode(),
        base64.urlsafe_b64decode(key.get("x", "") + "=="),
        json.dumps(key).encode(),
    ):
        sig = b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
        _assert_invalid_token(bad_gate, bad_gate.proxy("GET", "/echo/x", f"{signing_input}.{sig}"))


def test_tampered_claims(bad_gate: Credgate, tenant_client: Client) -> None:
    real = bad_gate.token(tenant_client)
    h, p, s = real.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    claims["tenant"] = "someone-else"
    p2 = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    _assert_invalid_token(bad_gate, bad_gate.proxy("GET", "/echo/x", f"{h}.{p2}.{s}"))


def test_token_for_other_route_refused(bad_gate: Credgate, tenant_client: Client) -> None:
    tok = bad_gate.token(tenant_client, resource=f"{bad_gate.url}/github")
    _assert_invalid_token(bad_gate, bad_gate.proxy("GET", "/echo/x", tok))


def test_no_token(bad_gate: Credgate) -> None:
    r = bad_gate.proxy("GET", "/echo/x")
    assert r.status_code == 401, describe(r)
    www = r.headers.get("www-authenticate", "")
    assert www.startswith("Bearer ") and 'realm="credgate"' in www and 'resource_metadata="' in www, www
    assert "error=" not in www, www


def test_token_in_query_string_refused(bad_gate: Credgate, tenant_client: Client) -> None:
    tok = bad_gate.token(tenant_client)
    r = bad_gate.proxy("GET", f"/echo/x?access_token={tok}")
    assert r.status_code == 401, describe(r)
    r = bad_gate.proxy("POST", "/echo/x", data={"access_token": tok})
    assert r.status_code == 401, describe(r)


def test_non_bearer_scheme_refused(bad_gate: Credgate, tenant_client: Client) -> None:
    r = bad_gate.proxy("GET", "/echo/x", headers={"Authorization": f"Basic {base64.b64encode(b'a:b').decode()}"})
    assert r.status_code == 401, describe(r)


# ----- body size and upstream failures ---------------------------------------------------


def test_body_over_limit_is_413(bad_gate: Credgate, tenant_client: Client) -> None:
    tok = bad_gate.token(tenant_client)
    r = bad_gate.proxy("POST", "/echo/big", tok, content=b"x" * (MAX_BODY + 1))
    assert r.status_code == 413, describe(r)
    assert spec_error(r)["code"] == "PAYLOAD_TOO_LARGE"
    r = bad_gate.proxy("POST", "/echo/big", tok, content=b"x" * MAX_BODY)
    assert r.status_code == 200, describe(r)


def test_dead_upstream_is_502(bad_gate: Credgate, tenant_client: Client) -> None:
    bad_gate.put_bearer(tenant_client.tenant, "dead", f"cred-{unique('d')}")
    tok = bad_gate.token(tenant_client)
    r = bad_gate.proxy("GET", "/dead/x", tok)
    assert r.status_code == 502, describe(r)
    assert spec_error(r)["code"] == "UPSTREAM_UNAVAILABLE"


def test_early_401_does_not_strand_keep_alive_clients(bad_gate: Credgate) -> None:
    """credgate may answer 401 before the request body arrived; then it must either still
    read the body and keep the connection usable, or say `Connection: close`. Closing silently
    makes keep-alive clients (the mcp SDK's httpx2) fail their next request on that connection."""
    import socket

    s = socket.create_connection(("127.0.0.1", bad_gate.proxy_port), timeout=5)
    try:
        s.sendall(
            b"POST /echo/mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(65536)
            assert chunk, "connection closed without a response"
            head += chunk
        status_line, *header_lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
        assert " 401 " in status_line + " ", status_line
        headers = {k.strip().lower(): v.strip().lower() for k, v in (h.split(":", 1) for h in header_lines)}
        if headers.get("connection") == "close":
            return  # announced: a client opens a new connection
        s.sendall(b"x" * 200)
        s.sendall(b"GET /.well-known/oauth-authorization-server HTTP/1.1\r\nHost: x\r\n\r\n")
        rest = head.split(b"\r\n\r\n", 1)[1]
        data = b""
        while b"HTTP/1.1 200" not in data:
            chunk = s.recv(65536)
            assert chunk, (
                "credgate closed a keep-alive connection after an early 401 without `Connection: close`; "
                f"the next request on it got no response (already read: {rest[:80]!r})"
            )
            data += chunk
    except (BrokenPipeError, ConnectionResetError) as e:
        raise AssertionError(
            f"credgate closed a keep-alive connection after an early 401 without `Connection: close`: {e!r}"
        ) from e
    finally:
        s.close()
