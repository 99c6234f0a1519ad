"""Signing-key rotation: by admin endpoint and by CLI. New tokens carry the new kid, tokens
signed before keep validating (the old key stays in the JWKS), replicas pick it up."""

from __future__ import annotations

import subprocess
import time

import httpx
from support import CREDGATE_BIN, Credgate, describe, jwt_kid, route, unique


def _kids(gate: Credgate) -> set[str]:
    r = httpx.get(f"{gate.url}/.well-known/jwks.json", timeout=5)
    assert r.status_code == 200, describe(r)
    return {k["kid"] for k in r.json()["keys"]}


def test_admin_rotation_keeps_old_tokens_valid(make_gate, echo) -> None:
    gate: Credgate = make_gate(routes=[route("echo", "/echo", echo.url)])
    tenant = unique("kr")
    gate.put_bearer(tenant, "echo", f"c-{unique('x')}")
    client = gate.create_client(tenant=tenant, integrations=["echo"])
    old = gate.token(client)
    before = _kids(gate)

    r = gate.admin("POST", "/api/admin/oauth/signing-keys/rotate")
    assert r.status_code == 200, describe(r)
    new_kid = r.json()["kid"]
    assert new_kid not in before and _kids(gate) == before | {new_kid}

    new = gate.token(client)
    assert jwt_kid(new) == new_kid != jwt_kid(old)
    for t in (old, new):
        assert gate.proxy("GET", "/echo/x", t).status_code == 200
    assert "signing-key-rotated" in gate.audit_path.read_text()

    # Without the admin credential: refused.
    assert gate.admin("POST", "/api/admin/oauth/signing-keys/rotate", token="nope").status_code == 401


def test_cli_rotation_reaches_the_running_process(make_gate, echo) -> None:
    gate: Credgate = make_gate(routes=[route("echo", "/echo", echo.url)], store={"sync_interval_seconds": 1})
    before = _kids(gate)
    out = subprocess.run(
        [str(CREDGATE_BIN), "rotate-signing-key", "--config", str(gate.config_path)],
        env=gate.env(),
        cwd=gate.workdir,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    new_kid = out.stdout.strip().rsplit(" ", 1)[-1]
    assert new_kid not in before
    deadline = time.monotonic() + 10
    while new_kid not in _kids(gate) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert new_kid in _kids(gate), "the running instance never saw the rotated key"
    client = gate.create_client(tenant=unique("kc"), integrations=["echo"])
    deadline = time.monotonic() + 10
    while jwt_kid(gate.token(client)) != new_kid and time.monotonic() < deadline:
        time.sleep(0.2)
    assert jwt_kid(gate.token(client)) == new_kid
