"""Sidecar shape (one route with prefix `/`) and host-based routes (docs/http-api.md, "Proxied requests")."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import httpx
from echo_upstream import EchoUpstream
from support import Credgate, McpUpstream, describe, http, mcp_session, route, unique


def test_sidecar_root_route_with_real_mcp_client(
    make_gate: Callable[..., Credgate], mcp_upstream: McpUpstream, take_mcp_token: Callable[[], str]
) -> None:
    gate = make_gate([route("github", "/", mcp_upstream.url)])
    tenant = unique("side")
    cred = take_mcp_token()
    gate.put_bearer(tenant, "github", cred)
    client = gate.create_client(tenant=tenant)

    with http() as c:
        prm = c.get(f"{gate.url}/.well-known/oauth-protected-resource")
        asm = c.get(f"{gate.url}/.well-known/oauth-authorization-server")
    assert prm.status_code == 200, describe(prm)
    assert prm.json()["resource"] == gate.url, "a prefix-`/` route's resource URL is proxy.public_url"
    assert prm.json()["authorization_servers"] == [gate.url]
    assert asm.status_code == 200, "credgate's own endpoints must win over the `/` route"

    for mode in ("auto", "legacy"):
        res = anyio.run(lambda m=mode: mcp_session(f"{gate.url}/mcp", client, issuer=gate.url, mode=m))
        assert res.whoami["authorization"] == f"Bearer {cred}", (mode, res.whoami)

    # a token requested for the sidecar's resource works on it
    tok = gate.token(client, resource=gate.url)
    r = gate.proxy(
        "POST",
        "/mcp",
        tok,
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28"},
    )
    assert r.status_code != 401, describe(r)


def test_host_route(make_gate: Callable[..., Credgate], echo: EchoUpstream) -> None:
    gate = make_gate(
        [
            {"integration": "hosted", "host": "mcp.internal.test", "upstream": echo.url, "required_scopes": ["mcp"]},
            route("echo", "/echo", echo.url),
        ]
    )
    tenant = unique("host")
    gate.put_bearer(tenant, "hosted", "hosted-cred")
    gate.put_bearer(tenant, "echo", "path-cred")
    token = gate.token(gate.create_client(tenant=tenant, integrations=["hosted", "echo"]))
    with httpx.Client(timeout=10, trust_env=False) as c:
        r = c.get(f"{gate.url}/echo/x", headers={"Host": "mcp.internal.test", "Authorization": f"Bearer {token}"})
        r2 = c.get(f"{gate.url}/echo/x", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, describe(r)
    auth = [v for k, v in r.json()["headers"] if k.lower() == "authorization"]
    assert auth == ["Bearer hosted-cred"], "the host route must win for its Host"
    assert r.json()["path"] == "/echo/x"
    assert r2.status_code == 200, describe(r2)
    assert [v for k, v in r2.json()["headers"] if k.lower() == "authorization"] == ["Bearer path-cred"]
