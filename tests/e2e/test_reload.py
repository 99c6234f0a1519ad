"""SIGHUP reloads routes, rate limits and integrations without dropping connections; a bad
new config is refused, logged, and the running one kept."""

from __future__ import annotations

import signal
import threading
import time

from echo_upstream import EchoUpstream
from support import Credgate, describe, eventually, route, sse_events, unique


def test_sighup_applies_a_good_config_and_refuses_a_bad_one(make_gate, echo: EchoUpstream) -> None:
    gate: Credgate = make_gate(routes=[route("echo", "/echo", echo.url)])
    tenant = unique("rl")
    gate.put_bearer(tenant, "echo", f"c-{unique('x')}")
    token = gate.token(gate.create_client(tenant=tenant, integrations=["echo", "later"]))
    assert gate.proxy("GET", "/later/x", token).status_code == 404
    # No route uses `later` yet: a credential for it is refused (docs/http-api.md).
    r = gate.admin("PUT", f"/api/admin/credentials/{tenant}/later", json={"access_token": "c-later"})
    assert r.status_code == 400, describe(r)

    # An SSE stream stays open across both reloads.
    events: list[dict] = []
    failed: list[BaseException] = []

    def stream() -> None:
        try:
            for event in sse_events(gate, f"/echo/sse?n=12&delay=0.25&id={unique('s')}", token, timeout=20.0):
                events.append(event)
        except BaseException as e:  # reported below
            failed.append(e)

    t = threading.Thread(target=stream)
    t.start()
    assert eventually(lambda: len(events) >= 1), "stream did not start"

    # Good config: a new route and a tight tenant rate limit.
    gate.routes = [route("echo", "/echo", echo.url), route("later", "/later", echo.url)]
    gate.extra_sections["rate_limit"] = {"tenants": {tenant: {"per_second": 1, "burst": 2}}}
    gate.config_path.write_text(gate.config_text())
    assert gate.proc is not None
    gate.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: gate.proxy("GET", "/later/x", token).status_code != 404), "new route not served"
    gate.put_bearer(tenant, "later", f"c-{unique('y')}")  # now that a route uses it
    statuses = [gate.proxy("GET", "/echo/x", token).status_code for _ in range(6)]
    assert 429 in statuses, f"reloaded rate limit not applied: {statuses}"

    # Bad config: refused, logged, the running one kept.
    gate.config_path.write_text(gate.config_text() + "\n[proxy]\nbogus_key = 1\n")
    gate.proc.send_signal(signal.SIGHUP)
    assert eventually(lambda: "new configuration refused" in gate.logs()), gate.log_tail()
    time.sleep(1.1)  # let the 1/s bucket refill a token
    assert gate.proxy("GET", "/later/x", token).status_code == 200
    assert gate.proc.poll() is None, "credgate died on a bad config"

    t.join(timeout=20)
    assert not failed, failed
    assert [e["i"] for e in events] == list(range(12)), "stream dropped across reloads"
