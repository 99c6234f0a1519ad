#!/usr/bin/env python3
"""Turns bench/run.sh's raw output (JSON lines) into bench/RESULTS.md.

Usage: report.py <raw dir> <RESULTS.md>. Medians over repetitions, with the
spread (min–max) beside them. Sections whose raw file is missing are left
out. Hand-written notes go in bench/NOTES.md and are appended verbatim.
"""

import json
import re
import statistics
import sys
from pathlib import Path


def lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def spread(xs: list[float], fmt: str = "{:.0f}") -> str:
    if len(xs) < 2:
        return ""
    return f" ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def judge(xs: list[float], ok) -> str:
    """met / missed when every repetition agrees, else inconclusive."""
    if all(ok(x) for x in xs):
        return "met"
    if not any(ok(x) for x in xs):
        return "missed"
    return f"inconclusive (median {'met' if ok(med(xs)) else 'missed'})"


def rps(r: dict) -> float:
    return r["wrk"]["requests"] / (r["wrk"]["duration_us"] / 1e6)


def steady(rows: list[dict], out: list[str]) -> None:
    if not rows:
        return
    reps = max(r["rep"] for r in rows)
    out.append("## Steady state\n")
    out.append(
        f"wrk, 1 thread, {reps} interleaved repetitions per cell (order rotated each "
        "repetition); medians, with min–max over repetitions in brackets. Latencies in µs. "
        "`direct` = wrk → upstream; `nginx` = wrk → nginx (1 worker) → upstream; "
        "`credgate` = wrk → credgate (token validation from cache, tenant, scope, "
        "rate-limit check, cached credential, injection, metrics) → upstream. nginx and "
        "credgate are pinned to the same single core; wrk and the upstream share the other.\n"
    )
    out.append("| variant | conns | target | req/s | p50 | p99 | non-2xx/errors |")
    out.append("|---|---:|---|---:|---:|---:|---:|")
    cells: dict = {}
    for r in rows:
        cells.setdefault((r["variant"], r["conns"], r["target"]), []).append(r)
    for variant in ("json", "sse"):
        for conns in sorted({r["conns"] for r in rows}):
            for target in ("direct", "nginx", "credgate"):
                rs = cells.get((variant, conns, target), [])
                if not rs:
                    continue
                q = [rps(r) for r in rs]
                p50 = [r["wrk"]["p50_us"] for r in rs]
                p99 = [r["wrk"]["p99_us"] for r in rs]
                errs = sum(r["wrk"]["status_errors"] + r["wrk"]["socket_errors"] for r in rs)
                out.append(
                    f"| {variant} | {conns} | {target} | {med(q):.0f}{spread(q)} | "
                    f"{med(p50):.0f}{spread(p50)} | {med(p99):.0f}{spread(p99)} | {errs} |"
                )
    out.append("\n### credgate against the targets\n")
    out.append(
        "Ratio = median over repetitions of (credgate req/s ÷ nginx req/s in the same "
        "repetition); added latency = median over repetitions of (credgate − direct) in the "
        "same repetition.\n"
    )
    out.append("| variant | conns | credgate/nginx req/s | added p50 µs | added p99 µs | targets (≥ 1.0×, ≤ 500 µs p99 at 32) |")
    out.append("|---|---:|---:|---:|---:|---|")
    for variant in ("json", "sse"):
        for conns in sorted({r["conns"] for r in rows}):
            ratio, a50, a99 = [], [], []
            for rep in range(1, reps + 1):
                get = lambda t: next(  # noqa: E731
                    (r for r in cells.get((variant, conns, t), []) if r["rep"] == rep), None
                )
                c, n, d = get("credgate"), get("nginx"), get("direct")
                if c and n:
                    ratio.append(rps(c) / rps(n))
                if c and d:
                    a50.append(c["wrk"]["p50_us"] - d["wrk"]["p50_us"])
                    a99.append(c["wrk"]["p99_us"] - d["wrk"]["p99_us"])
            if not ratio:
                continue
            verdict = "req/s " + judge(ratio, lambda x: x >= 1.0)
            if conns == 32:
                verdict += ", p99 " + judge(a99, lambda x: x <= 500)
            out.append(
                f"| {variant} | {conns} | {med(ratio):.2f}{spread(ratio, '{:.2f}')} | "
                f"{med(a50):.0f}{spread(a50)} | {med(a99):.0f}{spread(a99)} | {verdict} |"
            )
    out.append("")


