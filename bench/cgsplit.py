"""Splits a callgrind profile's self cost (Ir) by source file and by
function, for `bench/NOTES.md` (credgate vs the floor, issue 18).

callgrind_annotate 3.19 folds call costs into callers of inlined code and
misreports self cost on Rust LTO builds, so this reads the file itself:
a cost line counts to the source file it is attributed to (`fl=`/`fi=`/`fe=`,
the line tables, so inlined code lands in its own crate) and to the
compiled function (`fn=`); the cost line after `calls=` is a callee's
inclusive cost and is counted only as the caller's inclusive cost.

Usage: cgsplit.py <callgrind.out> [requests] [--by file|fn|group|incl] [--top N] [--callers NAME]
"""

import argparse
import re
from collections import defaultdict

NAMED = re.compile(r"^(fl|fi|fe|fn|cfl|cfi|cfn|ob|cob)=\((\d+)\)(?: (.*))?$")

# Source file → group (first match wins). Rust std/core/alloc paths are
# /rustc/<hash>/library/..., crates are .../registry/src/<index>/<crate>-<ver>/...
GROUPS = [
    (r"/hyper-[\d.]+/src/proto/h1/role\.rs", "hyper h1 parse/encode"),
    (r"/hyper-[\d.]+/src/client/", "hyper client"),
    (r"/hyper-[\d.]+/src/server/", "hyper server"),
    (r"/hyper-[\d.]+/", "hyper (conn, dispatch, io, body)"),
    (r"/hyper-util-[\d.]+/src/client/legacy/", "hyper-util client pool (legacy)"),
    (r"/hyper-util-[\d.]+/src/server/", "hyper-util server (auto, graceful)"),
    (r"/hyper-util-[\d.]+/", "hyper-util (rt, other)"),
    (r"/httparse-", "httparse"),
    (r"/http-[\d.]+/src/header/", "http HeaderMap/HeaderName"),
    (r"/http-[\d.]+/", "http (uri, request, response)"),
    (r"/http-body-util-|/http-body-", "http-body(-util)"),
    (r"/tokio-[\d.]+/src/runtime/io/|/tokio-[\d.]+/src/net/|/mio-", "tokio io driver / net"),
    (r"/tokio-[\d.]+/src/runtime/time/|/tokio-[\d.]+/src/time/", "tokio timers"),
    (r"/tokio-[\d.]+/src/sync/", "tokio sync"),
    (r"/tokio-[\d.]+/", "tokio scheduler/tasks/wakers"),
    (r"/tracing-subscriber-", "tracing-subscriber"),
    (r"/tracing-core-|/tracing-[\d.]+/", "tracing"),
    (r"/opentelemetry", "opentelemetry"),
    (r"/mimalloc|/libmimalloc|mimalloc", "allocator (mimalloc)"),
    (r"malloc/|libc_malloc|/alloc/src/alloc\.rs|/alloc/src/raw_vec", "allocator (glibc malloc / alloc shims)"),
    (r"memmove|memcpy|memset|memcmp|strlen|/string/", "libc mem*/str*"),
    (r"/bytes-", "bytes"),
    (r"/arc-swap-", "arc-swap"),
    (r"/dashmap-|/hashbrown-|/std/src/collections/hash|/moka-|/quick_cache|/papaya", "hash maps"),
    (r"/sha2-|/ring-|/subtle-|/hmac-|/blake|/digest-", "crypto hash (token hash)"),
    (r"/metrics|/prometheus", "metrics crate"),
    (r"/governor-", "rate limiter crate"),
    (r"/uuid-|/ulid-|/rand", "ids / rand"),
    (r"/serde_json-|/serde-", "serde"),
    (r"/work/wt/[^/]+/src/oauth/", "credgate::oauth"),
    (r"/work/wt/[^/]+/src/credentials/", "credgate::credentials"),
    (r"/work/wt/[^/]+/src/upstream/", "credgate::upstream"),
    (r"/work/wt/[^/]+/src/ratelimit", "credgate::ratelimit"),
    (r"/work/wt/[^/]+/src/metrics\.rs", "credgate::metrics"),
    (r"/work/wt/[^/]+/src/telemetry\.rs", "credgate::telemetry"),
    (r"/work/wt/[^/]+/src/ids\.rs", "credgate::ids (request id)"),
    (r"/work/wt/[^/]+/src/audit\.rs", "credgate::audit"),
    (r"/work/wt/[^/]+/src/mcp/", "credgate::mcp"),
    (r"/work/wt/[^/]+/src/proxy\.rs", "credgate::proxy"),
    (r"/work/wt/[^/]+/src/server\.rs", "credgate::server"),
    (r"/work/wt/[^/]+/src/http\.rs", "credgate::http"),
    (r"/work/wt/[^/]+/src/", "credgate (other modules)"),
    (r"/work/wt/[^/]+/bench/floor/", "floor main.rs"),
    (r"/library/core/", "rust core (inlined)"),
    (r"/library/alloc/", "rust alloc (Vec/String/Arc, inlined)"),
    (r"/library/std/", "rust std (inlined)"),
    (r"/sysdeps/|/nptl/|/misc/|libc\.so", "glibc (other)"),
]


