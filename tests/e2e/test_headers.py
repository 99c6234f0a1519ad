"""Header hygiene, seen from an upstream that reports everything it received."""

from __future__ import annotations

import base64
import re

import httpx
from echo_upstream import UPSTREAM_SESSION_ID
from support import ECHO_INTEGRATIONS, Credgate, describe, spec_error, unique


def _setup(gate: Credgate, integration: str, cred: dict) -> tuple[str, str]:
    t = unique("hdr")
    gate.put_credential(t, integration, cred)
    return t, gate.token(gate.create_client(tenant=t, integrations=ECHO_INTEGRATIONS))


def _headers(resp: httpx.Response) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in resp.json()["headers"]:
        out.setdefault(k.lower(), []).append(v)
    return out


def test_bearer_injection_and_hygiene(gate: Credgate) -> None:
    cred = f"gh-upstream-{unique('c')}"
    tenant, token = _setup(gate, "echo", {"access_token": cred, "token_type": "Bearer", "expires_in": 3600})
    sent = {
        "Authorization": f"Bearer {token}",
        "X-Tenant-Id": tenant,
        "Connection": "keep-alive, X-Drop-Me",
        "X-Drop-Me": "secret-hop",
        "Keep-Alive": "timeout=5",
        "TE": "gzip",
        "Upgrade": "example/1",
        "Proxy-Authorization": "Basic cHJveHk6cGFzcw==",
        "Mcp-Session-Id": "sess-123",
        "MCP-Protocol-Version": "2025-11-25",
        "Mcp-Method": "tools/call",
        "Mcp-Name": "whoami",
        "Mcp-Param-Region": "eu",
        "Last-Event-ID": "41",
        "X-Custom": "kept",
    }
    with httpx.Client(timeout=10, trust_env=False) as c:
        r = c.post(f"{gate.url}/echo/deep/path?x=1&y=two%20words", headers=sent, content=b'{"hello":"world"}')
    assert r.status_code == 200, describe(r)
    body = r.json()
    h = _headers(r)

    assert body["path"] == "/deep/path", "prefix not stripped"
    assert body["query"] == "x=1&y=two%20words"
    assert body["method"] == "POST"
    assert body["body"] == '{"hello":"world"}'
    assert h.get("authorization") == [f"Bearer {cred}"], h.get("authorization")
    assert token not in r.text, "the caller's token reached the upstream"
    for gone in ("x-tenant-id", "x-drop-me", "keep-alive", "te", "upgrade", "proxy-authorization"):
        assert gone not in h, f"{gone} reached the upstream: {h.get(gone)}"
    for v in h.get("connection", []):
        assert "x-drop-me" not in v.lower()
    assert h.get("mcp-session-id") == ["sess-123"]
    assert h.get("mcp-protocol-version") == ["2025-11-25"]
    assert h.get("mcp-method") == ["tools/call"]
    assert h.get("mcp-name") == ["whoami"]
    assert h.get("mcp-param-region") == ["eu"]
    assert h.get("last-event-id") == ["41"]
    assert h.get("x-custom") == ["kept"]
    assert h.get("x-forwarded-for") == ["127.0.0.1"], h.get("x-forwarded-for")
    assert h.get("x-forwarded-proto") == ["http"], h.get("x-forwarded-proto")
    assert h.get("x-forwarded-host") == [f"127.0.0.1:{gate.proxy_port}"], h.get("x-forwarded-host")
    rid = h.get("x-request-id")
    assert rid and len(rid) == 1 and rid[0].strip(), f"X-Request-Id not added: {rid}"

    # what the upstream answered comes back, minus its hop-by-hop headers and credential
    assert r.headers.get("mcp-session-id") == UPSTREAM_SESSION_ID
    assert r.headers.get("mcp-protocol-version") == "2025-11-25"
    assert "x-upstream-private" not in r.headers, "a header named in the upstream's Connection reached the caller"
    assert r.headers.get("keep-alive") != "timeout=77", "the upstream's Keep-Alive reached the caller"
    assert cred not in str(r.headers), "the upstream credential leaked into response headers"


