"""Sends N proxied MCP requests over a few keep-alive connections, one at a
time, for `bench/run.sh instr` (instructions per request under callgrind).

Usage: instr.py <port> <path> <N> [connections]   (BENCH_TOKEN in the environment)
"""

import http.client
import os
import sys

BODY = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}'


def main() -> None:
    port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    conns = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(int(sys.argv[4]) if len(sys.argv) > 4 else 4)]
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
        "Authorization": "Bearer " + os.environ.get("BENCH_TOKEN", "none"),
    }
    for i in range(n):
        c = conns[i % len(conns)]
        c.request("POST", path, body=BODY, headers=headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            sys.exit(f"request {i}: status {r.status}")


if __name__ == "__main__":
    main()
