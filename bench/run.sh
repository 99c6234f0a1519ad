#!/usr/bin/env bash
# The whole benchmark, one command:  bench/run.sh  [steady|paced|instr|token|cold|micro|scale|sched ...]
#
# Builds release, starts the bench upstream, nginx and credgate, seeds a
# client and a credential through the admin API, runs wrk with interleaved
# repetitions, the cold path against a real OpenBao, the criterion
# micro-benchmarks and the scale bench, then writes bench/RESULTS.md.
#
# Pinning (2-core machine): nginx and credgate get the same single core
# (PROXY_CPU); wrk and the upstream share the other (LOAD_CPU).
# Knobs (env): REPS=3 DURATION=10s CONNS="32 128" PROXY_CPU=0 LOAD_CPU=1 NO_REPORT=1.
# Everything listens on 127.0.0.1 only; every load run is bounded by DURATION.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

REPS="${REPS:-3}"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-32 128}"
PROXY_CPU="${PROXY_CPU:-0}"
LOAD_CPU="${LOAD_CPU:-1}"
SECTIONS="${*:-steady paced instr token cold micro scale sched}"
OUT="${OUT:-$ROOT/target/bench-out}"
WORK="$(mktemp -d /tmp/credgate-bench.XXXXXX)"
UPSTREAM_PORT=18081 NGINX_PORT=18082 CREDGATE_PORT=18083 OPS_PORT=18084
ADMIN_TOKEN="bench-admin-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d " \n")"  # >= 32 characters
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || PY=python3
PIDS=()
STORE=

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

need() { command -v "$1" >/dev/null || { echo "missing $1: apt-get install -y $2" >&2; exit 1; }; }
need wrk wrk
need nginx nginx
need taskset util-linux
need curl curl

render() { # template → file, substituting @VARS@
    sed -e "s|@WORK@|$WORK|g" -e "s|@UPSTREAM_PORT@|$UPSTREAM_PORT|g" \
        -e "s|@NGINX_PORT@|$NGINX_PORT|g" -e "s|@CREDGATE_PORT@|$CREDGATE_PORT|g" \
        -e "s|@OPS_PORT@|$OPS_PORT|g" -e "s|@STORE@|$STORE|g" "$1" >"$2"
}

wait_http() { # url [tries of 0.1 s]
    for _ in $(seq 1 "${2:-100}"); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "not answering: $1" >&2
    exit 1
}

echo "==> build (release)"
cargo build --release --quiet
CARGO_TARGET_DIR="$ROOT/target/bench" cargo build --release --quiet \
    --manifest-path bench/upstream/Cargo.toml
CARGO_TARGET_DIR="$ROOT/target/bench" cargo build --release --quiet \
    --manifest-path bench/floor/Cargo.toml
mkdir -p "$OUT"
"$ROOT/bench/machine.sh" >"$OUT/machine.txt"

UPSTREAM_UP=
start_upstream() {
    [[ -z "$UPSTREAM_UP" ]] || return 0
    UPSTREAM_UP=1
    taskset -c "$LOAD_CPU" "$ROOT/target/bench/release/credgate-bench-upstream" \
        "127.0.0.1:$UPSTREAM_PORT" 2>"$WORK/upstream.log" &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$UPSTREAM_PORT/mcp"
}

NGINX_UP=
start_nginx() {
    [[ -z "$NGINX_UP" ]] || return 0
    NGINX_UP=1
    mkdir -p "$WORK"/nginx-{body,proxy,fastcgi,uwsgi,scgi}
    render bench/nginx.conf.in "$WORK/nginx.conf"
    taskset -c "$PROXY_CPU" nginx -c "$WORK/nginx.conf" -p "$WORK" -e "$WORK/nginx-error.log" &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$NGINX_PORT/github/mcp"
}

# start_credgate <store section> → credgate on PROXY_CPU; env passed through.
# LAUNCH (default: pinned with taskset) and CREDGATE_BIN override how and what runs.
start_credgate() {
    STORE="$1"
    render bench/credgate.toml.in "$WORK/credgate.toml"
    # shellcheck disable=SC2086 # LAUNCH is a command line
    CREDGATE_ADMIN_TOKEN="$ADMIN_TOKEN" CREDGATE_MASTER_KEY="$(head -c32 /dev/urandom | base64)" \
        ${LAUNCH:-taskset -c $PROXY_CPU} "${CREDGATE_BIN:-$ROOT/target/release/credgate}" \
        serve --config "$WORK/credgate.toml" >"$WORK/credgate.log" 2>&1 &
    CREDGATE_PID=$!
    PIDS+=("$CREDGATE_PID")
    wait_http "http://127.0.0.1:$OPS_PORT/healthz" 600
}

stop_credgate() {
    kill "$CREDGATE_PID" 2>/dev/null || true
    wait "$CREDGATE_PID" 2>/dev/null || true
}

