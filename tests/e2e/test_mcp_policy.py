"""MCP-aware policy (docs/policy.md) with real MCP peers: the `mcp` Python client and the
TypeScript SDK, against the real `mcp` server answering in SSE or in JSON.

- a client restricted by `allowedTools` (globs, integration prefixes) lists only its tools
  and cannot call the others;
- `tool_scopes`: a call without the scope gets `insufficient_scope`, the client steps up
  (asks credgate for a token with the wider scope) and its retry succeeds;
- `[[routes.deny]]` CEL rules allow and refuse calls on their arguments.

The server records every tool call it runs: a refused call must never have run.
"""

from __future__ import annotations

import json
import secrets
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import jwt
import pytest
from mcp_policy_support import PolicyServer, run_agent
from support import Credgate, describe, route, run_node_client, spec_error, unique
RULE_MESSAGE = "transfers over 100 need a human"
POLICY = {
    "tool_scopes": {"delete_*": ["mcp:write"]},
    "deny": [{"when": 'tool == "transfer" && args.amount > 100', "message": RULE_MESSAGE}],
}


@dataclass
class Env:
    gate: Credgate
    servers: dict[str, PolicyServer]  # integration -> server
    tokens: dict[str, str]  # integration -> upstream credential


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tokens = {"tools": f"up-{secrets.token_urlsafe(16)}", "tools-json": f"up-{secrets.token_urlsafe(16)}"}
    servers = {
        "tools": PolicyServer(tmp_path_factory.mktemp("sse"), [tokens["tools"]], json_response=False),
        "tools-json": PolicyServer(tmp_path_factory.mktemp("json"), [tokens["tools-json"]], json_response=True),
    }
    gate = Credgate(
        tmp_path_factory.mktemp("gate"),
        [route(i, f"/{i}", s.url, **POLICY) for i, s in servers.items()],
    )
    try:
        gate.start()
        yield Env(gate, servers, tokens)
    finally:
        gate.stop()
        for s in servers.values():
            s.close()


def _tenant(env: Env) -> str:
    tenant = unique("pol")
    for integration, tok in env.tokens.items():
        env.gate.put_bearer(tenant, integration, tok)
    return tenant


def _ran(server: PolicyServer, tool: str) -> list[dict[str, Any]]:
    return [c["args"] for c in server.calls() if c["tool"] == tool]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
@pytest.mark.parametrize("integration", ["tools", "tools-json"])
def test_restricted_agent_lists_and_calls_only_its_tools(env: Env, integration: str, mode: str) -> None:
    tenant = _tenant(env)
    client = env.gate.create_client(
        tenant=tenant,
        integrations=list(env.tokens),
        allowedTools=["whoami", f"{integration}/search_*", "elsewhere/delete_*"],
    )
    marker = unique("q")
    server = env.servers[integration]
    res = anyio.run(
        lambda: run_agent(
            f"{env.gate.url}/{integration}/mcp",
            client,
            issuer=env.gate.url,
            mode=mode,
            calls=[("search_docs", {"query": marker}), ("delete_item", {"item": marker})],
        )
    )
    assert res.tools == ["search_code", "search_docs", "whoami"], res.tools
    assert res.outcomes[0] == ("ok", {"found": f"docs about {marker}"}), res.outcomes
    assert res.outcomes[1][0] == "error", res.outcomes
    assert _ran(server, "search_docs").count({"query": marker}) == 1
    assert {"item": marker} not in _ran(server, "delete_item"), "a refused call reached the MCP server"
    assert any(s == 403 for m, _, s in res.http_log if m == "POST"), res.http_log


@pytest.mark.parametrize("integration", ["tools", "tools-json"])
def test_step_up_for_a_scoped_tool(env: Env, integration: str) -> None:
    tenant = _tenant(env)
    client = env.gate.create_client(tenant=tenant, integrations=list(env.tokens), scopes=["mcp", "mcp:write"])
    item = unique("item")
    res = anyio.run(
        lambda: run_agent(
            f"{env.gate.url}/{integration}/mcp",
            client,
            issuer=env.gate.url,
            mode="auto",
            calls=[("delete_item", {"item": item})],
        )
    )
    assert res.outcomes == [("ok", {"deleted": item})], (res.outcomes, res.http_log)
    assert res.token_scopes[0] == "mcp", res.token_scopes
    assert "mcp:write" in (res.token_scopes[-1] or "").split(), res.token_scopes
    posts = [s for m, u, s in res.http_log if m == "POST" and u.endswith(f"/{integration}/mcp")]
    assert 403 in posts, res.http_log
    assert _ran(env.servers[integration], "delete_item").count({"item": item}) == 1, "ran once: after the step-up only"

    # A client that may not hold the scope cannot step up (credgate refuses the wider
    # token: invalid_scope, which ends the SDK's session): the call never runs.
    weak = env.gate.create_client(tenant=tenant, integrations=list(env.tokens), scopes=["mcp"])
    other = unique("item")
    with pytest.raises(BaseException) as refused:  # noqa: PT011 - an ExceptionGroup from the SDK's task group
        anyio.run(
            lambda: run_agent(
                f"{env.gate.url}/{integration}/mcp",
                weak,
                issuer=env.gate.url,
                mode="auto",
                calls=[("delete_item", {"item": other})],
            )
        )
    assert "invalid_scope" in "".join(traceback.format_exception(refused.value))
    assert {"item": other} not in _ran(env.servers[integration], "delete_item")


