"""allowedTools: a client limited to some tools can call those, and every other tools/call is
refused with 403 before it reaches the upstream — single messages, batches, the 2026-07-28
Mcp-Method/Mcp-Name headers, and chunked bodies alike. Other methods pass."""

from __future__ import annotations

import json

from support import Credgate, describe, route, spec_error, unique


def _call(name: str, id: int = 1) -> dict:
    return {"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": name, "arguments": {}}}


def _seen(echo, marker: str) -> int:
    return sum(1 for r in list(echo.requests) if marker in r["path"])


def test_allowed_tools_are_enforced(make_gate, echo) -> None:
    gate: Credgate = make_gate(routes=[route("echo", "/echo", echo.url)])
    tenant = unique("at")
    gate.put_bearer(tenant, "echo", "c-tools")
    token = gate.token(gate.create_client(tenant=tenant, integrations=["echo"], allowedTools=["whoami"]))
    h = {"Content-Type": "application/json"}

    def post(marker: str, body: object, **extra_headers: str):
        return gate.proxy("POST", f"/echo/{marker}", token, content=json.dumps(body).encode(), headers={**h, **extra_headers})

    m = unique("ok")
    r = post(m, _call("whoami"))
    assert r.status_code == 200, describe(r)
    assert json.loads(r.json()["body"])["params"]["name"] == "whoami"

    m = unique("no")
    r = post(m, _call("countdown"))
    assert r.status_code == 403, describe(r)
    assert spec_error(r)["code"] == "FORBIDDEN" and spec_error(r)["details"]["tool"] == "countdown"
    assert _seen(echo, m) == 0, "a refused call reached the upstream"

    m = unique("batch")
    r = post(m, [_call("whoami", 1), _call("countdown", 2)])
    assert r.status_code == 403, describe(r)
    assert _seen(echo, m) == 0

    m = unique("hdr")
    r = post(m, _call("whoami"), **{"Mcp-Method": "tools/call", "Mcp-Name": "countdown"})
    assert r.status_code == 403, describe(r)

    m = unique("list")
    assert post(m, {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).status_code == 200
    assert gate.proxy("GET", f"/echo/{unique('get')}", token).status_code == 200

    m = unique("chunk")

    def chunks():
        data = json.dumps(_call("countdown")).encode()
        yield data[:10]
        yield data[10:]

    r = gate.proxy("POST", f"/echo/{m}", token, content=chunks(), headers=h)
    assert r.status_code == 403, describe(r)
    assert _seen(echo, m) == 0

    r = gate.proxy("POST", f"/echo/{unique('bad')}", token, content=b"{not json", headers=h)
    assert r.status_code == 400, describe(r)

    # An unrestricted client is not inspected at all.
    free = gate.token(gate.create_client(tenant=tenant, integrations=["echo"]))
    r = gate.proxy("POST", f"/echo/{unique('free')}", free, content=json.dumps(_call("countdown")).encode(), headers=h)
    assert r.status_code == 200, describe(r)
