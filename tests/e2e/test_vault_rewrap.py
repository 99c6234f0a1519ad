"""Transit key rotation, then rewrap through the admin API and the CLI: ciphertexts move to the
new key version and credgate keeps injecting the same credential."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from support import CREDGATE_BIN, Credgate, describe, unique
from openbao import OpenBao


def _ciphertexts(bao: OpenBao, tenant: str) -> list[str]:
    data = bao.client.secrets.kv.v2.read_secret_version(path=f"{tenant}/echo", mount_point="secret")["data"]["data"]
    return [data["accessToken"], data["refreshToken"]]


def test_rotate_then_rewrap(vault_gate: Callable[[], Credgate], bao: OpenBao) -> None:
    gate = vault_gate()
    tenant = unique("rw")
    access = f"acc-{unique('a')}"
    body = {"access_token": access, "refresh_token": f"ref-{unique('r')}", "expires_in": 3600}
    assert gate.put_credential(tenant, "echo", body).status_code in (200, 201)
    assert all(c.startswith("vault:v1:") for c in _ciphertexts(bao, tenant))

    bao.client.secrets.transit.rotate_key(name=tenant, mount_point="transit")
    r = gate.admin("POST", f"/api/admin/tenants/{tenant}/rewrap")
    assert r.status_code == 200, describe(r)
    assert r.json()["rewrapped"] == 1
    assert all(c.startswith("vault:v2:") for c in _ciphertexts(bao, tenant)), _ciphertexts(bao, tenant)

    bao.client.secrets.transit.rotate_key(name=tenant, mount_point="transit")
    out = subprocess.run(
        [str(CREDGATE_BIN), "rewrap", "--config", str(gate.config_path), "--tenant", tenant],
        env=gate.env(), cwd=gate.workdir, capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert all(c.startswith("vault:v3:") for c in _ciphertexts(bao, tenant))

    token = gate.token(gate.create_client(tenant=tenant, integrations=["echo"]))
    r = gate.proxy("GET", "/echo/x", token)
    assert r.status_code == 200, describe(r)
    assert [v for k, v in r.json()["headers"] if k.lower() == "authorization"] == [f"Bearer {access}"]

    assert gate.admin("POST", "/api/admin/tenants/BAD/rewrap").status_code == 400


def test_rewrap_on_the_embedded_store_is_a_clear_400(make_gate) -> None:
    gate: Credgate = make_gate()
    r = gate.admin("POST", "/api/admin/tenants/acme/rewrap")
    assert r.status_code == 400, describe(r)
    assert "no key versions" in r.json()["error"]["message"]