# seed <tenant> → exports BENCH_TOKEN and BENCH_BASIC for a client of <tenant>
seed() {
    local base="http://127.0.0.1:$CREDGATE_PORT" created id secret
    created=$(curl -sf -X POST "$base/api/admin/oauth/clients" -H "Authorization: Bearer $ADMIN_TOKEN" \
        -H 'Content-Type: application/json' \
        -d "{\"name\":\"bench\",\"tenant\":\"$1\",\"scopes\":[\"mcp\"],\"allowedIntegrations\":[\"github\"]}")
    id=$(jq -r .client.clientId <<<"$created")
    secret=$(jq -r .client.clientSecret <<<"$created")
    curl -sf -o /dev/null -X PUT "$base/api/admin/credentials/$1/github" -H "Authorization: Bearer $ADMIN_TOKEN" \
        -H 'Content-Type: application/json' -d '{"access_token":"upstream-token","token_type":"Bearer"}'
    export BENCH_BASIC
    BENCH_BASIC=$(printf '%s:%s' "$id" "$secret" | base64 -w0)
    export BENCH_TOKEN
    BENCH_TOKEN=$(curl -sf -u "$id:$secret" -d grant_type=client_credentials "$base/oauth/token" | jq -r .access_token)
    [[ -n "$BENCH_TOKEN" && "$BENCH_TOKEN" != null ]] || { echo "no token" >&2; exit 1; }
}

url_of() { # target variant
    local path=mcp
    [[ "$2" == sse ]] && path=mcp-sse
    case "$1" in
        direct) echo "http://127.0.0.1:$UPSTREAM_PORT/$path" ;;
        nginx) echo "http://127.0.0.1:$NGINX_PORT/github/$path" ;;
        credgate) echo "http://127.0.0.1:$CREDGATE_PORT/github/$path" ;;
    esac
}

# load <file.jsonl> <json fields> <wrk args…>: one bounded wrk run, one JSON line.
load() {
    local file="$1" fields="$2"; shift 2
    local line
    line=$(taskset -c "$LOAD_CPU" wrk -t1 "$@" | grep '^JSON ' | sed 's/^JSON //')
    echo "{$fields,\"load\":\"$(cut -d' ' -f1 /proc/loadavg)\",\"wrk\":$line}" >>"$file"
    echo "   $fields → $line"
}

steady() {
    echo "==> steady state: direct / nginx / credgate, REPS=$REPS DURATION=$DURATION"
    start_upstream
    start_nginx
    start_credgate "backend = \"embedded\"\npath = \"$WORK/store\"\n"
    seed bench
    rm -f "$OUT/steady.jsonl"
    local targets=(direct nginx credgate)
    for t in "${targets[@]}"; do # warm-up: pools, caches
        taskset -c "$LOAD_CPU" wrk -t1 -c128 -d2s -s bench/mcp.lua "$(url_of "$t" json)" >/dev/null
    done
    for rep in $(seq 1 "$REPS"); do
        for c in $CONNS; do
            for variant in json sse; do
                for i in 0 1 2; do # rotate the order each repetition
                    local t=${targets[$(((i + rep) % 3))]}
                    load "$OUT/steady.jsonl" "\"rep\":$rep,\"target\":\"$t\",\"variant\":\"$variant\",\"conns\":$c" \
                        -c"$c" -d"$DURATION" --latency -s bench/mcp.lua "$(url_of "$t" "$variant")"
                done
            done
        done
    done
    curl -s "http://127.0.0.1:$OPS_PORT/metrics" | grep -E '^credgate_(credential_cache|rate_limited|http_requests_total)' \
        >"$OUT/steady-metrics.txt" || true
    echo "{\"rss_kib\":$(awk '/VmRSS/{print $2}' /proc/"$CREDGATE_PID"/status)}" >"$OUT/steady-rss.jsonl"
    stop_credgate
}

paced() {
    echo "==> latency below saturation: 32 connections, 10 ms between requests"
    start_upstream
    start_nginx
    start_credgate "backend = \"embedded\"\npath = \"$WORK/store-paced\"\n"
    seed paced
    rm -f "$OUT/paced.jsonl"
    local targets=(direct nginx credgate)
    for rep in $(seq 1 "$REPS"); do
        for i in 0 1 2; do
            local t=${targets[$(((i + rep) % 3))]}
            load "$OUT/paced.jsonl" "\"rep\":$rep,\"target\":\"$t\",\"variant\":\"json\",\"conns\":32" \
                -c32 -d"$DURATION" --latency -s bench/paced.lua "$(url_of "$t" json)"
        done
    done
    stop_credgate
}

