#!/usr/bin/env bash
# Soak test (issue #9; not run in CI): SOAK_SECONDS (default 600) of mixed load against one
# credgate (release build) on the embedded store: proxied GETs, streamed SSE, token requests,
# failing tokens, admin writes. Concurrency and request rate are bounded. Every 5 s it records
# credgate's RSS and open file descriptors; at the end it prints a summary, and fails if any
# 5xx was answered, if credgate died, or if memory or descriptors kept growing.
#
#   scripts/soak.sh                 # ten minutes
#   SOAK_SECONDS=60 scripts/soak.sh # a short run
# Output: target/soak/samples.csv and target/soak/summary.txt.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
SOAK_SECONDS="${SOAK_SECONDS:-600}"
OUT="target/soak"
mkdir -p "$OUT"
if [[ ! -x .venv/bin/python ]]; then
  echo "error: .venv missing: run scripts/test.sh once first" >&2
  exit 1
fi
cargo build --release --quiet
export CREDGATE_BIN="$PWD/target/release/credgate"
exec timeout $((SOAK_SECONDS + 120)) .venv/bin/python - "$SOAK_SECONDS" "$OUT" <<'PY'
import collections, os, random, sys, threading, time
from pathlib import Path
sys.path.insert(0, "tests/e2e")
import httpx
from echo_upstream import EchoUpstream
from support import Client, Credgate, route, unique

seconds, out = int(sys.argv[1]), Path(sys.argv[2]).resolve()
echo = EchoUpstream()
work = out / "work"
import shutil; shutil.rmtree(work, ignore_errors=True)
gate = Credgate(work, [route("echo", "/echo", echo.url)], {"log": {"level": "info"}, "rate_limit.default": {"per_second": 100000, "burst": 100000}})
gate.extra_env["RUST_LOG"] = "info"
gate.start()
tenants = [unique("soak") for _ in range(20)]
for t in tenants:
    gate.put_bearer(t, "echo", f"soak-cred-{t}")
clients = [gate.create_client(tenant=t, integrations=["echo"]) for t in tenants]
counts: collections.Counter = collections.Counter()
lock = threading.Lock()
stop = time.monotonic() + seconds

def bump(kind: str, status: int | str) -> None:
    with lock:
        counts[(kind, status)] += 1

def worker(n: int) -> None:
    rng = random.Random(n)
    tok = {}
    with httpx.Client(timeout=15, trust_env=False) as c:
        while time.monotonic() < stop:
            cl = rng.choice(clients)
            roll = rng.random()
            kind = "token"
            try:
                if cl.client_id not in tok or roll < 0.05:
                    r = c.post(f"{gate.url}/oauth/token", data={"grant_type": "client_credentials"}, auth=(cl.client_id, cl.client_secret))
                    bump("token", r.status_code)
                    if r.status_code == 200:
                        tok[cl.client_id] = r.json()["access_token"]
                    continue
                h = {"Authorization": f"Bearer {tok[cl.client_id]}"}
                kind = ("proxy" if roll < 0.70 else "proxy-body" if roll < 0.78 else "sse" if roll < 0.83
                        else "bad-token" if roll < 0.90 else "bad-secret" if roll < 0.95 else "admin-write")
                if roll < 0.70:
                    r = c.get(f"{gate.url}/echo/soak/{n}", headers=h); bump("proxy", r.status_code)
                elif roll < 0.78:
                    r = c.post(f"{gate.url}/echo/mcp", headers=h, content=os.urandom(rng.randint(0, 65536))); bump("proxy-body", r.status_code)
                elif roll < 0.83:
                    with c.stream("GET", f"{gate.url}/echo/sse?n=5&delay=0.05", headers=h) as r:
                        for _ in r.iter_lines(): pass
                    bump("sse", r.status_code)
                elif roll < 0.90:
                    r = c.get(f"{gate.url}/echo/x", headers={"Authorization": "Bearer " + tok[cl.client_id][:-4] + "AAAA"}); bump("bad-token", r.status_code)
                elif roll < 0.95:
                    r = c.post(f"{gate.url}/oauth/token", data={"grant_type": "client_credentials"}, auth=(cl.client_id, "wrong")); bump("bad-secret", r.status_code)
                else:
                    t = rng.choice(tenants)
                    r = c.put(f"{gate.url}/api/admin/credentials/{t}/echo", headers={"Authorization": f"Bearer {gate.admin_token}"},
                              json={"access_token": f"soak-cred-{t}", "token_type": "Bearer", "expires_in": 3600}); bump("admin-write", r.status_code)
            except httpx.HTTPError as e:
                bump(f"transport-error:{kind}", f"{type(e).__name__}: {str(e)[:80]}")
            time.sleep(0.002)

def sample() -> tuple[int, int]:
    pid = gate.proc.pid
    rss = int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:")).split()[1])
    return rss, len(os.listdir(f"/proc/{pid}/fd"))

threads = [threading.Thread(target=worker, args=(n,), daemon=True) for n in range(8)]
t0 = time.monotonic()
for t in threads: t.start()
samples = []
with (out / "samples.csv").open("w") as f:
    f.write("seconds,rss_kib,open_fds,requests\n")
    while time.monotonic() < stop:
        time.sleep(5)
        if gate.proc.poll() is not None:
            break
        rss, fds = sample()
        total = sum(counts.values())
        samples.append((time.monotonic() - t0, rss, fds, total))
        f.write(f"{samples[-1][0]:.0f},{rss},{fds},{total}\n"); f.flush()
for t in threads: t.join(timeout=30)
alive = gate.proc.poll() is None
rss_end, fds_end = sample() if alive else (0, 0)
# Idle a few seconds, then sample again: what the load held should be released.
time.sleep(5)
rss_idle, fds_idle = sample() if alive else (0, 0)
gate.stop(); echo.close()
logs = gate.logs()
total = sum(counts.values())
fivexx = {k: v for k, v in counts.items() if isinstance(k[1], int) and k[1] >= 500}
third = max(1, len(samples) // 3)
early_rss = max(s[1] for s in samples[:third]); late_rss = max(s[1] for s in samples[-third:])
summary = [
    f"duration_s={seconds} requests={total} rate_per_s={total / max(1, seconds):.0f}",
    f"by_kind_status={dict(sorted((f'{k[0]}:{k[1]}', v) for k, v in counts.items()))}",
    f"rss_kib first={samples[0][1]} max={max(s[1] for s in samples)} end={rss_end} idle={rss_idle} early_max={early_rss} late_max={late_rss}",
    f"open_fds first={samples[0][2]} max={max(s[2] for s in samples)} end={fds_end} idle={fds_idle}",
    f"alive={alive} panics={logs.count('panicked')} responses_5xx={sum(fivexx.values())}",
]
(out / "summary.txt").write_text("\n".join(summary) + "\n")
print("\n".join(summary))
ok = alive and not fivexx and "panicked" not in logs and late_rss <= early_rss * 1.5 + 20480 and fds_idle <= samples[0][2] + 16
sys.exit(0 if ok else 1)
PY
