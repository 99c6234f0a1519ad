#!/usr/bin/env python3
"""Cold path against a Vault-backed credgate (started by bench/run.sh).

1. Burst: the tenant's credential is dropped from the cache (re-PUT through
   the admin API invalidates it), then N concurrent first requests go out at
   once; the Vault reads they cost are counted from credgate's own
   `credgate_store_requests_total{backend="vault",op="read"}`.
2. Latency of an uncached request (re-PUT, then one request), repeated,
   against the latency of a cached one.

Needs httpx (the test venv has it). Writes JSON lines to --out.
"""

import argparse
import asyncio
import json
import os
import re
import statistics
import time

import httpx

BODY = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
CREDENTIAL = {"access_token": "upstream-token", "token_type": "Bearer"}


def store_ops(ops: str, op: str) -> int:
    text = httpx.get(f"{ops}/metrics", trust_env=False).text
    total = 0
    for line in text.splitlines():
        if line.startswith("credgate_store_requests_total{") and 'backend="vault"' in line and f'op="{op}"' in line:
            total += int(float(line.rsplit(" ", 1)[1]))
    return total


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--proxy", required=True)
    ap.add_argument("--ops", required=True)
    ap.add_argument("--admin-token", required=True)
    ap.add_argument("--tenant", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--concurrent", type=int, default=64)
    ap.add_argument("--samples", type=int, default=30)
    a = ap.parse_args()
    token = os.environ["BENCH_TOKEN"]
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
    }
    admin = {"Authorization": f"Bearer {a.admin_token}"}
    url = f"{a.proxy}/github/mcp"
    put_url = f"{a.proxy}/api/admin/credentials/{a.tenant}/github"
    rows = []
    limits = httpx.Limits(max_connections=a.concurrent, max_keepalive_connections=a.concurrent)
    async with httpx.AsyncClient(limits=limits, trust_env=False, timeout=30) as c:
        # Open the connections first so the burst measures requests, not connects.
        await asyncio.gather(*[c.get(f"{a.proxy}/.well-known/jwks.json") for _ in range(a.concurrent)])
        r = await c.put(put_url, json=CREDENTIAL, headers=admin)
        r.raise_for_status()
        reads0, decrypts0 = store_ops(a.ops, "read"), store_ops(a.ops, "decrypt")
        results = await asyncio.gather(*[c.post(url, json=BODY, headers=headers) for _ in range(a.concurrent)])
        reads, decrypts = store_ops(a.ops, "read") - reads0, store_ops(a.ops, "decrypt") - decrypts0
        ok = sum(r.status_code == 200 for r in results)
        rows.append({"kind": "burst", "concurrent": a.concurrent, "ok": ok, "reads": reads, "decrypts": decrypts})
        print(f"   burst: {ok}/{a.concurrent} ok, vault reads {reads}, decrypts {decrypts}")

        async def timed() -> float:
            t = time.perf_counter()
            r = await c.post(url, json=BODY, headers=headers)
            r.raise_for_status()
            return (time.perf_counter() - t) * 1000

        uncached, cached = [], []
        for _ in range(a.samples):
            (await c.put(put_url, json=CREDENTIAL, headers=admin)).raise_for_status()
            uncached.append(await timed())
            cached.append(await timed())
        for label, xs in (("uncached request (1 Vault read + 1 Transit decrypt)", uncached),
                          ("cached request, same client, for comparison", cached)):
            row = {"kind": "latency", "label": label, "n": len(xs), "median_ms": statistics.median(xs),
                   "p90_ms": percentile(xs, 0.9), "min_ms": min(xs)}
            rows.append(row)
            print(f"   {label}: median {row['median_ms']:.2f} ms")
    with open(a.out, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