def group_of(path: str) -> str:
    for pat, name in GROUPS:
        if re.search(pat, path):
            return name
    return "other: " + path.rsplit("/", 2)[-2] if "/" in path else "other: " + path


CRATE = re.compile(r"([a-z_][a-z0-9_]*)::")


def crate_of(fn: str) -> str:
    """The crate of a demangled Rust function name (`<hyper::x as y>::z` → hyper)."""
    m = CRATE.search(fn)
    return m.group(1) if m else fn.split("(")[0][:40]


def parse(path: str):
    names = {k: {} for k in ("fl", "fn", "ob")}
    kind_map = {"fl": "fl", "fi": "fl", "fe": "fl", "cfl": "fl", "cfi": "fl", "fn": "fn", "cfn": "fn", "ob": "ob", "cob": "ob"}
    by_file, by_fn, by_file_fn = defaultdict(int), defaultdict(int), defaultdict(int)
    by_group = defaultdict(int)
    incl_fn = defaultdict(int)
    callers = defaultdict(lambda: defaultdict(int))  # callee → caller → inclusive cost
    fl = cur_file = cur_fn = callee = ""
    after_call = False
    total = 0
    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not line or line[0] == "#":
                continue
            m = NAMED.match(line)
            if m:
                key, num, name = m.groups()
                table = names[kind_map[key]]
                if name is not None:
                    table[num] = name
                val = table.get(num, "?")
                if key == "fl":
                    fl = cur_file = val
                elif key in ("fi", "fe"):
                    cur_file = val
                elif key == "fn":
                    cur_fn = val
                    cur_file = fl
                elif key == "cfn":
                    callee = val
                continue
            if line.startswith("calls="):
                after_call = True
                continue
            c0 = line[0]
            if c0.isdigit() or c0 in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if after_call:
                    incl_fn[cur_fn] += cost
                    callers[callee][cur_fn] += cost
                    after_call = False
                    continue
                by_file[cur_file] += cost
                by_fn[cur_fn] += cost
                by_file_fn[(cur_file, cur_fn)] += cost
                g = group_of(cur_file)
                if g.startswith("rust "):  # std/core code inlined: the function's crate
                    g = f"{crate_of(cur_fn)}: {g}"
                by_group[g] += cost
                incl_fn[cur_fn] += cost
                total += cost
            # other keys (summary, totals, jump=, …) are ignored
    global CALLERS
    CALLERS = callers
    return total, by_file, by_fn, incl_fn, by_group


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("requests", nargs="?", type=int, default=1)
    ap.add_argument("--by", choices=["file", "fn", "group", "incl"], default="group")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--callers", help="who calls functions whose name contains this (inclusive)")
    a = ap.parse_args()
    total, by_file, by_fn, incl, by_group = parse(a.file)
    n = a.requests
    if a.callers:
        for callee, by in CALLERS.items():
            if a.callers in callee:
                print(f"== {callee}")
                for k, v in sorted(by.items(), key=lambda kv: -kv[1])[: a.top]:
                    print(f"{v / n:.0f}\t{k}")
        return
    if a.by == "group":
        agg = by_group
    else:
        agg = {"file": by_file, "fn": by_fn, "incl": incl}[a.by]
    print(f"TOTAL\t{total / n:.0f}")
    for k, v in sorted(agg.items(), key=lambda kv: -kv[1])[: a.top]:
        print(f"{v / n:.0f}\t{100 * v / total:.1f}%\t{k}")


if __name__ == "__main__":
    main()
