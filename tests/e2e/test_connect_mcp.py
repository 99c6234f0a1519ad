"""The MCP-native consent answer (docs/connect.md): a tenant that has not connected the
integration gets, for a JSON-RPC request, HTTP 200 with JSON-RPC error -32042 (URL
elicitation required, MCP 2025-11-25) carrying a working connect link. The real `mcp`
client (mcp==2.3.0) receives it; once the person has connected through that link (the
provider's own login and consent pages), the same session and call succeed and the real MCP
upstream sees the token the provider issued.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import anyio
import pytest
from connect_support import (
    ConnectProvider,
    browser_client,
    callback_url,
    connect_gate,
    provider_walk,
    start_flow,
    use_provider,
)
from echo_upstream import EchoUpstream
from support import Credgate, McpUpstream, describe, mcp_session, route, spec_error, unique


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Credgate, ConnectProvider]]:
    work = tmp_path_factory.mktemp("connect-mcp")
    echo = EchoUpstream()
    gate = connect_gate(work / "gate", echo.url)
    provider = ConnectProvider(work, [callback_url(gate)])
    # The real MCP server, trusting the provider's introspection (mcp_introspecting_server.py).
    upstream = McpUpstream(
        work / "mcp",
        [],
        script="mcp_introspecting_server.py",
        args=["--introspect", f"{provider.issuer}/token/introspection"],
        env={"INTROSPECT_CLIENT_ID": "upstream", "INTROSPECT_CLIENT_SECRET": provider.upstream_secret},
    )
    gate.routes.append(route("gh", "/gh", upstream.url))
    use_provider(gate, provider)
    try:
        gate.start()
        yield gate, provider
    finally:
        gate.stop()
        upstream.close()
        provider.close()
        echo.close()


def _url_elicitation(exc: BaseException):  # noqa: ANN202 - mcp's MCPError
    """The -32042 error somewhere in what the mcp client raised (task groups wrap it)."""
    from mcp.shared.exceptions import MCPError

    stack, seen = [exc], set()
    while stack:
        e = stack.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, MCPError) and e.error.code == -32042:
            return e
        stack.extend(getattr(e, "exceptions", ()))
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    raise AssertionError(f"no -32042 error in {exc!r}")


def _connect(gate: Credgate, url: str, login: str) -> None:
    with browser_client() as client:
        authorize = start_flow(client, url)
        back = provider_walk(client, authorize, callback_url(gate), login=login)
        r = client.get(back)
        assert r.status_code == 200 and "is connected" in r.text, r.text[:400]


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_mcp_client_gets_url_elicitation_and_succeeds_after_connecting(
    world: tuple[Credgate, ConnectProvider], mode: str
) -> None:
    from mcp.shared.exceptions import UrlElicitationRequiredError

    gate, provider = world
    tenant = unique(f"mcp-{mode}")
    client = gate.create_client(tenant=tenant, integrations=["gh"])
    session = functools.partial(mcp_session, f"{gate.url}/gh/mcp", client, issuer=gate.url, mode=mode)
    with pytest.raises(BaseException) as raised:  # noqa: PT011 - whatever wraps it, -32042 is inside
        anyio.run(session)
    err = _url_elicitation(raised.value)
    (elicitation,) = UrlElicitationRequiredError.from_error(err.error).elicitations
    assert elicitation.mode == "url" and elicitation.elicitation_id, elicitation
    assert elicitation.url.startswith(f"{gate.url}/connect/gh?link="), elicitation.url
    assert tenant in elicitation.message and "gh" in elicitation.message

    login = f"user-{mode}"
    _connect(gate, elicitation.url, login)

    result = anyio.run(session)
    auth = result.whoami["authorization"]
    assert auth.startswith("Bearer "), result.whoami
    info = provider.introspect(auth[7:])
    assert info["active"] is True and info["sub"] == login, info


def test_wire_shape_and_when_the_plain_error_is_kept(world: tuple[Credgate, ConnectProvider]) -> None:
    gate, _ = world
    tenant = unique("wire")
    token = gate.token(gate.create_client(tenant=tenant, integrations=["gh"]))
    call = {"jsonrpc": "2.0", "id": "req-7", "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    headers = {"Accept": "application/json, text/event-stream"}
    r = gate.proxy("POST", "/gh/mcp", token, json=call, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", describe(r)
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == "req-7" and body["error"]["code"] == -32042, body
    (e,) = body["error"]["data"]["elicitations"]
    assert e["mode"] == "url" and e["elicitationId"] and e["url"].startswith(f"{gate.url}/connect/gh?link=")
    with browser_client() as c:
        assert c.get(e["url"]).status_code == 200  # the link works
    # not one request with an id: the plain 403, with details.connect_url
    for kw in (
        {"method": "POST", "json": {"jsonrpc": "2.0", "method": "notifications/initialized"}},
        {"method": "POST", "json": [call]},
        {"method": "POST", "content": b"not json"},
        {"method": "GET"},
    ):
        method = kw.pop("method")
        r = gate.proxy(method, "/gh/mcp", token, headers=headers, **kw)
        assert r.status_code == 403, describe(r)
        err = spec_error(r)
        assert err["code"] == "INTEGRATION_NOT_CONNECTED"
        assert err["details"]["connect_url"].startswith(f"{gate.url}/connect/gh?link="), err
    # a body of unknown length (streamed, chunked) is never waited for: the plain 403
    def chunks() -> Iterator[bytes]:
        yield b'{"jsonrpc": "2.0", "id": 1, '
        yield b'"method": "tools/list"}'

    r = gate.proxy("POST", "/gh/mcp", token, headers=headers, content=chunks())
    assert r.status_code == 403 and spec_error(r)["code"] == "INTEGRATION_NOT_CONNECTED", describe(r)


def test_reauthorization_required_elicits_a_reconnect(world: tuple[Credgate, ConnectProvider]) -> None:
    """The provider revoked the grant: the upstream's 401 → refresh → invalid_grant. The
    JSON-RPC call (its body kept for the retry) gets -32042 with a reconnect link; other
    requests get 403 REAUTHORIZATION_REQUIRED with details.connect_url; after reconnecting
    through that link the call goes through again."""
    gate, provider = world
    tenant = unique("reauth")
    token = gate.token(gate.create_client(tenant=tenant, integrations=["gh"]))
    with browser_client() as c:
        authorize = start_flow(c, gate.admin(
            "POST", f"/api/admin/tenants/{tenant}/integrations/gh/connect-link", json={}
        ).json()["url"])
        assert c.get(provider_walk(c, authorize, callback_url(gate), login="dave")).status_code == 200
    access = injected_bearer_of(gate, token)
    provider.revoke(access)  # RFC 7009 on the access token: the grant's tokens all go
    call = {"jsonrpc": "2.0", "id": 42, "method": "tools/list"}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    r = gate.proxy("POST", "/gh/mcp", token, json=call, headers=headers)
    assert r.status_code == 200, describe(r)
    body = r.json()
    assert body["id"] == 42 and body["error"]["code"] == -32042, body
    (e,) = body["error"]["data"]["elicitations"]
    assert e["message"].startswith("Reconnect gh") and e["url"].startswith(f"{gate.url}/connect/gh?link=")
    r = gate.proxy("GET", "/gh/mcp", token, headers=headers)
    err = spec_error(r)
    assert r.status_code == 403 and err["code"] == "REAUTHORIZATION_REQUIRED", describe(r)
    assert err["details"]["connect_url"].startswith(f"{gate.url}/connect/gh?link=")
    with browser_client() as c:
        authorize = start_flow(c, e["url"])
        assert c.get(provider_walk(c, authorize, callback_url(gate), login="dave")).status_code == 200
    assert gate.admin("GET", f"/api/admin/credentials/{tenant}/gh").json()["credential"]["status"] == "active"
    fresh = injected_bearer_of(gate, token)
    assert fresh != access and provider.introspect(fresh)["sub"] == "dave"


def injected_bearer_of(gate: Credgate, token: str) -> str:
    """The upstream credential credgate injects now (the echo route shows it)."""
    from connect_support import injected_bearer

    r = gate.proxy("GET", "/guarded/x", token)
    assert r.status_code == 200, describe(r)
    return injected_bearer(r)
