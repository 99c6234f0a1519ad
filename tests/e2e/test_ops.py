"""The ops listener and process lifecycle: health, readiness, metrics, graceful shutdown."""

from __future__ import annotations

import time
from collections.abc import Callable

from echo_upstream import EchoUpstream
from support import ECHO_INTEGRATIONS, Credgate, describe, http, sse_events, unique


def test_health_ready_metrics(gate: Credgate) -> None:
    t = unique("ops")
    gate.put_bearer(t, "echo", f"c-{unique('x')}")
    client = gate.create_client(tenant=t, integrations=ECHO_INTEGRATIONS)
    assert gate.proxy("GET", "/echo/m", gate.token(client)).status_code == 200
    with http() as c:
        h = c.get(f"{gate.ops_url}/healthz")
        r = c.get(f"{gate.ops_url}/readyz")
        m = c.get(f"{gate.ops_url}/metrics")
        on_proxy = c.get(f"{gate.url}/metrics")
    assert h.status_code == 200, describe(h)
    assert r.status_code == 200, describe(r)
    assert isinstance(r.json(), dict) and r.json(), f"/readyz should name its components: {r.text!r}"
    assert m.status_code == 200, describe(m)
    for name in (
        "credgate_http_requests_total",
        "credgate_tokens_issued_total",
        "credgate_http_request_duration_seconds",
    ):
        assert name in m.text, f"{name} missing from /metrics"
    assert on_proxy.status_code != 200 or "credgate_" not in on_proxy.text, "metrics exposed on the proxy listener"


def test_sigterm_drains_inflight_stream_then_exits_0(make_gate: Callable[..., Credgate], echo: EchoUpstream) -> None:
    gate = make_gate()
    t = unique("drain")
    gate.put_bearer(t, "echo", f"c-{unique('x')}")
    token = gate.token(gate.create_client(tenant=t, integrations=ECHO_INTEGRATIONS))
    n = 6
    got: list[dict] = []
    for event in sse_events(gate, f"/echo/sse?n={n}&delay=0.25&id={unique('d')}", token):
        got.append(event)
        if len(got) == 1:
            assert gate.proc is not None
            gate.proc.send_signal(15)
    assert [e["i"] for e in got] == list(range(n)), f"in-flight stream cut at SIGTERM: {got}"
    code = gate.stop()
    assert code == 0, f"exit status after SIGTERM: {code}"


def test_sigterm_idle_exits_0_quickly(make_gate: Callable[..., Credgate]) -> None:
    gate = make_gate()
    assert gate.proc is not None
    start = time.monotonic()
    gate.proc.send_signal(15)
    gate.proc.wait(timeout=10)
    assert gate.proc.returncode == 0
    assert time.monotonic() - start < 5


def test_rate_limit_per_tenant(make_gate: Callable[..., Credgate], echo: EchoUpstream) -> None:
    slow = "slowpoke"
    gate = make_gate(**{f"rate_limit.tenants.{slow}": {"per_second": 1, "burst": 2}})
    gate.put_bearer(slow, "echo", f"c-{unique('x')}")
    token = gate.token(gate.create_client(tenant=slow, integrations=ECHO_INTEGRATIONS))
    statuses, limited = [], None
    for _ in range(6):
        r = gate.proxy("GET", "/echo/rl", token)
        statuses.append(r.status_code)
        if r.status_code == 429:
            limited = r
            break
    assert limited is not None, f"no 429 after burst 2 at 1/s: {statuses}"
    assert statuses[:2] == [200, 200], statuses
    body = limited.json()
    assert body["error"]["code"] == "RATE_LIMITED", body
    for h in ("retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"):
        assert h in limited.headers, f"{h} missing: {dict(limited.headers)}"
    # another tenant is not affected
    other = unique("fast")
    gate.put_bearer(other, "echo", f"c-{unique('x')}")
    tok2 = gate.token(gate.create_client(tenant=other, integrations=ECHO_INTEGRATIONS))
    assert gate.proxy("GET", "/echo/rl", tok2).status_code == 200
