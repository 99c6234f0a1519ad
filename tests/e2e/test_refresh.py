"""Upstream credential refresh against a real OAuth provider (Authlib, refresh-token
rotation): upstream 401 → one refresh → one retry; single-flight under concurrency; an
expired credential is never injected (fail closed); provider faults map to typed errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from echo_upstream import EchoUpstream
from oauth_provider import OAuthProvider
from support import Client, Credgate, describe, route, seen_auth, spec_error, unique

APP_ID = "credgate-app"  # the `provider` fixture (conftest.py) registers this client


@pytest.fixture(scope="module")
def rgate(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream, provider: OAuthProvider) -> Iterator[Credgate]:
    g = Credgate(
        tmp_path_factory.mktemp("refresh"),
        [route("gh", "/guarded", echo.url, strip_prefix=False)],
        {
            "integrations.gh": {
                "token_url": provider.token_url,
                "client_id": APP_ID,
                "auth_method": "client_secret_post",
            }
        },
        {"GH_CLIENT_SECRET": provider.client.client_secret},
    )
    g.start()
    yield g
    g.stop()


@pytest.fixture(autouse=True)
def _provider_ok(provider: OAuthProvider) -> Iterator[None]:
    provider.mode = "ok"
    yield
    provider.mode = "ok"


def _tenant(gate: Credgate, access: str, refresh: str | None, expires_in: int = 3600) -> tuple[Client, str]:
    t = unique("rf")
    cred = {"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": "repo"}
    if refresh is not None:
        cred["refresh_token"] = refresh
    gate.put_credential(t, "gh", cred)
    client = gate.create_client(tenant=t, integrations=["gh"])
    return client, gate.token(client)


def _let_expire() -> None:
    # The credential was stored with expires_in=1. credgate runs in another process, so its
    # clock cannot be injected: let one real second and a margin pass.
    time.sleep(2.2)


def test_upstream_401_refreshes_once_and_retries(rgate: Credgate, echo: EchoUpstream, provider: OAuthProvider) -> None:
    a1, r1 = provider.seed(valid=False)  # the provider revoked it; credgate does not know yet
    _, token = _tenant(rgate, a1, r1)
    marker = unique("r401")
    r = rgate.proxy(
        "POST", f"/guarded/{marker}", token, content=b'{"k": 1}', headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 200, describe(r)
    calls = provider.refreshes_of(r1)
    assert len(calls) == 1, f"expected one refresh, provider saw {len(calls)}"
    assert calls[0]["form"].get("client_id") == APP_ID
    assert calls[0]["form"].get("client_secret") == provider.client.client_secret, "auth_method client_secret_post"
    body = r.json()
    a2 = [v for k, v in body["headers"] if k.lower() == "authorization"][0][7:]
    assert a2 != a1 and a2 in provider.valid_access
    assert body["body"] == '{"k": 1}', "request body not replayed intact"
    assert seen_auth(echo, marker) == [f"Bearer {a1}", f"Bearer {a2}"]
    # the next request uses the new credential directly
    marker2 = unique("r401b")
    assert rgate.proxy("GET", f"/guarded/{marker2}", token).status_code == 200
    assert seen_auth(echo, marker2) == [f"Bearer {a2}"]
    assert len(provider.refreshes_of(r1)) == 1


def test_concurrent_401s_refresh_once(rgate: Credgate, echo: EchoUpstream, provider: OAuthProvider) -> None:
    a1, r1 = provider.seed(valid=False)
    _, token = _tenant(rgate, a1, r1)
    marker = unique("conc")
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda i: rgate.proxy("GET", f"/guarded/{marker}/{i}", token), range(6)))
    assert [r.status_code for r in results] == [200] * 6, [describe(r) for r in results if r.status_code != 200]
    assert len(provider.refreshes_of(r1)) == 1, "refresh was not single-flight (rotation makes a second one fail)"


def test_expired_credential_is_refreshed_not_injected(
    rgate: Credgate, echo: EchoUpstream, provider: OAuthProvider
) -> None:
    a1, r1 = provider.seed(valid=True)  # still accepted upstream: only credgate's expiry check stops it
    _, token = _tenant(rgate, a1, r1, expires_in=1)
    _let_expire()
    marker = unique("exp")
    r = rgate.proxy("GET", f"/guarded/{marker}", token)
    assert r.status_code == 200, describe(r)
    seen = seen_auth(echo, marker)
    assert f"Bearer {a1}" not in seen, "an expired upstream credential was injected"
    assert len(provider.refreshes_of(r1)) == 1


def test_expired_without_refresh_token_fails_closed(
    rgate: Credgate, echo: EchoUpstream, provider: OAuthProvider
) -> None:
    a1, _ = provider.seed(valid=True)
    _, token = _tenant(rgate, a1, None, expires_in=1)
    _let_expire()
    marker = unique("norf")
    r = rgate.proxy("GET", f"/guarded/{marker}", token)
    assert r.status_code == 403, describe(r)
    assert spec_error(r)["code"] == "REAUTHORIZATION_REQUIRED"
    assert seen_auth(echo, marker) == [], "the expired credential reached the upstream"


def test_invalid_grant_requires_reauthorization(rgate: Credgate, echo: EchoUpstream, provider: OAuthProvider) -> None:
    a1, r1 = provider.seed(valid=False)
    client, token = _tenant(rgate, a1, r1)
    provider.mode = "invalid_grant"
    r = rgate.proxy("GET", f"/guarded/{unique('ig')}", token)
    assert r.status_code == 403, describe(r)
    assert spec_error(r)["code"] == "REAUTHORIZATION_REQUIRED"
    r = rgate.admin("GET", f"/api/admin/credentials/{client.tenant}/gh")
    assert r.status_code == 200, describe(r)
    assert r.json()["credential"].get("status") == "reauthorization_required", r.json()


def test_provider_outage_on_expired_credential_is_503(
    rgate: Credgate, echo: EchoUpstream, provider: OAuthProvider
) -> None:
    a1, r1 = provider.seed(valid=True)
    _, token = _tenant(rgate, a1, r1, expires_in=1)
    _let_expire()
    provider.mode = "error"
    marker = unique("down")
    r = rgate.proxy("GET", f"/guarded/{marker}", token)
    assert r.status_code == 503, describe(r)
    assert spec_error(r)["code"] == "CREDENTIAL_REFRESH_FAILED"
    assert r.headers.get("retry-after"), dict(r.headers)
    assert seen_auth(echo, marker) == []


def test_admin_refresh_now(rgate: Credgate, echo: EchoUpstream, provider: OAuthProvider) -> None:
    a1, r1 = provider.seed(valid=True)
    client, token = _tenant(rgate, a1, r1)
    r = rgate.admin("POST", f"/api/admin/credentials/{client.tenant}/gh/refresh")
    assert r.status_code == 200, describe(r)
    assert len(provider.refreshes_of(r1)) == 1
    assert a1 not in r.text
    marker = unique("now")
    assert rgate.proxy("GET", f"/guarded/{marker}", token).status_code == 200
    seen = seen_auth(echo, marker)
    assert seen and seen[0] != f"Bearer {a1}" and seen[0][7:] in provider.valid_access
    meta = rgate.admin("GET", f"/api/admin/credentials/{client.tenant}/gh").json()["credential"]
    assert meta.get("refreshCount", 0) >= 1, meta
    assert "refresh-success" in rgate.audit_path.read_text(), "refresh-success not in the audit log"
