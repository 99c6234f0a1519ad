#!/usr/bin/env bash
# The one command that runs credgate's whole test suite:
#   1. the system peers (scripts/peers.sh: Node 20+, chromium, chromium-driver, redis-server;
#      installed from Debian's packages when run as root) and a Python virtualenv at .venv
#      with tests/requirements.txt (pinned), npm packages from the lock files,
#   2. cargo build (the e2e suite runs target/debug/credgate),
#   3. cargo test (every Rust test),
#   4. the end-to-end suite in tests/e2e against real peers (pytest).
# Exits non-zero as soon as any step fails. Needs Rust and Python 3.11 on PATH.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

step() {
  printf '\n==> %s (%s)\n' "$*" "$(date -u +%H:%M:%S)"
}

# shellcheck source=scripts/venv.sh
source "$ROOT/scripts/venv.sh"
# shellcheck source=scripts/peers.sh
source "$ROOT/scripts/peers.sh"

step "Python environment ($VENV)"
ensure_venv

step "System peers (node, chromium, chromium-driver, redis-server)"
ensure_system_peers

# The TypeScript MCP SDK for the Node interop tests (tests/e2e/test_oauth_clients.py) and
# oidc-provider, the real rotating OAuth provider (tests/e2e/test_refresh_oidc.py, the
# connect flow), exact versions from their package-lock.json files.
step "Node packages (tests/node, tests/oidc)"
npm ci --prefix tests/node --no-audit --no-fund
npm ci --prefix tests/oidc --no-audit --no-fund

step "cargo build"
cargo build
if [[ ! -x target/debug/credgate ]]; then
  echo "error: cargo build produced no target/debug/credgate" >&2
  exit 1
fi

step "cargo test"
cargo test

step "end-to-end tests (tests/e2e)"
# pytest exits 5 when it collects no test: that is a failure here, as it would mean the
# suite silently stopped running.
"$VENV/bin/python" -m pytest tests/e2e -q
