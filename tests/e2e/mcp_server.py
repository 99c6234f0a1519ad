"""A real MCP server (python `mcp==2.3.0`) used as credgate's upstream in the e2e tests.

It is a resource server that accepts only the bearer tokens it is given (the tenants'
upstream credentials), so a request reaches a tool only when credgate injected one of
them. Tools:

- ``whoami``: the Authorization header (and a few MCP headers) the server received.
- ``countdown(n, delay)``: sends ``n`` progress notifications and log messages spaced by
  ``delay`` seconds, each carrying the server's wall-clock send time, so a test can tell
  whether a proxy streamed them or buffered the response.

Run: ``python mcp_server.py --port P --tokens tok1,tok2 [--stateless]``; tokens may also come
from the ``MCP_ACCEPTED_TOKENS`` environment variable (comma-separated).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import anyio
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp.shared.exceptions import MCPDeprecationWarning

# ctx.info & co. are deprecated by the 2026-07-28 revision but still the way to send
# notifications/message; the tests exercise them on purpose.
warnings.filterwarnings("ignore", category=MCPDeprecationWarning)


class StaticTokenVerifier:
    """Accepts exactly the configured opaque tokens."""

    def __init__(self, tokens: set[str]) -> None:
        self._tokens = frozenset(tokens)

    async def verify_token(self, token: str) -> AccessToken | None:
        if token in self._tokens:
            return AccessToken(token=token, client_id="upstream-" + str(sorted(self._tokens).index(token)), scopes=[])
        return None


def build_server(tokens: set[str], port: int, issuer_url: str) -> MCPServer:
    mcp = MCPServer(
        name="credgate-e2e-upstream",
        token_verifier=StaticTokenVerifier(tokens),
        auth=AuthSettings(
            issuer_url=issuer_url,
            resource_server_url=f"http://127.0.0.1:{port}/mcp",
            validate_token_resource=False,
        ),
    )

    @mcp.tool()
    async def whoami(ctx: Context) -> dict[str, str | None]:
        """Report the Authorization header (and MCP routing headers) this server received."""
        headers = ctx.headers or {}
        return {
            "authorization": headers.get("authorization"),
            "x_tenant_id": headers.get("x-tenant-id"),
            "mcp_protocol_version": headers.get("mcp-protocol-version"),
            "mcp_session_id": headers.get("mcp-session-id"),
            "x_request_id": headers.get("x-request-id"),
            "x_forwarded_for": headers.get("x-forwarded-for"),
        }

    @mcp.tool()
    async def countdown(n: int, delay: float, ctx: Context) -> dict[str, object]:
        """Send n progress notifications and log messages, `delay` seconds apart."""
        sent: list[float] = []
        for i in range(n):
            if i:
                await anyio.sleep(delay)
            now = time.time()
            sent.append(now)
            await ctx.report_progress(i + 1, n, f"tick {i + 1} at {now:.6f}")
            await ctx.info(f"tick {i + 1} at {now:.6f}")
        return {"sent": sent}

    return mcp


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", default=os.environ.get("MCP_ACCEPTED_TOKENS", ""))
    parser.add_argument("--issuer-url", default="http://127.0.0.1:1")
    parser.add_argument("--stateless", action="store_true")
    args = parser.parse_args()
    tokens = {t for t in args.tokens.split(",") if t}
    if not tokens:
        parser.error("no accepted tokens given (--tokens or MCP_ACCEPTED_TOKENS)")
    server = build_server(tokens, args.port, args.issuer_url)
    server.run(
        "streamable-http",
        host="127.0.0.1",
        port=args.port,
        stateless_http=args.stateless,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


if __name__ == "__main__":
    main()
