"""Connect links and callbacks under attack (docs/connect.md), against the real provider
(oidc-provider, tests/oidc/connect_provider.mjs): forged, malformed, expired and
cross-integration links; unknown, replayed, racing and other-browser states; the provider's
`error=access_denied` (the person pressed Cancel on its consent page); a wrong `iss`
(RFC 9207). Each stores nothing, and an answer carrying a code never reaches the provider's
token endpoint unless everything checked out.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from connect_support import (
    ConnectProvider,
    browser_client,
    callback_url,
    chromium,
    connect_gate,
    connect_link,
    forms,
    provider_walk,
    query,
    screenshot,
    start_flow,
    use_provider,
)
from echo_upstream import EchoUpstream
from support import Credgate, unique


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Credgate, ConnectProvider, str]]:
    work = tmp_path_factory.mktemp("connect-tamper")
    echo = EchoUpstream()
    gate = connect_gate(work / "gate", echo.url)
    provider = ConnectProvider(work, [callback_url(gate)])
    use_provider(
        gate,
        provider,
        {
            "gh": provider.integration(),
            "gh2": provider.integration(),
            "gh-wrongiss": provider.integration(issuer="https://issuer.example"),
        },
    )
    try:
        gate.start()
        # minted first, checked by the last test once a minute has passed
        expiring = connect_link(gate, unique("exp"), expiresInMinutes=1)
        yield gate, provider, expiring
    finally:
        gate.stop()
        provider.close()
        echo.close()


def _nothing_stored(gate: Credgate, tenant: str, integration: str = "gh") -> None:
    r = gate.admin("GET", f"/api/admin/credentials/{tenant}/{integration}")
    assert r.status_code == 404, f"a credential was stored: {r.text[:300]}"


def _binder(client) -> str:  # noqa: ANN001 - httpx.Client
    return next(c.value for c in client.cookies.jar if c.name == "credgate_flow")


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_forged_malformed_and_cross_integration_links(world: tuple[Credgate, ConnectProvider, str]) -> None:
    gate, _, _ = world
    tenant = unique("forge")
    link = connect_link(gate, tenant)
    value = query(link)["link"]
    _, payload, tag = value.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["t"] == tenant and claims["i"] == "gh"
    other = unique("victim")
    cases = {
        # another tenant with the original tag
        f"v1.{_b64({**claims, 't': other})}.{tag}": "not issued by credgate",
        # a later expiry with the original tag
        f"v1.{_b64({**claims, 'e': claims['e'] + 86400})}.{tag}": "not issued by credgate",
        # a tag of our own making
        f"v1.{payload}.{_b64({'x': 1})}": "not issued by credgate",
        "v1.garbage": "malformed",
        value[:-5]: "",  # cut short: malformed or forged, never accepted
    }
    with browser_client() as client:
        for bad, why in cases.items():
            r = client.get(f"{gate.url}/connect/gh", params={"link": bad})
            assert r.status_code == 400 and r.headers["content-type"].startswith("text/html"), r.text[:300]
            assert why in r.text, (why, r.text[:600])
            assert "credgate_flow" not in r.headers.get("set-cookie", "")
        # the genuine link, for another integration's page
        r = client.get(f"{gate.url}/connect/gh2", params={"link": value})
        assert r.status_code == 400 and "another integration" in r.text, r.text[:500]
        # and for another integration's Connect button (with a valid CSRF token)
        page = client.get(link)
        (_, fields), *_ = forms(page.text)
        r = client.post(f"{gate.url}/connect/gh2", data=fields)
        assert r.status_code == 400 and "another integration" in r.text and "location" not in r.headers
        forged = next(iter(cases))
        r = client.post(f"{gate.url}/connect/gh", data={**fields, "link": forged})
        assert r.status_code == 400 and "location" not in r.headers
    for t in (tenant, other):
        for i in ("gh", "gh2"):
            _nothing_stored(gate, t, i)


def test_unknown_replayed_other_browser_and_racing_states(world: tuple[Credgate, ConnectProvider, str]) -> None:
    gate, provider, _ = world
    tenant = unique("state")
    before = len(provider.code_redemptions())
    with browser_client() as mine, browser_client() as theirs:
        authorize = start_flow(mine, connect_link(gate, tenant))
        back = provider_walk(mine, authorize, callback_url(gate))
        q = query(back)
        assert q["state"] == query(authorize)["state"] and q["code"] and q["iss"] == provider.issuer
        # another browser (no binder cookie, or its own) delivers this browser's answer
        theirs_link = connect_link(gate, unique("theirs"))
        start_flow(theirs, theirs_link)  # gives `theirs` a binder cookie of its own
        r = theirs.get(back)
        assert r.status_code == 400 and "another browser" in r.text, r.text[:400]
        _nothing_stored(gate, tenant)
        # an unknown state with this browser's cookie
        forged = back.replace(q["state"], q["state"][:-4] + ("AAAA" if not q["state"].endswith("AAAA") else "BBBB"))
        r = mine.get(forged)
        assert r.status_code == 400 and "unknown" in r.text, r.text[:400]
        assert len(provider.code_redemptions()) == before, "a refused callback reached the provider"
        _nothing_stored(gate, tenant)
        # two callbacks at once with the right cookie: one redeems, the other is refused
        jar = {"credgate_flow": _binder(mine)}

        def deliver(_: int) -> tuple[int, str]:
            with browser_client() as c:
                c.cookies.update(jar)
                r = c.get(back)
                return r.status_code, r.text

        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(deliver, range(4)))
        codes = sorted(s for s, _ in results)
        assert codes == [200, 400, 400, 400], [(s, t[:200]) for s, t in results]
        assert len(provider.code_redemptions()) == before + 1, provider.code_redemptions()
        # replayed later: refused, nothing new at the provider
        r = mine.get(back)
        assert r.status_code == 400, r.text[:400]
        assert len(provider.code_redemptions()) == before + 1
    assert gate.admin("GET", f"/api/admin/credentials/{tenant}/gh").status_code == 200
    logs = gate.logs() + gate.audit_path.read_text()
    assert q["code"] not in logs and q["state"] not in logs, "the code or state reached a log"


def test_provider_access_denied_stores_nothing(world: tuple[Credgate, ConnectProvider, str]) -> None:
    gate, provider, _ = world
    tenant = unique("deny")
    before = len(provider.code_redemptions())
    with browser_client() as client:
        authorize = start_flow(client, connect_link(gate, tenant))
        back = provider_walk(client, authorize, callback_url(gate), abort=True)
        assert query(back)["error"] == "access_denied", back
        r = client.get(back)
        assert r.status_code == 400 and "access_denied" in r.text, r.text[:400]
        # the state is spent: the same answer again is refused as already completed
        r = client.get(back)
        assert r.status_code == 400 and "access_denied" not in r.text
    _nothing_stored(gate, tenant)
    assert len(provider.code_redemptions()) == before


def test_wrong_iss_stores_nothing(world: tuple[Credgate, ConnectProvider, str]) -> None:
    gate, provider, _ = world
    tenant = unique("iss")
    before = len(provider.code_redemptions())
    with browser_client() as client:
        authorize = start_flow(client, connect_link(gate, tenant, "gh-wrongiss"))
        back = provider_walk(client, authorize, callback_url(gate))
        assert query(back)["iss"] == provider.issuer  # the real provider's, not the configured one
        r = client.get(back)
        assert r.status_code == 400 and "issuer mismatch" in r.text, r.text[:400]
    _nothing_stored(gate, tenant, "gh-wrongiss")
    assert len(provider.code_redemptions()) == before, "a code with the wrong iss was redeemed"
    # and an answer without iss at all, for an integration that sets `issuer`
    tenant = unique("noiss")
    with browser_client() as client:
        authorize = start_flow(client, connect_link(gate, tenant))
        back = provider_walk(client, authorize, callback_url(gate))
        r = client.get(back.replace("&iss=", "&x=").replace("?iss=", "?x="))
        assert r.status_code == 400 and "issuer mismatch" in r.text, r.text[:400]
    _nothing_stored(gate, tenant)


def test_provider_error_text_is_escaped_in_the_browser(world: tuple[Credgate, ConnectProvider, str], tmp_path: Path) -> None:
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.by import By

    gate, provider, _ = world
    tenant = unique("esc")
    evil = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    with browser_client() as client:
        authorize = start_flow(client, connect_link(gate, tenant))
        state = query(authorize)["state"]
        r = client.get(f"{gate.url}/connect/callback", params={"state": state, "error": evil, "iss": provider.issuer})
        assert r.status_code == 400
        assert "<script>" not in r.text and "&lt;script&gt;" in r.text, r.text
    # the same in a real browser, with a fresh flow bound to its cookie
    with browser_client() as client:
        authorize = start_flow(client, connect_link(gate, tenant))
        state = query(authorize)["state"]
        binder = _binder(client)
    driver = chromium(tmp_path)
    try:
        driver.get(f"{gate.url}/settings")  # any credgate page, to set a cookie for its origin
        driver.add_cookie({"name": "credgate_flow", "value": binder, "path": "/connect/callback"})
        from urllib.parse import urlencode

        driver.get(f"{gate.url}/connect/callback?" + urlencode({"state": state, "error": evil, "iss": provider.issuer}))
        text = driver.find_element(By.TAG_NAME, "body").text
        assert evil in text, text  # shown as text
        screenshot(driver, tmp_path, "connect-error-page")
        assert not driver.find_elements(By.CSS_SELECTOR, "main script, main img")
        try:
            driver.switch_to.alert
            raise AssertionError("a script from the provider's error ran")
        except NoAlertPresentException:
            pass
    finally:
        driver.quit()
    _nothing_stored(gate, tenant)


def test_expired_link_is_refused(world: tuple[Credgate, ConnectProvider, str]) -> None:
    """Last in the module: the link minted at its start (1 minute) has expired by now."""
    gate, _, expiring = world
    deadline = time.monotonic() + 75
    with browser_client() as client:
        while True:
            r = client.get(expiring)
            if r.status_code == 400:
                break
            assert r.status_code == 200 and time.monotonic() < deadline, r.text[:300]
            time.sleep(1)
        assert "expired" in r.text, r.text[:400]