def paced(rows: list[dict], out: list[str]) -> None:
    if not rows:
        return
    reps = max(r["rep"] for r in rows)
    out.append("## Latency below saturation (paced)\n")
    out.append(
        "At saturation (above) latency is queueing: by Little's law p50 ≈ connections ÷ "
        "throughput, so any proxy slower than the upstream \"adds\" milliseconds. Here each of "
        "the 32 connections waits 10 ms between requests (`bench/paced.lua`, ≈ 3k req/s offered, "
        f"well under every target's capacity); {reps} interleaved repetitions, medians.\n"
    )
    out.append("| target | req/s | p50 µs | p99 µs | added p50 µs | added p99 µs |")
    out.append("|---|---:|---:|---:|---:|---:|")
    by = lambda t, rep: next((r for r in rows if r["target"] == t and r["rep"] == rep), None)  # noqa: E731
    for t in ("direct", "nginx", "credgate"):
        rs = [r for r in rows if r["target"] == t]
        if not rs:
            continue
        q = [rps(r) for r in rs]
        p50 = [r["wrk"]["p50_us"] for r in rs]
        p99 = [r["wrk"]["p99_us"] for r in rs]
        a50, a99 = [], []
        for rep in range(1, reps + 1):
            x, d = by(t, rep), by("direct", rep)
            if x and d:
                a50.append(x["wrk"]["p50_us"] - d["wrk"]["p50_us"])
                a99.append(x["wrk"]["p99_us"] - d["wrk"]["p99_us"])
        out.append(
            f"| {t} | {med(q):.0f} | {med(p50):.0f}{spread(p50)} | {med(p99):.0f}{spread(p99)} | "
            f"{med(a50):.0f}{spread(a50)} | {med(a99):.0f}{spread(a99)} |"
        )
    out.append("")


def instr(rows: list[dict], out: list[str]) -> None:
    if not rows:
        return
    out.append("## Instructions per request (callgrind)\n")
    out.append(
        "User-space instructions each proxy executes per proxied request (`bench/run.sh instr`: "
        "valgrind's callgrind, 4 keep-alive connections, one request at a time, counted after a "
        "warm-up). Exact and repeatable whatever else the machine does; kernel time (the TCP "
        "loopback, most of the CPU a request costs) is not in it. `credgate@base` is another "
        "build, given as `BASE_BIN`, for a before/after. `floor` is the leanest hyper 1.x proxy "
        "(`bench/floor`: one upstream connection per downstream connection, Host and "
        "Authorization set, nothing else); every figure is also given as a ratio to it.\n"
    )
    floor = next((r["instructions"] / r["requests"] for r in rows if r["target"] == "floor"), None)
    out.append("| target | requests | instructions per request | × floor |")
    out.append("|---|---:|---:|---:|")
    for r in rows:
        per = r["instructions"] / r["requests"]
        ratio = f"{per / floor:.2f}" if floor else "floor not run"
        out.append(f"| {r['target']} | {r['requests']} | {per:,.0f} | {ratio} |")
    out.append("")


def token(rows: list[dict], out: list[str]) -> None:
    if not rows:
        return
    q = [rps(r) for r in rows]
    p50 = [r["wrk"]["p50_us"] for r in rows]
    p99 = [r["wrk"]["p99_us"] for r in rows]
    errs = sum(r["wrk"]["status_errors"] + r["wrk"]["socket_errors"] for r in rows)
    out.append("## Token endpoint\n")
    out.append(
        "`POST /oauth/token` (client_credentials, HTTP Basic, EdDSA-signed JWT), wrk 32 "
        f"connections, credgate on one core, {len(rows)} repetitions.\n"
    )
    out.append("| req/s | p50 µs | p99 µs | non-2xx/errors |")
    out.append("|---:|---:|---:|---:|")
    out.append(f"| {med(q):.0f}{spread(q)} | {med(p50):.0f}{spread(p50)} | {med(p99):.0f}{spread(p99)} | {errs} |\n")


def cold(rows: list[dict], out: list[str]) -> None:
    if not rows:
        return
    out.append("## Cold path (Vault store, real OpenBao dev server)\n")
    for r in rows:
        if r["kind"] == "burst":
            out.append(
                f"- {r['concurrent']} concurrent first requests for one tenant (credential not "
                f"cached): {r['ok']} × 200; Vault store operations during the burst: "
                f"**{r['reads']} read**, {r['decrypts']} decrypt (from "
                "`credgate_store_requests_total{backend=\"vault\"}`)."
            )
        elif r["kind"] == "latency":
            out.append(
                f"- {r['label']}: median {r['median_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, "
                f"min {r['min_ms']:.2f} ms over {r['n']} sequential requests."
            )
    out.append("")


