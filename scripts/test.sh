#!/usr/bin/env bash
# The one command that runs credgate's whole test suite:
#   1. a Python virtualenv at .venv with tests/requirements.txt (pinned),
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

venv_ok() {
  [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null
}

step "Python environment ($VENV)"
if ! venv_ok; then
  rm -rf "$VENV"
  if ! "$PYTHON" -m venv "$VENV"; then
    # Debian's python3 ships venv support in a separate package.
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
      rm -rf "$VENV"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      "$PYTHON" -m venv "$VENV"
    else
      echo "error: '$PYTHON -m venv' failed; install python3-venv" >&2
      exit 1
    fi
  fi
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r tests/requirements.txt

# The TypeScript MCP SDK for the Node interop tests (tests/e2e/test_oauth_clients.py),
# exact versions from tests/node/package-lock.json; those tests skip without node.
if command -v node >/dev/null; then
  step "Node packages (tests/node)"
  npm ci --prefix tests/node --no-audit --no-fund
fi

# oidc-provider, the real rotating OAuth provider of tests/e2e/test_refresh_oidc.py, exact
# versions from tests/oidc/package-lock.json; those tests skip without node.
if command -v node >/dev/null; then
  step "Node packages (tests/oidc)"
  npm ci --prefix tests/oidc --no-audit --no-fund
fi

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
