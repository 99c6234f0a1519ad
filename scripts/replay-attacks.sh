#!/usr/bin/env bash
# Replays every attack of docs/RELIABILITY.md's hardening catalogue against a fresh build:
# the Rust tests named there (unit tests, the Vault hardening tests on OpenBao, the
# property tests of the JSON-RPC parser and SSE filter) and the end-to-end attack files.
# Needs what scripts/test.sh sets up (.venv, the npm packages, the system peers).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build
cargo test --lib
cargo test --test store hardening
cargo test --test prop_mcp
.venv/bin/python -m pytest -q \
  tests/e2e/test_hardening_net.py \
  tests/e2e/test_hardening_core.py \
  tests/e2e/test_mcp_policy_hostile.py \
  tests/e2e/test_hostile.py \
  tests/e2e/test_connect_tampering.py
