"""Integration mode `grant = "client_credentials"`: credgate obtains the upstream token itself
from the integration's own client credentials, shares it across tenants, replaces it after an
upstream 401, and a credential stored for a tenant still takes precedence."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from echo_upstream import EchoUpstream
from oauth_provider import OAuthProvider
from support import Credgate, describe, route, seen_auth, unique

# The `provider` fixture (conftest.py) registers this client, authenticating this way.
APP_ID = "cc-app"
PROVIDER_AUTH_METHOD = "client_secret_basic"


@pytest.fixture(scope="module")
def cgate(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream, provider: OAuthProvider) -> Iterator[Credgate]:
    g = Credgate(
        tmp_path_factory.mktemp("ccmode"),
        [route("svc", "/guarded", echo.url, strip_prefix=False)],
        {
            "integrations.svc": {
                "grant": "client_credentials",
                "token_url": provider.token_url,
                "client_id": APP_ID,
                "auth_method": "client_secret_basic",
                "scope": "read",
            },
            # These tests make the upstream refuse the shared token several times within
            # seconds; the default (one 401-triggered re-mint per 30 s) would pass the
            # later 401s straight back (tested in test_hardening_core.py).
            "refresh": {"min_interval_seconds": 0},
        },
        {"SVC_CLIENT_SECRET": provider.client.client_secret},
    )
    g.start()
    yield g
    g.stop()


def test_credgate_mints_shares_and_replaces_the_token(cgate: Credgate, echo: EchoUpstream, provider: OAuthProvider) -> None:
    t1, t2 = unique("c1"), unique("c2")
    tok1 = cgate.token(cgate.create_client(tenant=t1, integrations=["svc"]))
    tok2 = cgate.token(cgate.create_client(tenant=t2, integrations=["svc"]))
    before = len(provider.client_credentials_calls())

    m1 = unique("m1")
    r = cgate.proxy("GET", f"/guarded/{m1}", tok1)
    assert r.status_code == 200, describe(r)
    calls = provider.client_credentials_calls()[before:]
    assert len(calls) == 1, calls
    assert calls[0]["auth"] and calls[0]["auth"].startswith("Basic "), "client_secret_basic"
    assert "client_secret" not in calls[0]["form"] and calls[0]["form"].get("scope") == "read"
    minted = seen_auth(echo, m1)[0][7:]
    assert minted in provider.valid_access

    m2 = unique("m2")
    assert cgate.proxy("GET", f"/guarded/{m2}", tok2).status_code == 200
    assert seen_auth(echo, m2) == [f"Bearer {minted}"], "the integration-wide token is shared"
    assert len(provider.client_credentials_calls()) - before == 1

    # The provider revokes it: the upstream answers 401, credgate mints a new one and replays.
    provider.valid_access.discard(minted)
    m3 = unique("m3")
    r = cgate.proxy("POST", f"/guarded/{m3}", tok1, content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 200, describe(r)
    seen = seen_auth(echo, m3)
    assert seen[0] == f"Bearer {minted}" and seen[1] != seen[0] and seen[1][7:] in provider.valid_access
    assert len(provider.client_credentials_calls()) - before == 2

    # A tenant's own stored credential wins over the minted one.
    own = f"own-{unique('o')}"
    provider.valid_access.add(own)
    assert cgate.put_credential(t2, "svc", {"access_token": own, "expires_in": 3600}).status_code in (200, 201)
    m4 = unique("m4")
    assert cgate.proxy("GET", f"/guarded/{m4}", tok2).status_code == 200
    assert seen_auth(echo, m4) == [f"Bearer {own}"]
    audit = cgate.audit_path.read_text()
    assert minted not in audit and provider.client.client_secret not in audit
    assert minted not in cgate.logs() and provider.client.client_secret not in cgate.logs()


def test_provider_failure_is_503(cgate: Credgate, provider: OAuthProvider, echo: EchoUpstream) -> None:
    # A fresh integration-wide token is needed only when none is held: force one by revoking
    # the current one and failing the provider.
    t = unique("c3")
    tok = cgate.token(cgate.create_client(tenant=t, integrations=["svc"]))
    assert cgate.proxy("GET", f"/guarded/{unique('warm')}", tok).status_code == 200
    provider.valid_access.clear()
    provider.mode = "error"
    try:
        m = unique("down")
        r = cgate.proxy("GET", f"/guarded/{m}", tok)
        assert r.status_code == 503, describe(r)
        assert r.json()["error"]["code"] == "CREDENTIAL_REFRESH_FAILED"
    finally:
        provider.mode = "ok"
