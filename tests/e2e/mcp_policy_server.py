"""The real MCP server of mcp_server.py with the tools the policy tests need, in either
answer mode.

Tools, besides ``whoami`` and ``countdown``: ``search_docs(query)``, ``search_code(query)``,
``delete_item(item)`` and ``transfer(amount, to)``. Every tool call the server runs is
appended as one JSON line to ``--record`` so a test can prove a refused call never ran.

Run: ``python mcp_policy_server.py --port P --tokens t1,t2 --record FILE [--json-response]
[--stateless]``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from mcp_server import build_server


def add_tools(mcp: MCPServer, record: Path) -> None:
    def log(tool: str, **args: object) -> None:
        with record.open("a") as f:
            f.write(json.dumps({"tool": tool, "args": args}) + "\n")

    @mcp.tool()
    async def search_docs(query: str) -> dict[str, str]:
        """Search the documentation."""
        log("search_docs", query=query)
        return {"found": f"docs about {query}"}

    @mcp.tool()
    async def search_code(query: str) -> dict[str, str]:
        """Search the code."""
        log("search_code", query=query)
        return {"found": f"code about {query}"}

    @mcp.tool()
    async def delete_item(item: str) -> dict[str, str]:
        """Delete an item (needs the mcp:write scope behind credgate)."""
        log("delete_item", item=item)
        return {"deleted": item}

    @mcp.tool()
    async def transfer(amount: int, to: str) -> dict[str, object]:
        """Move money (credgate refuses large amounts by a CEL rule)."""
        log("transfer", amount=amount, to=to)
        return {"sent": amount, "to": to}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tokens", default=os.environ.get("MCP_ACCEPTED_TOKENS", ""))
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--json-response", action="store_true")
    parser.add_argument("--stateless", action="store_true")
    args = parser.parse_args()
    tokens = {t for t in args.tokens.split(",") if t}
    if not tokens:
        parser.error("no accepted tokens given (--tokens or MCP_ACCEPTED_TOKENS)")
    server = build_server(tokens, args.port, "http://127.0.0.1:1")
    add_tools(server, args.record)
    server.run(
        "streamable-http",
        host="127.0.0.1",
        port=args.port,
        stateless_http=args.stateless,
        json_response=args.json_response,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )


if __name__ == "__main__":
    main()
