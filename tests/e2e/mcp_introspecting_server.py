"""The MCP server of mcp_server.py (real `mcp==2.3.0`), accepting a bearer token only while
an OAuth provider's RFC 7662 introspection endpoint calls it active: an upstream for tokens
nobody knows in advance, such as the ones a tenant obtains by connecting (test_connect_mcp.py).

Run: ``python mcp_introspecting_server.py --port P --introspect URL`` with the resource
server's client credentials in ``INTROSPECT_CLIENT_ID`` / ``INTROSPECT_CLIENT_SECRET``.
"""

from __future__ import annotations

import argparse
import os

import httpx
import mcp_server
from mcp.server.auth.provider import AccessToken
from mcp.server.transport_security import TransportSecuritySettings


class IntrospectingVerifier:
    def __init__(self, url: str, client_id: str, client_secret: str) -> None:
        self._url = url
        self._auth = (client_id, client_secret)

    async def verify_token(self, token: str) -> AccessToken | None:
        async with httpx.AsyncClient(timeout=10.0, trust_env=False) as c:
            r = await c.post(self._url, data={"token": token}, auth=self._auth)
        if r.status_code != 200 or r.json().get("active") is not True:
            return None
        return AccessToken(token=token, client_id=r.json().get("client_id", "unknown"), scopes=[])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--introspect", required=True)
    args = parser.parse_args()
    verifier = IntrospectingVerifier(
        args.introspect, os.environ["INTROSPECT_CLIENT_ID"], os.environ["INTROSPECT_CLIENT_SECRET"]
    )
    # build_server makes its verifier from the accepted tokens: hand it this one instead.
    mcp_server.StaticTokenVerifier = lambda _tokens: verifier  # type: ignore[assignment,misc]
    server = mcp_server.build_server({"unused"}, args.port, "http://127.0.0.1:1")
    server.run(
        "streamable-http",
        host="127.0.0.1",
        port=args.port,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


if __name__ == "__main__":
    main()
