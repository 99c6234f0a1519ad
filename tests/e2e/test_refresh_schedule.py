"""Scheduled refresh: credentials with autoRefresh that expire within `refresh.before_seconds`
are refreshed by the scheduler's tick, with no request in flight; a provider outage backs off
instead of hammering; invalid_grant ends the retries."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from oauth_provider import OAuthProvider
from support import Credgate, describe, eventually, route, unique

APP_ID = "sched-app"  # the `provider` fixture (conftest.py) registers this client


@pytest.fixture(scope="module")
def sgate(tmp_path_factory: pytest.TempPathFactory, provider: OAuthProvider) -> Iterator[Credgate]:
    g = Credgate(
        tmp_path_factory.mktemp("sched"),
        [route("sch", "/sch", "http://127.0.0.1:9", strip_prefix=False)],
        {
            "integrations.sch": {"token_url": provider.token_url, "client_id": APP_ID},
            # every credential stored below expires within the window: due at once
            "refresh": {"before_seconds": 3600, "interval_seconds": 1},
        },
        {"SCH_CLIENT_SECRET": provider.client.client_secret},
    )
    g.start()
    yield g
    g.stop()


def _meta(gate: Credgate, tenant: str) -> dict:
    r = gate.admin("GET", f"/api/admin/credentials/{tenant}/sch")
    assert r.status_code == 200, describe(r)
    assert r.json().get("success") is True, r.json()
    return r.json()["credential"]


def test_due_credential_is_refreshed_by_the_scheduler(sgate: Credgate, provider: OAuthProvider) -> None:
    provider.mode = "ok"
    a1, r1 = provider.seed(valid=True)
    tenant = unique("sc")
    body = {"access_token": a1, "refresh_token": r1, "token_type": "Bearer", "expires_in": 1800}
    assert sgate.put_credential(tenant, "sch", body).status_code in (200, 201)
    assert eventually(lambda: len(provider.refreshes_of(r1)) >= 1, 15), "the scheduler never refreshed a due credential"
    assert eventually(lambda: _meta(sgate, tenant).get("refreshCount", 0) >= 1, 15)
    meta = _meta(sgate, tenant)
    assert meta["status"] == "active", meta
    # The refreshed credential expires an hour out (provider default) and is due again only then;
    # exactly one refresh happened for this grant.
    time.sleep(2.5)
    assert len(provider.refreshes_of(r1)) == 1
    audit = sgate.audit_path.read_text()
    assert "refresh-success" in audit and a1 not in audit and r1 not in audit


def test_credential_without_auto_refresh_is_left_alone(sgate: Credgate, provider: OAuthProvider) -> None:
    provider.mode = "ok"
    a1, r1 = provider.seed(valid=True)
    tenant = unique("sn")
    body = {"access_token": a1, "refresh_token": r1, "expires_in": 1800, "autoRefresh": False}
    assert sgate.put_credential(tenant, "sch", body).status_code in (200, 201)
    time.sleep(3)
    assert provider.refreshes_of(r1) == []


def test_invalid_grant_stops_scheduled_retries(sgate: Credgate, provider: OAuthProvider) -> None:
    a1, r1 = provider.seed(valid=True)
    provider.mode = "invalid_grant"
    try:
        tenant = unique("si")
        body = {"access_token": a1, "refresh_token": r1, "expires_in": 1800}
        assert sgate.put_credential(tenant, "sch", body).status_code in (200, 201)
        assert eventually(lambda: _meta(sgate, tenant).get("status") == "reauthorization_required", 15)
        seen = len(provider.refreshes_of(r1))
        time.sleep(3)
        assert len(provider.refreshes_of(r1)) == seen, "retried after invalid_grant"
        assert "refresh-failed" in sgate.audit_path.read_text()
    finally:
        provider.mode = "ok"


def test_provider_outage_backs_off(sgate: Credgate, provider: OAuthProvider) -> None:
    a1, r1 = provider.seed(valid=True)
    provider.mode = "error"
    try:
        tenant = unique("so")
        body = {"access_token": a1, "refresh_token": r1, "expires_in": 1800}
        assert sgate.put_credential(tenant, "sch", body).status_code in (200, 201)
        assert eventually(lambda: len(provider.refreshes_of(r1)) >= 1, 15)
        time.sleep(4)
        # the first retry waits at least 15 s (30 s halved by jitter): no hammering each tick
        assert len(provider.refreshes_of(r1)) == 1, provider.refreshes_of(r1)
        assert _meta(sgate, tenant)["status"] == "active"
        assert "refresh-retry" in sgate.audit_path.read_text()
    finally:
        provider.mode = "ok"
