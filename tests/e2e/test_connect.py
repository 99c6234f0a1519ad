"""Connecting an integration (docs/connect.md) against a REAL provider: oidc-provider with
its own login and consent pages, PKCE required, rotating refresh tokens, revocation and
introspection (tests/oidc/connect_provider.mjs), and a real browser (Debian chromium via
selenium). The upstream (the echo server's `/guarded` paths) accepts a bearer token only
while the provider's introspection endpoint calls it active.

Covered: the whole browser flow (link → page → provider login and consent → callback →
proxied call carrying the provider's token → 401 → refresh rotates it); what the GET page
and the Connect POST do and send; disconnect revoking at the provider (RFC 7009), and a
failed revocation deleting anyway; two replicas (flow started on one, callback on the other),
on the embedded store file and on OpenBao, where one callback raced on both is redeemed once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from connect_support import (
    SCOPES,
    ConnectProvider,
    audit_events,
    browser_client,
    browser_provider_login,
    callback_url,
    chromium,
    connect_gate,
    connect_link,
    connect_over_http,
    forms,
    injected_bearer,
    provider_walk,
    query,
    screenshot,
    start_flow,
    use_provider,
    wait_for,
)
from echo_upstream import EchoUpstream
from oidc_provider import Introspecting
from support import Credgate, describe, spec_error, unique


@pytest.fixture(scope="module")
def guarded_echo() -> Iterator[EchoUpstream]:
    up = EchoUpstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, guarded_echo: EchoUpstream) -> Iterator[tuple[Credgate, ConnectProvider]]:
    work = tmp_path_factory.mktemp("connect")
    gate = connect_gate(work / "gate", guarded_echo.url)
    provider = ConnectProvider(work, [callback_url(gate)])
    guarded_echo.guard(Introspecting(provider))  # type: ignore[arg-type]
    use_provider(
        gate,
        provider,
        {
            "gh": provider.integration(),
            # the same provider, with a revocation endpoint that is down
            "gh-norevoke": provider.integration(revocation_url="http://127.0.0.1:9/revoke"),
        },
    )
    gate.routes.append({**gate.routes[0], "integration": "gh-norevoke", "path_prefix": "/guarded-nr"})
    try:
        gate.start()
        yield gate, provider
    finally:
        gate.stop()
        provider.close()


def _client(gate: Credgate, tenant: str) -> str:
    client = gate.create_client(tenant=tenant, integrations=["gh", "gh-norevoke"])
    return gate.token(client)


def test_browser_connects_and_the_provider_token_reaches_the_upstream_then_rotates(
    world: tuple[Credgate, ConnectProvider], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    gate, provider = world
    tenant = unique("acme")
    token = _client(gate, tenant)
    r = gate.proxy("GET", "/guarded/x", token)
    assert r.status_code == 403 and spec_error(r)["code"] == "INTEGRATION_NOT_CONNECTED", describe(r)
    url = spec_error(r)["details"]["connect_url"]
    assert url.startswith(f"{gate.url}/connect/gh?link="), url

    link = connect_link(gate, tenant)
    driver = chromium(tmp_path)
    try:
        driver.get(link)
        body = driver.find_element(By.TAG_NAME, "body").text
        assert "Connect gh" in body and tenant in body, body
        screenshot(driver, tmp_path, "connect-page")
        # the page alone starts nothing
        assert gate.admin("GET", f"/api/admin/credentials/{tenant}/gh").status_code == 404
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        browser_provider_login(driver, provider, login="alice")
        wait_for(driver, lambda d: d.current_url.startswith(callback_url(gate)) and "is connected" in d.page_source)
        assert "gh is connected" in driver.find_element(By.TAG_NAME, "h1").text
        screenshot(driver, tmp_path, "connected-page")
    finally:
        driver.quit()

    meta = gate.admin("GET", f"/api/admin/credentials/{tenant}/gh")
    assert meta.status_code == 200, describe(meta)
    m = meta.json()["credential"]
    assert m["status"] == "active" and m["hasRefreshToken"] and m["autoRefresh"], m
    assert set(m["scopes"]) >= {"repo", "offline_access"}, m
    events = [e["event"] for e in audit_events(gate, tenant)]
    assert "credential-connected" in events, events

    # the proxied call carries exactly the token the provider issued to alice
    r = gate.proxy("GET", "/guarded/x", token)
    assert r.status_code == 200, describe(r)
    first = injected_bearer(r)
    info = provider.introspect(first)
    assert info["active"] is True and info["sub"] == "alice" and info["client_id"] == "credgate", info

    # the provider forgets that access token: upstream 401 → refresh (rotation) → retry
    provider.drop_access(first)
    assert not provider.active(first)
    r = gate.proxy("GET", "/guarded/y", token)
    assert r.status_code == 200, describe(r)
    second = injected_bearer(r)
    assert second != first and provider.introspect(second)["sub"] == "alice"
    refreshes = [t for t in provider.stats()["tokenRequests"] if t["grant_type"] == "refresh_token"]
    assert any(t["status"] == 200 for t in refreshes), refreshes
    assert gate.admin("GET", f"/api/admin/credentials/{tenant}/gh").json()["credential"]["refreshCount"] == 1
    # neither token is in credgate's logs (debug level) or audit log
    logs = gate.logs() + gate.audit_path.read_text()
    assert first not in logs and second not in logs


def test_page_and_redirect(world: tuple[Credgate, ConnectProvider]) -> None:
    """GET shows the page and starts nothing; the POST redirects with state, PKCE S256,
    scopes and authorize_params, and binds the browser with a cookie."""
    gate, provider = world
    tenant = unique("page")
    link = connect_link(gate, tenant)
    with browser_client() as client:
        for _ in range(2):
            page = client.get(link)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert "credgate_flow" not in page.headers.get("set-cookie", "")
            assert "location" not in page.headers
        assert page.headers["cache-control"] == "no-store"
        assert "default-src 'none'" in page.headers["content-security-policy"]
        (action, fields), *_ = forms(page.text)
        assert action == "/connect/gh" and set(fields) == {"link", "csrf"}
        location = start_flow(client, link)
        q = query(location)
        assert location.startswith(f"{provider.issuer}/auth?"), location
        assert q["response_type"] == "code" and q["client_id"] == "credgate"
        assert q["redirect_uri"] == callback_url(gate)
        assert q["scope"] == " ".join(SCOPES) and q["prompt"] == "consent"
        assert q["code_challenge_method"] == "S256" and len(q["code_challenge"]) == 43
        assert len(q["state"]) >= 22  # at least 128 bits
        binder = client.cookies.get("credgate_flow")
        assert binder, client.cookies
        # a POST without the page's CSRF cookie (another site's form) starts nothing
        with browser_client() as stranger:
            r = stranger.post(f"{gate.url}/connect/gh", data=fields)
            assert r.status_code == 403 and "location" not in r.headers, r.text[:300]
        # GET /connect/callback with no state, and an unknown state
        for qs in ("", "?code=x&state=" + "A" * 43):
            r = client.get(f"{gate.url}/connect/callback{qs}")
            assert r.status_code == 400 and "unknown" in r.text, r.text[:300]
    assert gate.admin("GET", f"/api/admin/credentials/{tenant}/gh").status_code == 404


def test_disconnect_revokes_at_the_provider(world: tuple[Credgate, ConnectProvider]) -> None:
    gate, provider = world
    tenant = unique("bye")
    token = _client(gate, tenant)
    r = connect_over_http(gate, tenant)
    assert r.status_code == 200, r.text[:300]
    access = injected_bearer(gate.proxy("GET", "/guarded/x", token))
    assert provider.active(access)
    revocations = provider.stats()["revocations"]
    r = gate.admin("DELETE", f"/api/admin/credentials/{tenant}/gh")
    assert r.status_code == 200, describe(r)
    assert provider.stats()["revocations"] == revocations + 1
    # revoking the refresh token ended the grant: its access token is dead at the provider
    assert provider.introspect(access) == {"active": False}
    assert gate.admin("GET", f"/api/admin/credentials/{tenant}/gh").status_code == 404
    r = gate.proxy("GET", "/guarded/x", token)
    assert r.status_code == 403 and spec_error(r)["code"] == "INTEGRATION_NOT_CONNECTED"


def test_failed_revocation_is_audited_and_deletes_anyway(world: tuple[Credgate, ConnectProvider]) -> None:
    gate, _ = world
    tenant = unique("norev")
    r = connect_over_http(gate, tenant, integration="gh-norevoke")
    assert r.status_code == 200, r.text[:300]
    r = gate.admin("DELETE", f"/api/admin/credentials/{tenant}/gh-norevoke")
    assert r.status_code == 200, describe(r)
    assert gate.admin("GET", f"/api/admin/credentials/{tenant}/gh-norevoke").status_code == 404
    events = audit_events(gate, tenant)
    failed = [e for e in events if e["event"] == "revocation-failed"]
    assert failed and failed[0]["reason"] == "revocation_failed", events
    assert any(e["event"] == "credential-deleted" for e in events), events


def test_replicas_flow_started_on_one_callback_on_the_other(
    tmp_path: Path, guarded_echo: EchoUpstream, world: tuple[Credgate, ConnectProvider]
) -> None:
    _, provider = world
    a = connect_gate(tmp_path / "a", guarded_echo.url)
    b = connect_gate(tmp_path / "b", guarded_echo.url, replica_of=a)
    # the provider knows one redirect URI: the shared public URL (a's)
    b.public_url = a.url
    replica_provider = ConnectProvider(tmp_path, [callback_url(a)])
    guard = Introspecting(replica_provider)
    old_guard = guarded_echo._server.valid_bearers  # noqa: SLF001 - restore the module's guard
    for g in (a, b):
        use_provider(g, replica_provider)
    try:
        a.start()
        b.start()
        tenant = unique("rep")
        with browser_client() as client:
            authorize = start_flow(client, connect_link(a, tenant))
            back = provider_walk(client, authorize, callback_url(a))
            # deliver the provider's redirect to the other replica (same browser cookies)
            r = client.get(back.replace(a.url, b.url, 1))
            assert r.status_code == 200 and "is connected" in r.text, r.text[:400]
        token = a.token(a.create_client(tenant=tenant, integrations=["gh"]))
        guarded_echo.guard(guard)  # type: ignore[arg-type]
        r = a.proxy("GET", "/guarded/x", token)
        assert r.status_code == 200, describe(r)
        assert replica_provider.active(injected_bearer(r))
    finally:
        guarded_echo.guard(old_guard)
        b.stop()
        a.stop()
        replica_provider.close()



def test_replicas_on_openbao_redeem_a_racing_callback_once(tmp_path: Path, guarded_echo: EchoUpstream) -> None:
    """Two replicas on one OpenBao (the production store): the same callback delivered to
    both at once is redeemed by exactly one (KV v2 check-and-set), and either serves it."""
    from concurrent.futures import ThreadPoolExecutor

    from openbao import OpenBao

    bao = OpenBao(tmp_path)
    vault = {"backend": "vault", "sync_interval_seconds": 1, "vault": {"address": bao.url, "timeout_ms": 2000, "max_retries": 1}}
    a = connect_gate(tmp_path / "a", guarded_echo.url)
    b = connect_gate(tmp_path / "b", guarded_echo.url, replica_of=a)
    b.public_url = a.url
    provider = ConnectProvider(tmp_path, [callback_url(a)])
    for g in (a, b):
        use_provider(g, provider)
        g.extra_sections["store"] = vault
        g.extra_env["VAULT_TOKEN"] = bao.token
    try:
        a.start()
        b.start()
        tenant = unique("vrep")
        with browser_client() as client:
            authorize = start_flow(client, connect_link(b, tenant))
            back = provider_walk(client, authorize, callback_url(a))
            binder = next(c.value for c in client.cookies.jar if c.name == "credgate_flow")

        def deliver(gate: Credgate) -> int:
            with browser_client() as c:
                c.cookies.set("credgate_flow", binder)
                return c.get(back.replace(a.url, gate.url, 1)).status_code

        with ThreadPoolExecutor(4) as pool:
            codes = sorted(pool.map(deliver, [a, b, a, b]))
        assert codes == [200, 400, 400, 400], codes
        assert len(provider.code_redemptions()) == 1, provider.code_redemptions()
        for g in (a, b):
            meta = g.admin("GET", f"/api/admin/credentials/{tenant}/gh")
            assert meta.status_code == 200 and meta.json()["credential"]["status"] == "active", describe(meta)
    finally:
        b.stop()
        a.stop()
        provider.close()
        bao.close()