token() {
    echo "==> token endpoint"
    start_credgate "backend = \"embedded\"\npath = \"$WORK/store-token\"\n"
    seed tok
    rm -f "$OUT/token.jsonl"
    for rep in $(seq 1 "$REPS"); do
        load "$OUT/token.jsonl" "\"rep\":$rep,\"conns\":32" -c32 -d"$DURATION" --latency -s bench/token.lua \
            "http://127.0.0.1:$CREDGATE_PORT/oauth/token"
    done
    stop_credgate
}

cold() {
    echo "==> cold path against OpenBao"
    start_upstream
    local bao="$ROOT/.venv/bin/bao" bport=18200 btoken="bench-root-$RANDOM"
    [[ -x "$bao" ]] || { echo "skip cold: no .venv/bin/bao (scripts/test.sh installs it)" >&2; return 0; }
    env -u VAULT_ADDR -u VAULT_TOKEN "$bao" server -dev -dev-root-token-id="$btoken" \
        -dev-listen-address="127.0.0.1:$bport" >"$WORK/bao.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$bport/v1/sys/health" 600
    curl -sf -X POST -H "X-Vault-Token: $btoken" -d '{"type":"transit"}' \
        "http://127.0.0.1:$bport/v1/sys/mounts/transit" >/dev/null
    export VAULT_TOKEN="$btoken"
    start_credgate "backend = \"vault\"\nsync_interval_seconds = 5\n[store.vault]\naddress = \"http://127.0.0.1:$bport\"\n"
    unset VAULT_TOKEN
    seed cold
    rm -f "$OUT/cold.jsonl"
    "$PY" bench/cold.py --proxy "http://127.0.0.1:$CREDGATE_PORT" --ops "http://127.0.0.1:$OPS_PORT" \
        --admin-token "$ADMIN_TOKEN" --tenant cold --out "$OUT/cold.jsonl"
    stop_credgate
}

micro() {
    echo "==> criterion micro-benchmarks"
    cargo bench --quiet --bench hotpath -- --noplot 2>&1 | tee "$OUT/criterion.txt" | grep -E '^[a-z_/0-9 ]+ +time:|time:' || true
}

scale() {
    echo "==> scale: memory with N tenants (and where it goes)"
    cargo bench --quiet --bench scale 2>&1 | tee "$OUT/scale-run.txt" | grep '^JSON ' | sed 's/^JSON //' >"$OUT/scale.jsonl"
    cargo bench --quiet --bench scale -- --phases 2>&1 | grep '^JSON ' | sed 's/^JSON //' >>"$OUT/scale.jsonl"
}

sched() {
    echo "==> scheduler with 100k credentials in OpenBao"
    local bao="$ROOT/.venv/bin/bao" bport=18201 btoken="bench-root-$RANDOM"
    [[ -x "$bao" ]] || { echo "skip sched: no .venv/bin/bao" >&2; return 0; }
    env -u VAULT_ADDR -u VAULT_TOKEN "$bao" server -dev -dev-root-token-id="$btoken" \
        -dev-listen-address="127.0.0.1:$bport" >"$WORK/bao-scale.log" 2>&1 &
    local bpid=$!
    PIDS+=("$bpid")
    wait_http "http://127.0.0.1:$bport/v1/sys/health" 600
    curl -sf -X POST -H "X-Vault-Token: $btoken" -d '{"type":"transit"}' \
        "http://127.0.0.1:$bport/v1/sys/mounts/transit" >/dev/null
    VAULT_ADDR="http://127.0.0.1:$bport" VAULT_TOKEN="$btoken" \
        cargo bench --quiet --bench scale -- --vault 2>&1 | tee "$OUT/sched-run.txt" |
        grep '^JSON ' | sed 's/^JSON //' >"$OUT/sched.jsonl"
    kill "$bpid" 2>/dev/null || true
}

