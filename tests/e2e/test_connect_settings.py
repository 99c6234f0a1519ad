"""The tenant settings page (docs/connect.md) in a real browser (Debian chromium via
selenium) against the real provider (oidc-provider): a settings link opened from another
site (as from a mail or chat message) still lands on `/settings` with its SameSite=Strict
session; Connect goes through the provider's own login and consent; Refresh now; Disconnect
revokes at the provider. Over plain HTTP: one tenant's session never shows or touches
another's, forged sessions and missing CSRF tokens are refused, no session is a 401 page.
Also the static `connect_url` of an integration credgate cannot connect itself.
Screenshots go to the test's tmp dir and tests/e2e/artifacts/ (not committed).
"""

from __future__ import annotations

import base64
import json
import threading
from contextlib import closing
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from connect_support import (
    ConnectProvider,
    browser_client,
    browser_provider_login,
    callback_url,
    chromium,
    connect_gate,
    forms,
    injected_bearer,
    screenshot,
    settings_link,
    use_provider,
    wait_for,
)
from echo_upstream import EchoUpstream
from oidc_provider import Introspecting
from support import Credgate, describe, route, spec_error, unique

STATIC_CONNECT = "https://example.com/connect-static"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Credgate, ConnectProvider]]:
    work = tmp_path_factory.mktemp("connect-settings")
    echo = EchoUpstream()
    gate = connect_gate(work / "gate", echo.url, extra_routes=[route("static", "/static", echo.url)])
    provider = ConnectProvider(work, [callback_url(gate)])
    echo.guard(Introspecting(provider))  # type: ignore[arg-type]
    use_provider(gate, provider, {"gh": provider.integration(), "static": {"connect_url": STATIC_CONNECT}})
    try:
        gate.start()
        yield gate, provider
    finally:
        gate.stop()
        provider.close()
        echo.close()


class OtherSite:
    """A page on another site (http://localhost:<port>, credgate is on 127.0.0.1) linking
    to the settings link, like a mail or chat message."""

    def __init__(self, target: str) -> None:
        page = f'<!doctype html><p>Your settings: <a id="go" href="{target}">open</a></p>'.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://localhost:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _row(driver, integration: str):  # noqa: ANN001, ANN202 - selenium types
    from selenium.webdriver.common.by import By

    for tr in driver.find_elements(By.CSS_SELECTOR, "tbody tr"):
        if tr.find_element(By.CSS_SELECTOR, "td .iname").text == integration:
            return tr
    raise AssertionError(f"no row for {integration}: {driver.page_source[:2000]}")


def _click(driver, integration: str, label: str) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By

    for b in _row(driver, integration).find_elements(By.CSS_SELECTOR, "button"):
        if b.text == label:
            b.click()
            return
    raise AssertionError(f"no {label} button for {integration}")


