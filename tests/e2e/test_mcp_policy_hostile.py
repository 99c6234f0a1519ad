"""Hostile shapes against the MCP policy (docs/policy.md), sent as raw HTTP with httpx.

Every refused request must never reach the upstream: the echo upstream records everything
it receives, and each request carries a unique marker in its path. Also: a forbidden tool
arriving late in an SSE `tools/list` (the first event must reach the client before the
upstream sends the next), the metric, the audit events, and `check-config` naming a broken
rule.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from echo_upstream import EchoUpstream
from mcp_policy_support import Script, ScriptedUpstream
from support import CREDGATE_BIN, Credgate, describe, http, render_config, route, spec_error, unique

REPLAY = 4096
POLICY = {
    "tool_scopes": {"delete_*": ["mcp:write"]},
    "deny": [{"when": 'tool == "transfer" && args.amount > 100', "message": "too much"}],
}
ACCEPT = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@dataclass
class Ctx:
    gate: Credgate
    echo: EchoUpstream
    scripted: ScriptedUpstream
    tenant: str
    restricted: str  # token: allowedTools = whoami, search_*
    free: str  # token: no restriction, scope mcp only


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream) -> Iterator[Ctx]:
    scripted = ScriptedUpstream()
    gate = Credgate(
        tmp_path_factory.mktemp("mcphostile"),
        [
            route("echo", "/echo", echo.url),
            route("pol", "/pol", echo.url, **POLICY),
            route("sse", "/sse", scripted.url),
        ],
        {"proxy": {"max_replay_body_bytes": REPLAY}},
    )
    try:
        gate.start()
        tenant = unique("mh")
        for integration in ("echo", "pol", "sse"):
            gate.put_bearer(tenant, integration, f"cred-{integration}")
        integrations = ["echo", "pol", "sse"]
        restricted = gate.token(gate.create_client(tenant=tenant, integrations=integrations, allowedTools=["whoami", "search_*"]))
        free = gate.token(gate.create_client(tenant=tenant, integrations=integrations))
        yield Ctx(gate, echo, scripted, tenant, restricted, free)
    finally:
        gate.stop()
        scripted.close()


def call(name: Any, i: int = 1, **args: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": name, "arguments": args}}


def send(ctx: Ctx, token: str, body: bytes | Iterator[bytes], *, method: str = "POST", prefix: str = "/echo", headers: Any = None) -> tuple[httpx.Response, bool]:
    """Sends `body` to a fresh marked path; returns the answer and whether the upstream saw it."""
    marker = unique("m")
    hdrs = [*ACCEPT.items(), *(headers or []), ("Authorization", f"Bearer {token}")]
    with http() as c:
        r = c.request(method, f"{ctx.gate.url}{prefix}/{marker}", content=body, headers=hdrs)
    seen = any(marker in q["path"] for q in list(ctx.echo.requests))
    return r, seen


def chunked(data: bytes) -> Iterator[bytes]:
    """A generator body: httpx sends it with `Transfer-Encoding: chunked`."""
    for i in range(0, len(data), 7):
        yield data[i : i + 7]


def js(v: Any) -> bytes:
    return json.dumps(v).encode()


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE", "POST"])
def test_chunked_bodies_are_judged_whatever_the_method(ctx: Ctx, method: str) -> None:
    r, seen = send(ctx, ctx.restricted, chunked(js(call("delete_all"))), method=method)
    assert r.status_code == 403 and not seen, describe(r)
    assert spec_error(r)["details"]["tool"] == "delete_all"
    r, seen = send(ctx, ctx.restricted, chunked(js(call("search_docs"))), method=method)
    assert r.status_code == 200 and seen, describe(r)
    # A route with tool rules judges every client, also for PUT/PATCH.
    r, seen = send(ctx, ctx.free, chunked(js(call("transfer", amount=500))), method=method, prefix="/pol")
    assert r.status_code == 403 and not seen, describe(r)
    assert spec_error(r)["message"] == "too much"


def test_batches_mixing_allowed_and_forbidden_calls(ctx: Ctx) -> None:
    cases = [
        (ctx.restricted, "/echo", [call("whoami", 1), call("delete_all", 2), call("search_x", 3)], 403),
        (ctx.restricted, "/echo", [{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, call("delete_all", 2)], 403),
        (ctx.restricted, "/echo", [call("whoami", 1), call("search_x", 2)], 200),
        (ctx.free, "/pol", [call("whoami", 1), call("delete_item", 2)], 403),  # needs mcp:write
        (ctx.free, "/pol", [call("transfer", 1, amount=5), call("transfer", 2, amount=500)], 403),
        (ctx.free, "/pol", [call("transfer", 1, amount=5), call("whoami", 2)], 200),
    ]
    for token, prefix, batch, status in cases:
        r, seen = send(ctx, token, js(batch), prefix=prefix)
        assert r.status_code == status and seen == (status == 200), f"{batch}: {describe(r)}"


def test_duplicate_keys_anywhere_are_refused(ctx: Ctx) -> None:
    bodies = [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"delete_all"}}',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","arguments":{"a":1,"a":2}}}',
        b'[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami"}},{"id":2,"id":3}]',
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","\\u006eame":"delete_all"}}',
    ]
    for body in bodies:
        for token, prefix in ((ctx.restricted, "/echo"), (ctx.free, "/pol")):
            r, seen = send(ctx, token, chunked(body), method="PATCH", prefix=prefix)
            assert r.status_code == 400 and not seen, f"{body!r}: {describe(r)}"
            assert spec_error(r)["message"] == "duplicate key in request body"
    # An unrestricted client on a route without tool policy keeps the fast path: not parsed.
    r, seen = send(ctx, ctx.free, bodies[0])
    assert r.status_code == 200 and seen, describe(r)


def test_unicode_escapes_in_names_are_resolved(ctx: Ctx) -> None:
    cases = [
        (ctx.restricted, "/echo", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\u0064elete_all"}}', 403),
        (ctx.restricted, "/echo", b'{"jsonrpc":"2.0","id":1,"method":"tools\\u002fcall","params":{"name":"delete_all"}}', 403),
        (ctx.restricted, "/echo", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\u0073earch_x"}}', 200),
        (ctx.free, "/pol", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\u0064elete_item"}}', 403),
        (ctx.free, "/pol", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"tr\\u0061nsfer","arguments":{"amount":500}}}', 403),
    ]
    for token, prefix, body, status in cases:
        r, seen = send(ctx, token, body, prefix=prefix)
        assert r.status_code == status and seen == (status == 200), f"{body!r}: {describe(r)}"
    r, _ = send(ctx, ctx.free, cases[3][2], prefix="/pol")
    assert 'error="insufficient_scope"' in r.headers.get("www-authenticate", ""), describe(r)


def test_headers_that_disagree_with_the_body(ctx: Ctx) -> None:
    ok = js(call("whoami"))
    b64 = "=?base64?" + base64.b64encode(b"whoami").decode() + "?="
    cases: list[tuple[str, bytes, list[tuple[str, str]], str, int]] = [
        ("POST", ok, [("Mcp-Method", "tools/call"), ("Mcp-Name", "whoami")], "/echo", 200),
        ("POST", ok, [("Mcp-Method", "tools/call"), ("Mcp-Name", b64)], "/echo", 200),
        ("POST", ok, [("Mcp-Method", "tools/list")], "/echo", 400),
        ("POST", ok, [("Mcp-Method", "tools/call"), ("Mcp-Name", "search_x")], "/echo", 400),
        ("POST", ok, [("Mcp-Method", "tools/call"), ("Mcp-Method", "tools/call")], "/echo", 400),
        ("POST", ok, [("Mcp-Name", "=?base64?not base64?=")], "/echo", 400),
        ("POST", js([call("whoami", 1), call("whoami", 2)]), [("Mcp-Method", "tools/call")], "/echo", 400),
        ("PUT", ok, [("Mcp-Method", "tools/call"), ("Mcp-Name", "search_x")], "/pol", 400),
        ("GET", b"", [("Mcp-Method", "tools/call")], "/pol", 400),
        # The header names a forbidden tool: refused as such, whatever the body says.
        ("POST", ok, [("Mcp-Method", "tools/call"), ("Mcp-Name", "delete_all")], "/echo", 403),
    ]
    for method, body, headers, prefix, status in cases:
        token = ctx.restricted if prefix == "/echo" else ctx.free
        r, seen = send(ctx, token, body, method=method, prefix=prefix, headers=headers)
        assert r.status_code == status and seen == (status == 200), f"{method} {headers}: {describe(r)}"


def _tools_list_script(delay: float) -> Script:
    tools = [{"name": n, "inputSchema": {"type": "object"}} for n in ("search_docs", "delete_all", "whoami", "other")]
    return Script(
        mode="sse",
        delay=delay,
        events=[
            {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}},
            {"jsonrpc": "2.0", "id": 1, "result": {"tools": tools}},
        ],
    )


def _sse_data(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]


def test_forbidden_tool_arriving_late_in_an_sse_tools_list(ctx: Ctx) -> None:
    script = ctx.scripted.play(_tools_list_script(delay=1.0))
    body = js({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    first_at: float | None = None
    text = ""
    with httpx.Client(timeout=10, trust_env=False) as c:
        with c.stream("POST", f"{ctx.gate.url}/sse/mcp", content=body, headers={**ACCEPT, "Authorization": f"Bearer {ctx.restricted}"}) as r:
            assert r.status_code == 200, r.status_code
            assert r.headers["content-type"].startswith("text/event-stream")
            for chunk in r.iter_text():
                if first_at is None and "notifications/progress" in chunk:
                    first_at = time.time()
                text += chunk
    assert first_at is not None, text
    assert len(script.sent) == 2, script.sent
    assert first_at < script.sent[1], "the first event waited for the second: the stream was buffered"
    assert "delete_all" not in text and "other" not in text, text
    events = _sse_data(text)
    assert [t["name"] for t in events[1]["result"]["tools"]] == ["search_docs", "whoami"], events
    assert "id: 1\n" in text, "the event's id survives the rewrite"

    # An unrestricted client sees everything, unchanged.
    ctx.scripted.play(_tools_list_script(delay=0.0))
    r = ctx.gate.proxy("POST", "/sse/mcp", ctx.free, content=body, headers=ACCEPT)
    assert "delete_all" in r.text, describe(r)


def test_json_tools_list_answer_is_filtered(ctx: Ctx) -> None:
    ctx.scripted.play(Script(mode="json", events=[_tools_list_script(0).events[1]]))
    body = js({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    r = ctx.gate.proxy("POST", "/sse/mcp", ctx.restricted, content=body, headers=ACCEPT)
    assert r.status_code == 200, describe(r)
    assert [t["name"] for t in r.json()["result"]["tools"]] == ["search_docs", "whoami"], r.text
    sent = {k.lower(): v for k, v in ctx.scripted.requests[-1]["headers"].items()}
    assert sent.get("accept-encoding") == "identity", sent


def test_inspected_body_over_the_replay_limit_is_413(ctx: Ctx) -> None:
    big = js(call("whoami", pad="x" * (REPLAY + 10)))
    for token, prefix in ((ctx.restricted, "/echo"), (ctx.free, "/pol")):
        r, seen = send(ctx, token, chunked(big), method="PUT", prefix=prefix)
        assert r.status_code == 413 and not seen, describe(r)
    r, seen = send(ctx, ctx.restricted, b"\xff not json", method="PATCH")
    assert r.status_code == 400 and not seen, describe(r)


def test_metric_and_audit_events(ctx: Ctx) -> None:
    send(ctx, ctx.restricted, js(call("delete_all")))
    send(ctx, ctx.free, js(call("transfer", amount=1000)), prefix="/pol")
    send(ctx, ctx.restricted, js({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}))
    with http() as c:
        metrics = c.get(f"{ctx.gate.ops_url}/metrics").text
    lines = [ln for ln in metrics.splitlines() if ln.startswith("credgate_mcp_requests_total{")]

    def has(**labels: str) -> bool:
        return any(all(f'{k}="{v}"' in ln for k, v in labels.items()) for ln in lines)

    assert has(route="echo", method="tools/call", result="tool_not_allowed"), lines
    assert has(route="pol", method="tools/call", result="denied_by_rule"), lines
    assert has(route="echo", method="initialize", result="allowed"), lines
    methods = {ln.split('method="')[1].split('"')[0] for ln in lines}
    assert methods <= {"initialize", "tools/list", "tools/call", "resources/read", "prompts/get", "other"}, methods

    events = [json.loads(ln) for ln in ctx.gate.audit_path.read_text().splitlines() if '"mcp-call-refused"' in ln]
    reasons = {(e["reason"], e.get("tool")) for e in events}
    assert ("tool_not_allowed", "delete_all") in reasons, events
    assert ("denied_by_rule", "transfer") in reasons, events
    assert ("insufficient_scope", "delete_item") in reasons, events
    assert ("header_mismatch", None) in reasons and ("malformed_body", None) in reasons, events
    for e in events:
        assert e["tenant"] == ctx.tenant and e["client_id"] and e["request_id"], e


def test_check_config_names_a_broken_rule(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    cases = [
        ({"deny": [{"when": "true", "message": "ok"}, {"when": "args.amount >", "message": "m"}]}, "routes[1]: deny[1]: `when` does not compile"),
        ({"deny": [{"when": "true", "message": ""}]}, "routes[1]: deny[0]"),
        ({"tool_scopes": {"delete_*": []}}, "routes[1]: tool_scopes"),
    ]
    for extra, expected in cases:
        cfg = tmp_path / f"c{unique('x')}.toml"
        cfg.write_text(
            render_config(
                {"store": {"backend": "embedded", "path": str(tmp_path / "s")}},
                [route("a", "/a", "http://127.0.0.1:1"), route("b", "/b", "http://127.0.0.1:1", **extra)],
            )
        )
        p = subprocess.run(
            [str(CREDGATE_BIN), "check-config", "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("CREDGATE_")},
        )
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert expected in p.stdout + p.stderr, (expected, p.stdout, p.stderr)
    good = tmp_path / "good.toml"
    good.write_text(render_config({}, [route("b", "/b", "http://127.0.0.1:1", **POLICY)]))
    p = subprocess.run([str(CREDGATE_BIN), "check-config", "--config", str(good)], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    assert "args.amount > 100" in p.stdout and "mcp:write" in p.stdout, p.stdout
