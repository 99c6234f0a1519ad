"""The real `mcp` Python client through credgate to a real MCP server.

The client discovers credgate's RFC 9728/8414 metadata on its own, gets a token with the
client-credentials extension, and calls `whoami`: the MCP server must have seen exactly the
tenant's stored upstream credential, never credgate's token. Both transport revisions.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from support import Credgate, describe, mcp_session, unique


@pytest.mark.parametrize("auth_method", ["client_secret_basic", "client_secret_post"])
@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_mcp_client_reaches_tool_with_tenant_credential(
    gate: Credgate, take_mcp_token: Callable[[], str], mode: str, auth_method: str
) -> None:
    tenant = unique("acme")
    upstream_cred = take_mcp_token()
    gate.put_bearer(tenant, "github", upstream_cred)
    client = gate.create_client(tenant=tenant)

    res = anyio.run(
        lambda: mcp_session(f"{gate.url}/github/mcp", client, issuer=gate.url, mode=mode, auth_method=auth_method)
    )

    assert res.whoami is not None
    assert res.whoami["authorization"] == f"Bearer {upstream_cred}", res.whoami
    assert res.access_tokens, f"the client never sent a bearer token: {res.http_log}"
    for tok in res.access_tokens:
        assert tok not in str(res.whoami), "credgate's own token reached the MCP server"
        assert tok != upstream_cred
    # the caller's tenant header is not forwarded (none was sent here) and MCP headers pass
    assert res.whoami["x_tenant_id"] is None
    if mode == "legacy":
        assert res.whoami["mcp_protocol_version"] == "2025-11-25"
        assert res.whoami["mcp_session_id"], "Mcp-Session-Id did not pass through credgate"
    else:
        assert res.whoami["mcp_protocol_version"] == "2026-07-28"
    # the client went through discovery and credgate's token endpoint by itself
    urls = [u for _, u, _ in res.http_log]
    assert any("/.well-known/oauth-protected-resource" in u for u in urls), res.http_log
    assert any(u.endswith("/.well-known/oauth-authorization-server") for u in urls), res.http_log
    assert any(m == "POST" and u == f"{gate.url}/oauth/token" and s == 200 for m, u, s in res.http_log), res.http_log


def test_unauthenticated_mcp_post_gets_bearer_challenge(gate: Credgate) -> None:
    r = gate.proxy(
        "POST",
        "/github/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert r.status_code == 401, describe(r)
    www = r.headers.get("www-authenticate", "")
    assert www.startswith("Bearer "), www
    assert 'realm="credgate"' in www, www
    assert "error=" not in www, f"no token was sent, so no error= attribute: {www}"
    assert f'resource_metadata="{gate.url}/.well-known/oauth-protected-resource/github"' in www, www


def test_mcp_session_delete_passes_through(gate: Credgate, take_mcp_token: Callable[[], str]) -> None:
    """Legacy revision by hand: initialize → session id comes back → DELETE reaches upstream."""
    tenant = unique("del")
    gate.put_bearer(tenant, "github", take_mcp_token())
    token = gate.token(gate.create_client(tenant=tenant))
    hdrs = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "0"},
        },
    }
    r = gate.proxy("POST", "/github/mcp", token, json=init, headers=hdrs)
    assert r.status_code == 200, describe(r)
    sid = r.headers.get("mcp-session-id")
    assert sid, f"Mcp-Session-Id not passed back: {dict(r.headers)}"
    hdrs["Mcp-Session-Id"] = sid
    r = gate.proxy(
        "POST", "/github/mcp", token, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=hdrs
    )
    assert r.status_code == 202, describe(r)
    r = gate.proxy("DELETE", "/github/mcp", token, headers=hdrs)
    assert r.status_code in (200, 204), describe(r)
    # the upstream really ended the session: the id is now unknown to it
    r = gate.proxy("POST", "/github/mcp", token, json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=hdrs)
    assert r.status_code == 404, describe(r)