def criterion(text: str, out: list[str]) -> None:
    found = re.findall(r"^(\S+)\s*\n?\s+time:\s+\[([^\]]+)\]", text, re.M)
    if not found:
        return
    out.append("## Micro-benchmarks (criterion, `cargo bench --bench hotpath`)\n")
    out.append("| benchmark | time (low / estimate / high) |")
    out.append("|---|---|")
    for name, t in found:
        parts = t.split()
        cells = [f"{parts[i]} {parts[i + 1]}" for i in range(0, 6, 2)]
        out.append(f"| `{name}` | {' / '.join(cells)} |")
    out.append("")


def scale(rows: list[dict], out: list[str]) -> None:
    if not rows:
        return
    out.append("## Scale\n")
    mem = [r for r in rows if r["kind"] == "memory"]
    if mem:
        out.append(
            "In-process (`cargo bench --bench scale`): N tenants, each with its own client, "
            "stored credential and access token; one authenticated request's worth of state "
            "per tenant (validation cache entry, rate-limit bucket, credential cache entry with "
            "its header values) plus the embedded store holding N clients and N credentials. "
            "Resident set (VmRSS) of the process after the caches are filled.\n"
        )
        out.append("| tenants | RSS MiB | over baseline MiB | per tenant KiB | target (100k ≤ 200 MiB) |")
        out.append("|---:|---:|---:|---:|---|")
        for r in mem:
            verdict = ("met" if r["rss_mib"] <= 200 else "missed") if r["tenants"] == 100_000 else ""
            out.append(
                f"| {r['tenants']} | {r['rss_mib']:.1f} | {r['delta_mib']:.1f} | "
                f"{r['delta_mib'] * 1024 / r['tenants']:.2f} | {verdict} |"
            )
        out.append("")
    phases = [r for r in rows if r["kind"] == "phase"]
    if phases:
        out.append(
            f"Where it goes (`--phases`: each step done for {phases[0]['tenants']} tenants before the "
            "next; RSS growth per tenant, allocator noise ± a few hundred bytes):\n"
        )
        out.append("| step | bytes per tenant |")
        out.append("|---|---:|")
        for r in phases:
            out.append(f"| {r['phase']} | {r['per_tenant_bytes']:.0f} |")
        out.append("")
    for r in rows:
        if r["kind"] == "tick":
            out.append(
                f"- Scheduler ({r['backend']} store, {r['credentials']} stored credentials): "
                f"rescan (list + read every record) {r['scan_ms']:.0f} ms; "
                f"{r['indexed']} scheduled; one tick with nothing due {r['tick_us']:.1f} µs (median of 21)"
                + (f"; seeding 100k records took {r['seed_s']:.1f} s." if r['seed_s'] else ".")
            )
    out.append("")


def main() -> None:
    raw, dest = Path(sys.argv[1]), Path(sys.argv[2])
    out = ["# credgate benchmark results\n"]
    out.append(
        "Produced by `bench/run.sh` (see the script's header for knobs); regenerate with the "
        "same command. Raw JSON lines stay in `target/bench-out/`.\n"
    )
    machine = raw / "machine.txt"
    if machine.exists():
        out.append("## Machine\n")
        out.append("```\n" + machine.read_text().strip() + "\n```\n")
        out.append(
            "The load average above shows whether other work (builds, test suites) ran on the "
            "machine at the same time. Repetitions are interleaved so that noise hits every "
            "target alike; read differences smaller than the spread as ties.\n"
        )
    steady(lines(raw / "steady.jsonl"), out)
    paced(lines(raw / "paced.jsonl"), out)
    instr(lines(raw / "instr.jsonl"), out)
    token(lines(raw / "token.jsonl"), out)
    cold(lines(raw / "cold.jsonl"), out)
    crit = raw / "criterion.txt"
    if crit.exists():
        criterion(crit.read_text(), out)
    scale(lines(raw / "scale.jsonl") + lines(raw / "sched.jsonl"), out)
    notes = Path(__file__).with_name("NOTES.md")
    if notes.exists():
        out.append(notes.read_text().strip() + "\n")
    dest.write_text("\n".join(out))


if __name__ == "__main__":
    main()