def test_request_id_kept_when_sent(gate: Credgate) -> None:
    _, token = _setup(gate, "echo", {"access_token": f"c-{unique('x')}", "token_type": "Bearer", "expires_in": 3600})
    r = gate.proxy("GET", "/echo/rid", token, headers={"X-Request-Id": "req-e2e-42"})
    assert r.status_code == 200, describe(r)
    assert _headers(r).get("x-request-id") == ["req-e2e-42"]


def test_basic_injection(gate: Credgate) -> None:
    # docs/http-api.md names `inject = "basic"` without saying where user and password come from; the
    # test assumes the stored secret is the `user:password` pair (apiKey form).
    secret = f"svc-user:pw-{unique('p')}"
    _, token = _setup(gate, "basic-echo", {"apiKey": secret})
    r = gate.proxy("GET", "/basic/b", token)
    assert r.status_code == 200, describe(r)
    auth = _headers(r).get("authorization")
    assert auth and len(auth) == 1 and auth[0].startswith("Basic "), auth
    assert base64.b64decode(auth[0][6:]).decode() == secret
    assert r.json()["path"] == "/b"


def test_api_key_header_injection(gate: Credgate) -> None:
    key = f"key-{unique('k')}"
    _, token = _setup(gate, "apikey-echo", {"apiKey": key})
    r = gate.proxy("GET", "/apikey/k", token)
    assert r.status_code == 200, describe(r)
    h = _headers(r)
    assert h.get("x-api-key") == [key], h
    assert "authorization" not in h, f"caller's Authorization reached the upstream: {h.get('authorization')}"


def test_prefix_kept_without_strip(gate: Credgate) -> None:
    _, token = _setup(
        gate, "raw-echo", {"access_token": f"c-{unique('x')}", "token_type": "Bearer", "expires_in": 3600}
    )
    r = gate.proxy("GET", "/raw/a/b?q=1", token)
    assert r.status_code == 200, describe(r)
    assert r.json()["path"] == "/raw/a/b"
    assert r.json()["query"] == "q=1"


def test_prefix_matches_whole_segments_only(gate: Credgate) -> None:
    # `/echo` must not capture `/echoes/...`: that would let one route's path reach another upstream.
    _, token = _setup(gate, "echo", {"access_token": f"c-{unique('x')}", "token_type": "Bearer", "expires_in": 3600})
    r = gate.proxy("GET", "/echoes/x", token)
    assert r.status_code == 404, describe(r)
    r = gate.proxy("GET", "/echo", token)
    assert r.status_code == 200, describe(r)
    assert r.json()["path"] == "/", r.json()["path"]


def test_unknown_route_is_404(gate: Credgate) -> None:
    _, token = _setup(gate, "echo", {"access_token": f"c-{unique('x')}", "token_type": "Bearer", "expires_in": 3600})
    r = gate.proxy("GET", "/no-such-route/x", token)
    assert r.status_code == 404, describe(r)
    assert spec_error(r)["code"] == "NOT_FOUND"


def test_h2c_prior_knowledge(gate: Credgate) -> None:
    _, token = _setup(gate, "echo", {"access_token": f"c-{unique('x')}", "token_type": "Bearer", "expires_in": 3600})
    with httpx.Client(http1=False, http2=True, timeout=10, trust_env=False) as c:
        r = c.get(f"{gate.url}/echo/h2", headers={"Authorization": f"Bearer {token}"})
    assert r.http_version == "HTTP/2", r.http_version
    assert r.status_code == 200, describe(r)
    assert r.json()["path"] == "/h2"
    assert re.fullmatch(r"Bearer c-.*", [v for k, v in r.json()["headers"] if k.lower() == "authorization"][0])