def test_insufficient_scope_challenge_names_the_scopes(env: Env) -> None:
    tenant = _tenant(env)
    client = env.gate.create_client(tenant=tenant, integrations=list(env.tokens), scopes=["mcp", "mcp:write"])
    token = env.gate.token(client, scope="mcp")
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "delete_item", "arguments": {"item": "x"}}}
    r = env.gate.proxy("POST", "/tools/mcp", token, json=body, headers={"Accept": "application/json, text/event-stream"})
    assert r.status_code == 403, describe(r)
    assert r.headers["www-authenticate"] == (
        f'Bearer error="insufficient_scope", scope="mcp mcp:write", '
        f'resource_metadata="{env.gate.url}/.well-known/oauth-protected-resource/tools"'
    ), r.headers
    assert spec_error(r)["details"]["required_scope"] == "mcp mcp:write"
    wider = env.gate.token(client, scope="mcp mcp:write", resource=f"{env.gate.url}/tools")
    assert "mcp:write" in jwt.decode(wider, options={"verify_signature": False})["scope"].split()


@pytest.mark.parametrize("integration", ["tools", "tools-json"])
def test_cel_rules_allow_and_refuse_on_arguments(env: Env, integration: str) -> None:
    tenant = _tenant(env)
    client = env.gate.create_client(tenant=tenant, integrations=list(env.tokens))
    to = unique("acct")
    res = anyio.run(
        lambda: run_agent(
            f"{env.gate.url}/{integration}/mcp",
            client,
            issuer=env.gate.url,
            mode="legacy",
            calls=[("transfer", {"amount": 50, "to": to}), ("transfer", {"amount": 500, "to": to})],
        )
    )
    assert res.outcomes[0] == ("ok", {"sent": 50, "to": to}), res.outcomes
    assert res.outcomes[1][0] == "error", res.outcomes
    ran = _ran(env.servers[integration], "transfer")
    assert {"amount": 50, "to": to} in ran and {"amount": 500, "to": to} not in ran, ran

    # What a caller is told: 403 FORBIDDEN with the rule's message.
    token = env.gate.token(client)
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "transfer", "arguments": {"amount": 101, "to": to}}}
    r = env.gate.proxy("POST", f"/{integration}/mcp", token, json=body, headers={"Accept": "application/json, text/event-stream"})
    assert r.status_code == 403, describe(r)
    err = spec_error(r)
    assert (err["code"], err["message"], err["details"]["tool"]) == ("FORBIDDEN", RULE_MESSAGE, "transfer"), err


@pytest.mark.parametrize("integration", ["tools", "tools-json"])
def test_node_sdk_lists_calls_and_steps_up(env: Env, integration: str) -> None:
    tenant = _tenant(env)
    client = env.gate.create_client(
        tenant=tenant,
        integrations=list(env.tokens),
        scopes=["mcp", "mcp:write"],
        allowedTools=["whoami", "search_*", f"{integration}/delete_*"],
    )
    item, query = unique("item"), unique("q")
    res = run_node_client(
        "mcp_policy_client.mjs",
        dict(
            MCP_URL=f"{env.gate.url}/{integration}/mcp",
            ISSUER=env.gate.url,
            CLIENT_ID=client.client_id,
            CLIENT_SECRET=client.client_secret,
            SCOPE="mcp",
            ALLOWED_CALL="search_code",
            FORBIDDEN_CALL="transfer",
            STEP_UP_CALL="delete_item",
            ARGS_JSON=json.dumps(
                {"search_code": {"query": query}, "transfer": {"amount": 1, "to": "x"}, "delete_item": {"item": item}}
            ),
        ),
    )
    assert res["tools"] == ["delete_item", "search_code", "search_docs", "whoami"], res["tools"]
    assert res["allowed"] == {"found": f"code about {query}"}, res
    assert res["forbidden"].startswith("refused"), res["forbidden"]
    assert res["stepUp"] == {"deleted": item}, res
    assert res["scopes"][0] == "mcp" and "mcp:write" in res["scopes"][-1].split(), res["scopes"]
    server = env.servers[integration]
    assert _ran(server, "delete_item").count({"item": item}) == 1
    assert not [a for a in _ran(server, "transfer") if a == {"amount": 1, "to": "x"}], "a refused call ran"
