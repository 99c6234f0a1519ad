"""credgate on the vault store backend (docs/storage.md) against a real OpenBao, checked from
outside with hvac, a third-party Vault client: what credgate writes is what the spec
lays out, it injects what it stored, and a Vault outage degrades as documented."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import httpx
import hvac
import pytest
from openbao import OpenBao
from support import Credgate, describe, spec_error, unique, upstream_auth


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_credentials_are_stored_as_spec_section_7_lays_out(
    vault_gate: Callable[[], Credgate], bao: OpenBao
) -> None:
    gate = vault_gate()
    tenant = unique("vt")
    access, refresh = f"acc-{unique('a')}", f"ref-{unique('r')}"
    gate.put_credential(
        tenant,
        "echo",
        {"access_token": access, "refresh_token": refresh, "token_type": "Bearer", "expires_in": 3600,
         "scope": "repo read:org"},
    )

    kv = bao.client.secrets.kv.v2
    secret = kv.read_secret_version(path=f"{tenant}/echo", mount_point="secret", raise_on_deleted_version=True)
    data, meta = secret["data"]["data"], secret["data"]["metadata"]
    assert set(data) == {"accessToken", "refreshToken", "expiresAt", "scopes", "tokenType", "integration"}, data
    assert data["accessToken"].startswith("vault:v1:") and data["refreshToken"].startswith("vault:v1:")
    assert access not in str(secret) and refresh not in str(secret)
    assert data["integration"] == "echo" and data["tokenType"] == "Bearer"
    assert data["scopes"] == ["repo", "read:org"]
    assert set(meta["custom_metadata"]) >= {"createdBy", "integration", "autoRefresh", "refreshCount"}, meta
    assert meta["custom_metadata"]["integration"] == "echo"
    assert meta["version"] == 1

    # One derived Transit key per tenant; the context is the record path.
    assert bao.client.secrets.transit.read_key(name=tenant)["data"]["derived"] is True
    plain = bao.client.secrets.transit.decrypt_data(
        name=tenant, ciphertext=data["accessToken"], context=_b64(f"{tenant}/echo")
    )
    assert base64.b64decode(plain["data"]["plaintext"]).decode() == access
    with pytest.raises(hvac.exceptions.InvalidRequest):
        bao.client.secrets.transit.decrypt_data(
            name=tenant, ciphertext=data["accessToken"], context=_b64(f"{tenant}/other")
        )
    # credgate's own records live under _credgate/.
    assert "_credgate/" in kv.list_secrets(path="", mount_point="secret")["data"]["keys"]

    # And the proxy injects what it stored.
    client = gate.create_client(tenant=tenant, integrations=["echo"])
    r = gate.proxy("GET", "/echo/x", gate.token(client))
    assert r.status_code == 200, describe(r)
    assert upstream_auth(r) == [f"Bearer {access}"]

    # An update made elsewhere with check-and-set (hvac, cas = current version) is
    # picked up on the next sync.
    new_ct = bao.client.secrets.transit.encrypt_data(
        name=tenant, plaintext=_b64("rotated-elsewhere"), context=_b64(f"{tenant}/echo")
    )["data"]["ciphertext"]
    kv.create_or_update_secret(
        path=f"{tenant}/echo", mount_point="secret", secret={**data, "accessToken": new_ct}, cas=1
    )
    deadline = time.monotonic() + 10
    while True:
        r = gate.proxy("GET", "/echo/x", gate.token(client))
        if r.status_code == 200 and upstream_auth(r) == ["Bearer rotated-elsewhere"]:
            break
        assert time.monotonic() < deadline, describe(r)
        time.sleep(0.3)
    # RUST_LOG=debug, yet neither the Vault token nor a credential is in the logs.
    logs = gate.logs()
    for secret in (bao.token, access, refresh, "rotated-elsewhere"):
        assert secret not in logs, f"secret in credgate's logs: {secret[:6]}…"


def test_vault_outage_serves_cached_credentials_and_fails_readyz(
    vault_gate: Callable[[], Credgate], bao: OpenBao
) -> None:
    gate = vault_gate()
    warm, cold = unique("warm"), unique("cold")
    gate.put_bearer(warm, "echo", "warm-cred")
    gate.put_bearer(cold, "echo", "cold-cred")
    warm_token = gate.token(gate.create_client(tenant=warm, integrations=["echo"]))
    cold_token = gate.token(gate.create_client(tenant=cold, integrations=["echo"]))
    r = gate.proxy("GET", "/echo/x", warm_token)
    assert r.status_code == 200 and upstream_auth(r) == ["Bearer warm-cred"], describe(r)

    bao.close()
    time.sleep(1.2)  # past store.sync_interval_seconds: the cached entry is due a reload

    with httpx.Client(timeout=10, trust_env=False) as c:
        ready = c.get(f"{gate.ops_url}/readyz")
    assert ready.status_code == 503, ready.text
    assert ready.json()["components"]["store"]["status"] == "failing", ready.text
    assert ready.json()["components"]["store"]["backend"] == "vault", ready.text

    started = time.monotonic()
    r = gate.proxy("GET", "/echo/x", warm_token)
    assert r.status_code == 200 and upstream_auth(r) == ["Bearer warm-cred"], describe(r)
    r = gate.proxy("GET", "/echo/x", cold_token)
    assert r.status_code == 503, describe(r)
    assert spec_error(r)["code"] == "STORE_UNAVAILABLE"
    assert time.monotonic() - started < 5, "an outage must fail fast, not hang"
