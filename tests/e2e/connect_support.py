"""Peers for the connect tests (tests/e2e/test_connect*.py): the real OAuth provider
(`tests/oidc/connect_provider.mjs`, oidc-provider with its own login and consent pages,
PKCE required, rotating refresh tokens, revocation, introspection), a real browser
(Debian chromium + chromium-driver through selenium), a plain-HTTP walk through the
provider's login and consent forms (for tests that must hold the callback URL instead of
delivering it), and a credgate configured to connect to the provider.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx
import pytest
from oidc_provider import NodeProvider
from support import REPO, Credgate, route

ARTIFACTS = REPO / "tests" / "e2e" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CLIENT_ID = "credgate"
SCOPES = ["openid", "offline_access", "repo"]


class ConnectProvider(NodeProvider):
    """`node tests/oidc/connect_provider.mjs` on a free port; issuer `http://localhost:<port>`."""

    def __init__(self, workdir: Path, redirect_uris: list[str]) -> None:
        self.client_secret = secrets.token_urlsafe(24)
        self.upstream_secret = secrets.token_urlsafe(24)
        args = {
            "clientSecret": self.client_secret,
            "upstreamSecret": self.upstream_secret,
            "redirectUris": redirect_uris,
        }
        super().__init__(workdir, "connect_provider.mjs", [json.dumps(args)], "connect-provider")

    def integration(self, **extra: Any) -> dict[str, Any]:
        """An `[integrations.X]` section for this provider."""
        i: dict[str, Any] = {
            "authorize_url": f"{self.issuer}/auth",
            "token_url": f"{self.issuer}/token",
            "revocation_url": f"{self.issuer}/token/revocation",
            "issuer": self.issuer,
            "client_id": CLIENT_ID,
            "auth_method": "client_secret_post",
            "scopes": SCOPES,
            "authorize_params": {"prompt": "consent"},
        }
        i.update(extra)
        return i

    def revoke(self, token: str) -> None:
        """Revokes one token at the provider (as credgate's OAuth app)."""
        r = self._http.post(
            f"{self.issuer}/token/revocation",
            data={"token": token, "client_id": CLIENT_ID, "client_secret": self.client_secret},
        )
        assert r.status_code == 200, f"revocation: {r.status_code} {r.text[:300]}"

    def drop_access(self, token: str) -> None:
        """Makes the provider forget one access token (its refresh token stays good)."""
        r = self._http.post(f"{self.issuer}/_test/drop-access", json={"token": token})
        assert r.status_code == 200 and r.json()["dropped"] is True, r.text[:300]

    def stats(self) -> dict[str, Any]:
        r = self._http.get(f"{self.issuer}/_test/stats")
        assert r.status_code == 200
        return r.json()

    def code_redemptions(self) -> list[dict[str, Any]]:
        return [t for t in self.stats()["tokenRequests"] if t["grant_type"] == "authorization_code"]


def connect_gate(
    workdir: Path,
    echo_url: str,
    *,
    extra_routes: list[dict[str, Any]] | None = None,
    replica_of: Credgate | None = None,
) -> Credgate:
    """A credgate (not started) with route `/guarded` → echo for integration `gh`; give it
    its provider with `use_provider` (the provider needs the gate's callback URL first)."""
    routes = [route("gh", "/guarded", echo_url, strip_prefix=False), *(extra_routes or [])]
    sections: dict[str, dict[str, Any]] = {"rate_limit.default": {"per_second": 1000, "burst": 1000}}
    return Credgate(workdir, routes, sections, replica_of=replica_of)


def callback_url(gate: Credgate) -> str:
    return f"{gate.public_url or gate.url}/connect/callback"


def use_provider(gate: Credgate, provider: ConnectProvider, integrations: dict[str, dict[str, Any]] | None = None) -> None:
    """Configures integrations (default: `gh` at `provider`) with the provider's app secret."""
    integrations = integrations if integrations is not None else {"gh": provider.integration()}
    for k, v in integrations.items():
        gate.extra_sections[f"integrations.{k}"] = v
        gate.extra_env[f"{k.upper().replace('-', '_')}_CLIENT_SECRET"] = provider.client_secret


def connect_link(gate: Credgate, tenant: str, integration: str = "gh", **body: Any) -> str:
    r = gate.admin("POST", f"/api/admin/tenants/{tenant}/integrations/{integration}/connect-link", json=body)
    assert r.status_code == 201, f"connect-link: {r.status_code} {r.text[:300]}"
    return r.json()["url"]


def settings_link(gate: Credgate, tenant: str, **body: Any) -> str:
    r = gate.admin("POST", f"/api/admin/tenants/{tenant}/settings-link", json=body)
    assert r.status_code == 201, f"settings-link: {r.status_code} {r.text[:300]}"
    return r.json()["url"]


def browser_client() -> httpx.Client:
    """An HTTP client with its own cookie jar, like one browser profile."""
    return httpx.Client(timeout=httpx.Timeout(10.0), trust_env=False, follow_redirects=False)


_FORM = re.compile(r'<form[^>]*action="([^"]*)"[^>]*>(.*?)</form>', re.S)
_INPUT = re.compile(r"<input([^>]*)>", re.S)
_ATTR = re.compile(r'(\w+)="([^"]*)"')


def forms(page: str) -> list[tuple[str, dict[str, str]]]:
    """Every form of a page: (action, {name: value} of its inputs)."""
    out = []
    for action, inner in _FORM.findall(page):
        fields = {}
        for attrs in _INPUT.findall(inner):
            a = dict(_ATTR.findall(attrs))
            if "name" in a:
                fields[a["name"]] = html.unescape(a.get("value", ""))
        out.append((html.unescape(action), fields))
    return out


def start_flow(client: httpx.Client, link: str) -> str:
    """Opens a connect link and presses Connect; returns the provider authorization URL."""
    page = client.get(link)
    assert page.status_code == 200, f"connect page: {page.status_code} {page.text[:300]}"
    (action, fields), *_ = forms(page.text)
    r = client.post(urljoin(link, action), data=fields)
    assert r.status_code == 302, f"connect POST: {r.status_code} {r.text[:300]}"
    return r.headers["location"]


def provider_walk(client: httpx.Client, authorize_url: str, callback_prefix: str, *, login: str = "alice", abort: bool = False) -> str:
    """Walks the provider's own login and consent forms over plain HTTP; returns the URL
    the provider sends the browser back to (not fetched). `abort` cancels at consent."""
    url = authorize_url
    for _ in range(20):
        if url.startswith(callback_prefix):
            return url
        r = client.get(url)
        if r.status_code in (302, 303):
            url = urljoin(url, r.headers["location"])
            continue
        assert r.status_code == 200, f"provider page {url}: {r.status_code} {r.text[:300]}"
        (action, fields), *_ = forms(r.text)
        if "login" in fields or 'name="login"' in r.text:
            fields.update(login=login, password="any-password")
        elif abort:
            m = re.search(r'href="([^"]*abort[^"]*)"', r.text)
            assert m, f"no abort link on the consent page: {r.text[:500]}"
            url = urljoin(url, html.unescape(m.group(1)))
            continue
        r = client.post(urljoin(url, action), data=fields)
        assert r.status_code in (302, 303), f"provider form {action}: {r.status_code} {r.text[:300]}"
        url = urljoin(url, r.headers["location"])
    raise AssertionError("the provider never redirected back")


def connect_over_http(gate: Credgate, tenant: str, integration: str = "gh", login: str = "alice") -> httpx.Response:
    """The whole flow without a browser: link → Connect → provider login and consent →
    callback. Returns credgate's answer to the callback."""
    with browser_client() as client:
        authorize = start_flow(client, connect_link(gate, tenant, integration))
        back = provider_walk(client, authorize, f"{gate.public_url or gate.url}/connect/callback", login=login)
        return client.get(back)


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def injected_bearer(resp: httpx.Response) -> str:
    """The bearer token the echo upstream received."""
    values = [v for k, v in resp.json()["headers"] if k.lower() == "authorization"]
    assert len(values) == 1 and values[0].startswith("Bearer "), values
    return values[0][7:]


def audit_events(gate: Credgate, tenant: str) -> list[dict[str, Any]]:
    if not gate.audit_path.exists():
        return []
    out = []
    for line in gate.audit_path.read_text().splitlines():
        e = json.loads(line)
        if e.get("tenant") == tenant:
            out.append(e)
    return out


# ----- the browser ---------------------------------------------------------------------


def chromium(workdir: Path):  # noqa: ANN201 - selenium's WebDriver
    """Headless Debian chromium with a fresh profile, driven by chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing: apt-get install -y chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = workdir / f"chromium-{secrets.token_hex(3)}"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-gpu",
        "--disable-quic",
        "--window-size=1100,760",
        f"--user-data-dir={profile}",
    ):
        opts.add_argument(flag)
    driver = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(20)
    return driver


def wait_for(driver, check, timeout: float = 15.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check(driver):
            return
        time.sleep(0.1)
    raise AssertionError(f"browser: condition not met at {driver.current_url}:\n{driver.page_source[:1500]}")


def browser_provider_login(driver, provider: ConnectProvider, login: str = "alice") -> None:  # noqa: ANN001
    """On the provider's own pages: sign in, then approve on the consent page."""
    from selenium.webdriver.common.by import By

    wait_for(driver, lambda d: d.current_url.startswith(provider.issuer) and d.find_elements(By.NAME, "login"))
    driver.find_element(By.NAME, "login").send_keys(login)
    driver.find_element(By.NAME, "password").send_keys("any-password")
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_for(
        driver,
        lambda d: d.current_url.startswith(provider.issuer)
        and d.find_elements(By.CSS_SELECTOR, "input[name=prompt][value=consent]"),
    )
    driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def screenshot(driver, tmp_path: Path, name: str) -> Path:  # noqa: ANN001
    """Saves a screenshot under the test's tmp dir and tests/e2e/artifacts/ (not committed)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path)), "screenshot failed"
    shutil.copy(path, ARTIFACTS / f"{name}.png")
    return path
