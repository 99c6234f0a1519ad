"""Hardening of credgate's own core against hostile peers (issue 13, items 7-10 and 13-17),
each against the real binary and real peers: the Authlib provider (oauth_provider.py), a
stdlib token endpoint for answers no real provider should send, OpenBao, the echo upstream.

Each test names the attack it replays; docs/RELIABILITY.md lists them.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from echo_upstream import EchoUpstream
from oauth_provider import OAuthProvider
from support import Credgate, describe, route, unique

APP_ID = "credgate-app"
MIN_INTERVAL = 3


@pytest.fixture(scope="module")
def provider(echo: EchoUpstream) -> Iterator[OAuthProvider]:
    p = OAuthProvider(APP_ID, secrets.token_urlsafe(24))
    echo.guard(p.valid_access)
    yield p
    echo.guard(None)
    p.close()


@pytest.fixture(autouse=True)
def _provider_ok(provider: OAuthProvider) -> Iterator[None]:
    provider.mode = "ok"
    yield
    provider.mode = "ok"


def _gh_gate(workdir, echo: EchoUpstream, token_url: str, secret: str, **sections: dict) -> Credgate:
    extra = {
        "integrations.gh": {"token_url": token_url, "client_id": APP_ID, "auth_method": "client_secret_post"},
    }
    extra.update(sections)
    return Credgate(
        workdir,
        [route("gh", "/guarded", echo.url, strip_prefix=False)],
        extra,
        {"GH_CLIENT_SECRET": secret},
    )


@pytest.fixture(scope="module")
def hgate(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream, provider: OAuthProvider) -> Iterator[Credgate]:
    g = _gh_gate(
        tmp_path_factory.mktemp("hcore"),
        echo,
        provider.token_url,
        provider.client.client_secret,
        refresh={"min_interval_seconds": MIN_INTERVAL},
    )
    g.start()
    yield g
    g.stop()


def _tenant(gate: Credgate, access: str, refresh: str | None, expires_in: int = 3600) -> tuple[str, str]:
    t = unique("hc")
    cred = {"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": "repo"}
    if refresh is not None:
        cred["refresh_token"] = refresh
    gate.put_credential(t, "gh", cred)
    client = gate.create_client(tenant=t, integrations=["gh"])
    return t, gate.token(client)


def _metric(gate: Credgate, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    import httpx

    text = httpx.get(f"{gate.ops_url}/metrics", timeout=5, trust_env=False).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


# ----- item 7: upstream 401s cannot turn every request into a provider call --------------


def test_upstream_401_storm_refreshes_at_most_once_per_interval(
    hgate: Credgate, echo: EchoUpstream, provider: OAuthProvider
) -> None:
    """Attack: an upstream (or a caller who knows it answers 401) makes every request a
    refresh, hammering the provider and rotating the refresh token on each request."""
    a1, r1 = provider.seed(valid=False)
    tenant, token = _tenant(hgate, a1, r1)
    r = hgate.proxy("GET", f"/guarded/{unique('s1')}", token)
    assert r.status_code == 200, describe(r)
    assert len(provider.refreshes_of(r1)) == 1
    before = len(provider.refresh_calls)
    # The upstream now refuses the refreshed token too (revoked behind credgate's back).
    provider.valid_access.clear()
    for i in range(5):
        r = hgate.proxy("GET", f"/guarded/{unique('s2')}/{i}", token)
        assert r.status_code == 401, describe(r)
        # the upstream's own 401 comes back, not one of credgate's
        assert r.json() == {"message": "Bad credentials"}, describe(r)
    assert len(provider.refresh_calls) - before == 0, "a 401 within the interval called the provider"
    # an admin "refresh now" is not limited by the interval
    r = hgate.admin("POST", f"/api/admin/credentials/{tenant}/gh/refresh")
    assert r.status_code == 200, describe(r)
    assert len(provider.refresh_calls) - before == 1
    # after the interval, a 401 may refresh again (and the retry succeeds)
    time.sleep(MIN_INTERVAL + 0.3)
    provider.valid_access.clear()
    r = hgate.proxy("POST", f"/guarded/{unique('s3')}", token, content=b"{}")
    assert r.status_code == 200, describe(r)
    assert len(provider.refresh_calls) - before == 2
