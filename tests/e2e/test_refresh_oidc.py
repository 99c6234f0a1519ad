"""Upstream credential refresh against a REAL OAuth provider (issue #5): `oidc-provider`
(tests/oidc, pinned) with refresh-token rotation and its reuse detection — presenting a
refresh token that was already used revokes the whole grant, so a refresh race is not
merely wasteful but destroys the tenant's authorization. The upstream (echo's `/guarded`
paths) accepts only access tokens the provider's introspection endpoint calls active.

Covered: 100 concurrent upstream 401s → one refresh, grant intact; two credgate replicas
on one OpenBao → one refresh in total (the lease), for 401s and for the scheduler; provider
down → 503 CREDENTIAL_REFRESH_FAILED, revoked grant → 403 REAUTHORIZATION_REQUIRED, an
expired token never reaching the upstream; and a SIGKILL between the provider's rotation
and credgate's store write (what `src/refresh/mod.rs` says a crash loses).

The provider side channel (`/_test/...`, see tests/oidc/provider.mjs) seeds grants as a
browser login would, revokes grants, delays token answers and reports every
refresh_token request it saw.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from echo_upstream import EchoUpstream
from oidc_provider import RATE, OidcProvider, connect_seeded, oidc_integration, oidc_routes
from support import Client, Credgate, describe, seen_auth, spec_error, unique, upstream_auth, wait_for

# The `oidc`, `doomed`, `vault_pair` and `bao` fixtures are in conftest.py.
pytestmark = pytest.mark.usefixtures("oidc_reset")


@pytest.fixture(scope="module")
def ogate(
    tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream, oidc: OidcProvider, doomed: OidcProvider
) -> Iterator[Credgate]:
    g = Credgate(
        tmp_path_factory.mktemp("oidc-gate"),
        oidc_routes(echo),
        {"integrations.gh": oidc_integration(oidc), "integrations.down": oidc_integration(doomed), **RATE},
        {"GH_CLIENT_SECRET": oidc.client_secret, "DOWN_CLIENT_SECRET": doomed.client_secret},
    )
    g.start()
    yield g
    g.stop()


# ----- helpers -------------------------------------------------------------------------


def _injected(r: httpx.Response) -> str:
    auth = upstream_auth(r)
    assert len(auth) == 1 and auth[0].startswith("Bearer "), auth
    return auth[0][7:]


def _ok(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in entries if e["status"] == 200]


def _status(gate: Credgate, client: Client, integration: str = "gh") -> dict[str, Any]:
    r = gate.admin("GET", f"/api/admin/credentials/{client.tenant}/{integration}")
    assert r.status_code == 200, describe(r)
    assert r.json().get("success") is True, r.json()
    return r.json()["credential"]


# ----- 1. one process, 100 concurrent 401s ---------------------------------------------


def test_100_concurrent_upstream_401s_refresh_once_and_keep_the_grant(
    ogate: Credgate, echo: EchoUpstream, oidc: OidcProvider
) -> None:
    seeded = oidc.seed(revoke_access=True)  # the provider no longer accepts this access token
    gid, a1, r1 = seeded["grantId"], seeded["access_token"], seeded["refresh_token"]
    assert not oidc.active(a1)
    client, token = connect_seeded(ogate, seeded)
    marker = unique("c100")

    def call(i: int) -> httpx.Response:
        return ogate.proxy("POST", f"/guarded/{marker}/{i}", token, content=f'{{"i": {i}}}'.encode(),
                           headers={"Content-Type": "application/json"})

    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(call, range(100)))
    bad = [describe(r) for r in results if r.status_code != 200]
    assert not bad, f"{len(bad)} of 100 failed: {bad[:5]}"

    calls = oidc.refreshes(gid)
    assert len(calls) == 1, f"the provider saw {len(calls)} refresh_token requests, expected exactly one: {calls}"
    first = calls[0]
    assert first["status"] == 200 and first["refreshToken"] == r1, first
    assert "resource" not in first["params"], f"credgate sent resource= to the provider: {first['params']}"
    assert {"client_id", "client_secret"} <= set(first["params"]), f"not client_secret_post: {first['params']}"
    assert not oidc.revoked(gid), "reuse detection revoked the grant"

    a2 = first["newAccessToken"]
    assert oidc.active(a2)
    injected = {_injected(r) for r in results}
    assert injected == {a2}, "every request must end up with the one refreshed token"
    for i, r in enumerate(results):
        assert r.json()["body"] == f'{{"i": {i}}}', "request body not replayed intact"
    seen = seen_auth(echo, marker)
    assert set(seen) <= {f"Bearer {a1}", f"Bearer {a2}"}, "a token other than the old and new one was injected"
    assert seen.count(f"Bearer {a2}") == 100

    # The rotated refresh token was kept: the next refresh presents it and the grant lives on.
    r = ogate.admin("POST", f"/api/admin/credentials/{client.tenant}/gh/refresh")
    assert r.status_code == 200, describe(r)
    calls = oidc.refreshes(gid)
    assert len(calls) == 2 and calls[1]["status"] == 200, calls
    assert calls[1]["refreshToken"] == first["newRefreshToken"], "credgate did not keep the rotated refresh token"
    assert not oidc.revoked(gid)
    a3 = calls[1]["newAccessToken"]
    marker2 = unique("c100b")
    r = ogate.proxy("GET", f"/guarded/{marker2}", token)
    assert r.status_code == 200, describe(r)
    assert seen_auth(echo, marker2) == [f"Bearer {a3}"]
    assert _status(ogate, client)["status"] == "active"


# ----- 3. provider faults --------------------------------------------------------------


def test_invalid_grant_from_a_revoked_grant_requires_reauthorization(
    ogate: Credgate, echo: EchoUpstream, oidc: OidcProvider
) -> None:
    # upstream 401 path: the access token is dead and so is the grant
    seeded = oidc.seed(revoke_access=True)
    client, token = connect_seeded(ogate, seeded)
    oidc.revoke(seeded["grantId"])
    marker = unique("ig")
    r = ogate.proxy("GET", f"/guarded/{marker}", token)
    assert r.status_code == 403, describe(r)
    assert spec_error(r)["code"] == "REAUTHORIZATION_REQUIRED"
    calls = oidc.refreshes_of_token(seeded["refresh_token"])
    assert len(calls) == 1 and calls[0]["error"] == "invalid_grant", calls
    assert seen_auth(echo, marker) == [f"Bearer {seeded['access_token']}"], "only the one refused attempt"
    assert _status(ogate, client)["status"] == "reauthorization_required"
    r = ogate.proxy("GET", f"/guarded/{unique('ig2')}", token)
    assert r.status_code == 403 and spec_error(r)["code"] == "REAUTHORIZATION_REQUIRED", describe(r)
    assert len(oidc.refreshes_of_token(seeded["refresh_token"])) == 1, "asked the provider again after invalid_grant"

    # expiry path: the expired token never reaches the upstream
    seeded = oidc.seed()
    client, token = connect_seeded(ogate, seeded, expires_in=5)  # within credgate's 10 s skew: expired
    oidc.revoke(seeded["grantId"])
    marker = unique("ige")
    r = ogate.proxy("GET", f"/guarded/{marker}", token)
    assert r.status_code == 403, describe(r)
    assert spec_error(r)["code"] == "REAUTHORIZATION_REQUIRED"
    assert seen_auth(echo, marker) == [], "an expired credential reached the upstream"
    assert _status(ogate, client)["status"] == "reauthorization_required"


def test_provider_down_with_expired_credential_is_503(
    ogate: Credgate, echo: EchoUpstream, doomed: OidcProvider
) -> None:
    seeded = doomed.seed()  # still active at the provider: only credgate's expiry check stops it
    client, token = connect_seeded(ogate, seeded, integration="down", expires_in=5)
    doomed.close()  # the provider process is gone: connection refused
    marker = unique("down")
    for _ in range(2):
        r = ogate.proxy("GET", f"/guarded-down/{marker}", token)
        assert r.status_code == 503, describe(r)
        assert spec_error(r)["code"] == "CREDENTIAL_REFRESH_FAILED"
        assert int(r.headers.get("retry-after", "0")) > 0, dict(r.headers)
    assert seen_auth(echo, marker) == [], "the expired token reached the upstream"
    assert seeded["access_token"] not in r.text
    # a provider outage is retriable, not a lost grant
    assert _status(ogate, client, "down")["status"] == "expired"


# ----- 4. SIGKILL between the provider's rotation and the store write -------------------


def test_sigkill_after_rotation_loses_the_grant_as_documented(
    tmp_path: Path, echo: EchoUpstream, oidc: OidcProvider
) -> None:
    """What src/refresh/mod.rs says a crash loses, observed with a real rotating provider.

    The provider rotates the refresh token and issues the new pair, then holds its answer
    (side channel `delayMs`); credgate is SIGKILLed while it waits, so the new pair never
    reaches the store. Observed after the restart, as the module doc claims:

    1. while the dead process's refresh lease runs (30 s from when it was taken) a request
       waits for the lease (10 s), then gets 503 CREDENTIAL_REFRESH_FAILED with Retry-After;
       the provider is not called and nothing reaches the upstream;
    2. once the lease has run out, the next refresh presents the old refresh token, which
       the provider already consumed: its reuse detection revokes the whole grant (so the
       pair only the dead process saw is dead too) and it answers invalid_grant;
    3. credgate answers 403 REAUTHORIZATION_REQUIRED and records `reauthorization_required`;
       the expired access token is never injected, and the provider is not asked again.
    """
    g = Credgate(tmp_path / "kill", oidc_routes(echo), {"integrations.gh": oidc_integration(oidc), **RATE},
                 {"GH_CLIENT_SECRET": oidc.client_secret})
    g.start()
    try:
        seeded = oidc.seed()
        gid, a1, r1 = seeded["grantId"], seeded["access_token"], seeded["refresh_token"]
        client, token = connect_seeded(g, seeded, expires_in=5)  # expired for credgate: refresh first
        oidc.configure(delayMs=4000)
        marker = unique("kill")
        inflight: list[object] = []

        def request() -> None:
            try:
                inflight.append(g.proxy("GET", f"/guarded/{marker}/0", token))
            except httpx.HTTPError as e:
                inflight.append(e)

        t = threading.Thread(target=request, daemon=True)
        t.start()
        issued = wait_for(lambda: _ok(oidc.refreshes(gid)), 10, "the provider to rotate the refresh token")[0]
        assert not issued["answered"], "the provider answered before the kill: the window was missed"
        g.stop(signal.SIGKILL)
        t.join(timeout=10)
        assert inflight and not isinstance(inflight[0], httpx.Response), f"in-flight request completed: {inflight}"
        oidc.configure(delayMs=0)
        rotated_a, rotated_r = issued["newAccessToken"], issued["newRefreshToken"]
        assert issued["refreshToken"] == r1 and rotated_r != r1
        assert oidc.active(rotated_a), "the provider issued a new pair that only the dead process knows"

        g.start()  # same store, master key and admin token
        # 1. the dead process's lease still holds
        with httpx.Client(timeout=httpx.Timeout(25.0), trust_env=False) as c:  # waits out LEASE_WAIT (10 s)
            r = c.get(f"{g.url}/guarded/{marker}/1", headers={"Authorization": f"Bearer {token}"})
        assert time.time() < issued["at"] + 30, "too slow to observe the lease; the assertion below would be vacuous"
        assert r.status_code == 503, describe(r)
        assert spec_error(r)["code"] == "CREDENTIAL_REFRESH_FAILED"
        assert r.headers.get("retry-after"), dict(r.headers)
        assert len(oidc.refreshes(gid)) == 1, "the provider was called while the lease was held"

        # 2. after the lease ran out: the consumed refresh token is presented
        time.sleep(max(0.0, issued["at"] + 31 - time.time()))
        r = g.proxy("GET", f"/guarded/{marker}/2", token)
        assert r.status_code == 403, describe(r)
        assert spec_error(r)["code"] == "REAUTHORIZATION_REQUIRED"
        calls = oidc.refreshes(gid)
        assert len(calls) == 2, calls
        assert calls[1]["refreshToken"] == r1 and calls[1]["error"] == "invalid_grant", calls[1]
        assert calls[1]["errorDetail"] == "refresh token already used", calls[1]
        assert oidc.revoked(gid), "reuse detection should have revoked the grant"
        assert not oidc.active(rotated_a), "the lost pair should be revoked with its grant"

        # 3. recorded, never an old token injected, no further provider calls
        assert _status(g, client)["status"] == "reauthorization_required"
        r = g.proxy("GET", f"/guarded/{marker}/3", token)
        assert r.status_code == 403 and spec_error(r)["code"] == "REAUTHORIZATION_REQUIRED", describe(r)
        assert len(oidc.refreshes(gid)) == 2
        assert seen_auth(echo, marker) == [], f"a token reached the upstream: {seen_auth(echo, marker)}"
        assert a1 not in g.logs() and r1 not in g.logs()
    finally:
        oidc.configure(delayMs=0)
        g.stop()


# ----- 2. two replicas on one OpenBao ---------------------------------------------------


def test_two_replicas_concurrent_401s_refresh_once(
    vault_pair: Callable[..., Credgate], echo: EchoUpstream, oidc: OidcProvider
) -> None:
    a = vault_pair()
    seeded = oidc.seed(revoke_access=True)
    gid, a1 = seeded["grantId"], seeded["access_token"]
    client, token = connect_seeded(a, seeded)
    b = vault_pair(replica_of=a)  # started after the client exists: no client-sync lag to wait out
    marker = unique("rep")
    # 20 requests on each replica at once: each injects the dead token, gets a 401, refreshes
    with ThreadPoolExecutor(max_workers=40) as pool:
        jobs = [pool.submit(gate.proxy, "GET", f"/guarded/{marker}/{n}/{i}", token)
                for i in range(20) for n, gate in (("a", a), ("b", b))]
        results = [j.result() for j in jobs]
    bad = [describe(r) for r in results if r.status_code != 200]
    assert not bad, f"{len(bad)} of 40 failed: {bad[:5]}"
    calls = oidc.refreshes(gid)
    assert len(calls) == 1, f"two replicas made {len(calls)} provider refreshes, expected one: {calls}"
    assert calls[0]["status"] == 200 and not oidc.revoked(gid)
    a2 = calls[0]["newAccessToken"]
    assert {_injected(r) for r in results} == {a2}
    # each replica's later requests carry the new token
    for n, gate in (("a", a), ("b", b)):
        m = unique(f"after-{n}")
        r = gate.proxy("GET", f"/guarded/{m}", token)
        assert r.status_code == 200, describe(r)
        assert seen_auth(echo, m) == [f"Bearer {a2}"], n
    assert f"Bearer {a1}" in seen_auth(echo, marker), "the upstream 401 path was not exercised"
    assert len(oidc.refreshes(gid)) == 1