def test_settings_page_in_the_browser(world: tuple[Credgate, ConnectProvider], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    gate, provider = world
    tenant = unique("shop")
    token = gate.token(gate.create_client(tenant=tenant, integrations=["gh", "static"]))
    site = OtherSite(settings_link(gate, tenant))
    driver = chromium(tmp_path)
    try:
        driver.get(site.url)
        driver.find_element(By.ID, "go").click()
        wait_for(driver, lambda d: d.current_url == f"{gate.url}/settings" and "Connections" in d.page_source)
        assert tenant in driver.find_element(By.CSS_SELECTOR, "header").text
        assert "not connected" in _row(driver, "gh").text
        assert "not connected" in _row(driver, "static").text
        assert not _row(driver, "static").find_elements(By.CSS_SELECTOR, "button")  # nothing credgate can do
        (elsewhere,) = _row(driver, "static").find_elements(By.CSS_SELECTOR, "a")
        assert elsewhere.get_attribute("href") == STATIC_CONNECT
        screenshot(driver, tmp_path, "settings-not-connected")

        _click(driver, "gh", "Connect")
        browser_provider_login(driver, provider, login="carol")
        wait_for(driver, lambda d: "is connected" in d.page_source)
        driver.find_element(By.LINK_TEXT, "Back to connections").click()
        wait_for(driver, lambda d: d.current_url == f"{gate.url}/settings")
        row = _row(driver, "gh")
        assert "connected" in row.text and "not connected" not in row.text, row.text
        assert "UTC" in row.text  # the expiry
        assert [b.text for b in row.find_elements(By.CSS_SELECTOR, "button")] == ["Reconnect", "Refresh now", "Disconnect"]
        screenshot(driver, tmp_path, "settings")

        r = gate.proxy("GET", "/guarded/x", token)
        assert r.status_code == 200, describe(r)
        access = injected_bearer(r)
        assert provider.introspect(access)["sub"] == "carol"

        _click(driver, "gh", "Refresh now")
        wait_for(driver, lambda d: "Credential refreshed." in d.page_source)
        assert gate.admin("GET", f"/api/admin/credentials/{tenant}/gh").json()["credential"]["refreshCount"] == 1
        assert "not yet" not in _row(driver, "gh").text  # last refresh shown

        r = gate.proxy("GET", "/guarded/x", token)
        access = injected_bearer(r)
        _click(driver, "gh", "Disconnect")
        wait_for(driver, lambda d: "Disconnected." in d.page_source)
        assert "not connected" in _row(driver, "gh").text
        assert provider.introspect(access) == {"active": False}
        assert gate.admin("GET", f"/api/admin/credentials/{tenant}/gh").status_code == 404
    finally:
        driver.quit()
        site.close()


def _session(gate: Credgate, tenant: str):  # noqa: ANN202 - httpx.Client
    client = browser_client()
    r = client.get(settings_link(gate, tenant))
    assert r.status_code == 200 and "set-cookie" in r.headers, r.text[:300]
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Max-Age=28800" in cookie, cookie
    return client


def _csrf(client, gate: Credgate) -> str:  # noqa: ANN001
    page = client.get(f"{gate.url}/settings")
    assert page.status_code == 200, page.text[:300]
    return next(f["csrf"] for _, f in forms(page.text) if "csrf" in f)


def test_one_tenant_never_sees_or_touches_another(world: tuple[Credgate, ConnectProvider]) -> None:
    gate, _ = world
    a, b = unique("ta"), unique("tb")
    gate.put_credential(b, "gh", {"access_token": "b-secret-token", "refresh_token": "b-rt", "expires_in": 3600})
    with closing(_session(gate, a)) as ca, closing(_session(gate, b)) as cb:
        page_a = ca.get(f"{gate.url}/settings").text
        assert a in page_a and b not in page_a and "b-secret-token" not in page_a
        assert "not connected" in page_a
        page_b = cb.get(f"{gate.url}/settings").text
        assert b in page_b and "b-secret-token" not in page_b and "b-rt" not in page_b
        # a's Disconnect acts on a only
        r = ca.post(f"{gate.url}/settings/gh/disconnect", data={"csrf": _csrf(ca, gate)})
        assert r.status_code == 303, r.text[:300]
        assert gate.admin("GET", f"/api/admin/credentials/{b}/gh").status_code == 200
        # no CSRF token, or a's token with b's session: refused, nothing changes
        r = cb.post(f"{gate.url}/settings/gh/disconnect", data={"other": "x"})
        assert r.status_code == 403, r.text[:300]
        r = cb.post(f"{gate.url}/settings/gh/disconnect", data={"csrf": _csrf(ca, gate)})
        assert r.status_code == 403, r.text[:300]
        assert gate.admin("GET", f"/api/admin/credentials/{b}/gh").status_code == 200
        # a's session cookie rewritten to name b: refused
        value = next(c.value for c in ca.cookies.jar if c.name == "credgate_session")
        _, payload, tag = value.split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        forged_payload = base64.urlsafe_b64encode(json.dumps({**claims, "t": b}).encode()).rstrip(b"=").decode()
        with browser_client() as forger:
            forger.cookies.set("credgate_session", f"v1.{forged_payload}.{tag}")
            r = forger.get(f"{gate.url}/settings")
            assert r.status_code == 401 and b not in r.text, r.text[:300]
    with browser_client() as nobody:
        r = nobody.get(f"{gate.url}/settings")
        assert r.status_code == 401 and r.headers["content-type"].startswith("text/html"), r.text[:300]
        r = nobody.post(f"{gate.url}/settings/gh/disconnect", data={"csrf": "x"})
        assert r.status_code == 401
        r = nobody.get(f"{gate.url}/settings/open", params={"link": "v1.e30.AAAA"})
        assert r.status_code == 400 and "set-cookie" not in r.headers
        for method, path, status in (
            ("GET", "/connect", 404),
            ("GET", "/settings/nothing", 404),
            ("DELETE", "/connect/gh", 405),
            ("GET", "/settings/gh/disconnect", 405),
            ("POST", "/settings", 405),
        ):
            r = nobody.request(method, f"{gate.url}{path}")
            assert r.status_code == status and r.headers["content-type"].startswith("text/html"), (path, r.status_code)


def test_static_connect_url_when_credgate_cannot_connect(world: tuple[Credgate, ConnectProvider]) -> None:
    gate, _ = world
    tenant = unique("static")
    token = gate.token(gate.create_client(tenant=tenant, integrations=["static"]))
    r = gate.proxy("GET", "/static/x", token)
    assert r.status_code == 403 and spec_error(r)["details"]["connect_url"] == STATIC_CONNECT, describe(r)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    r = gate.proxy("POST", "/static/mcp", token, json=call)
    assert r.status_code == 200 and r.json()["error"]["data"]["elicitations"][0]["url"] == STATIC_CONNECT, describe(r)
    # and the admin API mints no connect link for it
    r = gate.admin("POST", f"/api/admin/tenants/{tenant}/integrations/static/connect-link", json={})
    assert r.status_code == 400 and "authorize_url" in spec_error(r)["message"], describe(r)
    for body in ({"expiresInMinutes": 0}, {"expiresInMinutes": 1441}, {"bogus": 1}):
        r = gate.admin("POST", f"/api/admin/tenants/{tenant}/integrations/gh/connect-link", json=body)
        assert r.status_code == 400, describe(r)
    r = gate.admin("POST", f"/api/admin/tenants/{tenant}/settings-link", json={"expiresInMinutes": 1440})
    assert r.status_code == 201 and r.json()["success"] is True and r.json()["expiresAt"], describe(r)
    r = gate.admin("POST", f"/api/admin/tenants/{tenant}/settings-link", token=None)
    assert r.status_code == 401


def test_sighup_applies_connect_settings(tmp_path: Path) -> None:
    """An integration given `authorize_url` by a reload can be connected at once."""
    import signal
    import time

    echo = EchoUpstream()
    gate = connect_gate(tmp_path / "gate", echo.url)
    provider = ConnectProvider(tmp_path, [callback_url(gate)])
    integration = provider.integration()
    del integration["authorize_url"]
    use_provider(gate, provider, {"gh": integration})
    try:
        gate.start()
        tenant = unique("hup")
        path = f"/api/admin/tenants/{tenant}/integrations/gh/connect-link"
        assert gate.admin("POST", path, json={}).status_code == 400
        use_provider(gate, provider)
        gate.config_path.write_text(gate.config_text())
        assert gate.proc is not None
        gate.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while gate.admin("POST", path, json={}).status_code != 201:
            assert time.monotonic() < deadline, "reload did not apply authorize_url"
            time.sleep(0.1)
        url = gate.admin("POST", path, json={}).json()["url"]
        with browser_client() as c:
            assert c.get(url).status_code == 200
    finally:
        gate.stop()
        provider.close()
        echo.close()
