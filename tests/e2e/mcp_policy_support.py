"""Peers for the MCP policy tests (docs/policy.md).

- `PolicyServer`: the real MCP server of mcp_policy_server.py (SSE or JSON answers), which
  records every tool call it runs.
- `ScriptedUpstream`: a tiny HTTP upstream that records every request it receives and
  answers `tools/list` as scripted: an SSE stream whose events are spaced in time (each
  event's send time recorded), or one JSON document.
- `run_agent`: the real `mcp` Python client through credgate (client-credentials, step-up
  on `insufficient_scope`), running a list of steps and reporting each outcome.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from echo_upstream import read_body
from support import Client, McpUpstream, MemoryTokenStorage


class PolicyServer(McpUpstream):
    def __init__(self, workdir: Path, tokens: list[str], *, json_response: bool, stateless: bool = False):
        workdir.mkdir(parents=True, exist_ok=True)
        self.record = workdir / "calls.jsonl"
        self.record.touch()
        args = ["--record", str(self.record)]
        if json_response:
            args.append("--json-response")
        if stateless:
            args.append("--stateless")
        super().__init__(workdir, tokens, "mcp_policy_server.py", args)

    def calls(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]


@dataclass
class Script:
    """How `ScriptedUpstream` answers a `tools/list`."""

    mode: str = "sse"  # or "json"
    events: list[dict[str, Any]] = field(default_factory=list)  # SSE: JSON-RPC messages, in order
    delay: float = 0.0  # seconds between SSE events
    sent: list[float] = field(default_factory=list)  # when each SSE event was written


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        pass

    def _any(self) -> None:
        body = read_body(self)
        self.server.requests.append(
            {"method": self.command, "path": self.path, "headers": dict(self.headers.items()), "body": body.decode("utf-8", "replace")}
        )
        script = self.server.script
        if script.mode == "json":
            payload = json.dumps(script.events[0]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i, event in enumerate(script.events):
                if i:
                    time.sleep(script.delay)
                data = f"id: {i}\nevent: message\ndata: {json.dumps(event)}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                script.sent.append(time.time())
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _any


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[dict[str, Any]]
    script: Script


class ScriptedUpstream:
    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.requests = []
        self.server.script = Script()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.server.requests

    def play(self, script: Script) -> Script:
        self.server.script = script
        return script

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class AgentResult:
    tools: list[str] | None = None
    outcomes: list[tuple[str, Any]] = field(default_factory=list)  # ("ok", structured) | ("error", text)
    http_log: list[tuple[str, str, int]] = field(default_factory=list)
    token_scopes: list[str | None] = field(default_factory=list)


async def run_agent(
    server_url: str,
    client: Client,
    *,
    issuer: str,
    mode: str,
    calls: list[tuple[str, dict[str, Any]]],
    timeout: float = 45.0,
) -> AgentResult:
    """Connects the real `mcp` client, lists the tools, then makes each call in turn."""
    import anyio
    import httpx2
    from mcp import Client as McpClient
    from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
    from mcp.client.streamable_http import streamable_http_client

    provider = ClientCredentialsOAuthProvider(
        server_url=server_url,
        storage=MemoryTokenStorage(),
        client_id=client.client_id,
        client_secret=client.client_secret,
        token_endpoint_auth_method="client_secret_basic",
        issuer=issuer,
    )
    res = AgentResult()

    async def on_response(resp: httpx2.Response) -> None:
        res.http_log.append((resp.request.method, str(resp.request.url), resp.status_code))
        if str(resp.request.url).endswith("/oauth/token") and resp.status_code == 200:
            await resp.aread()
            res.token_scopes.append(resp.json().get("scope"))

    with anyio.fail_after(timeout):
        async with httpx2.AsyncClient(
            auth=provider, timeout=httpx2.Timeout(10.0, read=30.0), trust_env=False, event_hooks={"response": [on_response]}
        ) as hc:
            async with McpClient(
                streamable_http_client(server_url, http_client=hc), mode=mode, read_timeout_seconds=30  # type: ignore[arg-type]
            ) as mc:
                listed = await mc.list_tools()
                res.tools = sorted(t.name for t in listed.tools)
                for name, args in calls:
                    try:
                        r = await mc.call_tool(name, args)
                    except Exception as e:  # noqa: BLE001 - the refusal is the outcome under test
                        res.outcomes.append(("error", f"{type(e).__name__}: {e}"))
                        continue
                    res.outcomes.append(("error", str(r.content)) if r.is_error else ("ok", r.structured_content))
    return res