# User-space instructions per proxied request (callgrind): exact and repeatable
# whatever else the machine does, unlike req/s. credgate, the floor (the
# leanest hyper proxy, bench/floor) and nginx each serve INSTR_N requests
# (after a warm-up) to the bench upstream; BASE_BIN=<path> adds another
# credgate binary (e.g. built from an earlier commit) for a before/after.
# INSTR_TARGETS picks a subset. Kernel time is not counted. The callgrind
# files are kept in $OUT/instr-<target>/ for callgrind_annotate.
INSTR_N="${INSTR_N:-2000}"
INSTR_TARGETS="${INSTR_TARGETS:-credgate floor nginx}"
FLOOR_PORT=18086
instr_count() { # <target label> <callgrind out dir> <pid>
    callgrind_control -d "$3" >/dev/null
    sleep 1
    kill "$3" 2>/dev/null || true
    wait "$3" 2>/dev/null || true
    local ir
    ir=$(grep -h '^summary:' "$2"/cg.out.*.1 | awk '{print $2}')
    echo "{\"target\":\"$1\",\"requests\":$INSTR_N,\"instructions\":$ir}" >>"$OUT/instr.jsonl"
    echo "   $1: $((ir / INSTR_N)) instructions per request"
    rm -rf "$OUT/instr-$1"
    mkdir -p "$OUT/instr-$1"
    cp "$2"/cg.out.* "$OUT/instr-$1/"
}
instr_credgate() { # <label> <binary>
    local dir="$WORK/instr-$1"
    mkdir -p "$dir"
    LAUNCH="valgrind --tool=callgrind --callgrind-out-file=$dir/cg.out.%p" CREDGATE_BIN="$2" \
        start_credgate "backend = \"embedded\"\npath = \"$dir/store\"\n"
    seed instr
    "$PY" bench/instr.py "$CREDGATE_PORT" /github/mcp 300
    callgrind_control -z "$CREDGATE_PID" >/dev/null
    "$PY" bench/instr.py "$CREDGATE_PORT" /github/mcp "$INSTR_N"
    instr_count "$1" "$dir" "$CREDGATE_PID"
}
instr_floor() {
    local dir="$WORK/instr-floor" pid
    mkdir -p "$dir"
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out.%p" \
        "$ROOT/target/bench/release/credgate-bench-floor" "127.0.0.1:$FLOOR_PORT" \
        "127.0.0.1:$UPSTREAM_PORT" "Bearer upstream-token" >"$dir/log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_http "http://127.0.0.1:$FLOOR_PORT/github/mcp" 600
    "$PY" bench/instr.py "$FLOOR_PORT" /github/mcp 300
    callgrind_control -z "$pid" >/dev/null
    "$PY" bench/instr.py "$FLOOR_PORT" /github/mcp "$INSTR_N"
    instr_count floor "$dir" "$pid"
}
instr_nginx() {
    local dir="$WORK/instr-nginx" pid
    mkdir -p "$dir"/nginx-{body,proxy,fastcgi,uwsgi,scgi}
    # Its own port: the steady section's nginx may still be up.
    WORK="$dir" NGINX_PORT=18092 render bench/nginx.conf.in "$dir/nginx.conf"
    sed -i 's/^daemon off;/daemon off;\nmaster_process off;/' "$dir/nginx.conf"
    valgrind --tool=callgrind --callgrind-out-file="$dir/cg.out.%p" \
        nginx -c "$dir/nginx.conf" -p "$dir" -e "$dir/nginx-error.log" >"$dir/log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_http "http://127.0.0.1:18092/github/mcp" 600
    "$PY" bench/instr.py 18092 /github/mcp 300
    callgrind_control -z "$pid" >/dev/null
    "$PY" bench/instr.py 18092 /github/mcp "$INSTR_N"
    instr_count nginx "$dir" "$pid"
}
instr() {
    echo "==> instructions per request (callgrind), $INSTR_N requests each: $INSTR_TARGETS"
    need valgrind valgrind
    start_upstream
    rm -f "$OUT/instr.jsonl"
    for t in $INSTR_TARGETS; do
        case "$t" in
            credgate)
                instr_credgate credgate "$ROOT/target/release/credgate"
                [[ -z "${BASE_BIN:-}" ]] || instr_credgate credgate@base "$BASE_BIN"
                ;;
            floor) instr_floor ;;
            nginx) instr_nginx ;;
            *) echo "unknown instr target: $t" >&2; exit 1 ;;
        esac
    done
}

# Not in the default set: perf profile of credgate under the steady load.
profile() {
    echo "==> perf profile of credgate (json, 32 connections)"
    start_upstream
    start_credgate "backend = \"embedded\"\npath = \"$WORK/store-prof\"\n"
    seed prof
    taskset -c "$LOAD_CPU" wrk -t1 -c32 -d14s -s bench/mcp.lua "$(url_of credgate json)" >"$OUT/profile-wrk.txt" &
    sleep 2
    perf record -e cpu-clock -F 1999 -g --call-graph dwarf,16384 -p "$CREDGATE_PID" -o "$OUT/perf.data" -- sleep 10 2>/dev/null
    wait %% 2>/dev/null || true
    perf report -i "$OUT/perf.data" --no-children --percent-limit 0.7 --stdio 2>/dev/null | grep -v '^$' | head -150 >"$OUT/profile.txt"
    echo "   see $OUT/profile.txt"
    stop_credgate
}

for s in $SECTIONS; do "$s"; done
[[ "$SECTIONS" == profile ]] && exit 0
# NO_REPORT=1: keep bench/RESULTS.md (a partial run must not replace it).
[[ -n "${NO_REPORT:-}" ]] && exit 0

echo "==> report"
python3 bench/report.py "$OUT" bench/RESULTS.md
echo "wrote bench/RESULTS.md (raw data in $OUT)"
