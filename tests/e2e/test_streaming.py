"""Streaming through credgate: SSE events reach the caller as the upstream sends them, and
a caller that goes away closes the upstream stream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from contextlib import closing

import anyio
import httpx
import pytest
from echo_upstream import EchoUpstream
from support import ECHO_INTEGRATIONS, Credgate, describe, mcp_session, sse_events, unique


def _echo_token(gate: Credgate) -> str:
    tenant = unique("sse")
    gate.put_bearer(tenant, "echo", f"echo-cred-{unique('x')}")
    return gate.token(gate.create_client(tenant=tenant, integrations=ECHO_INTEGRATIONS))


def test_sse_events_arrive_as_sent(gate: Credgate, echo: EchoUpstream) -> None:
    token = _echo_token(gate)
    n, delay = 5, 0.5
    stream_id = unique("s")
    arrivals: list[tuple[float, dict]] = []
    with httpx.Client(timeout=httpx.Timeout(10.0), trust_env=False) as c:
        with c.stream(
            "GET",
            f"{gate.url}/echo/events/sse?n={n}&delay={delay}&id={stream_id}",
            headers={"Authorization": f"Bearer {token}", "Accept": "text/event-stream"},
        ) as r:
            assert r.status_code == 200, describe(r)
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line.startswith("data: "):
                    arrivals.append((time.time(), json.loads(line[6:])))
    assert [e["i"] for _, e in arrivals] == list(range(n)), arrivals
    sent = echo.streams[stream_id]["sent"]
    first_arrival = arrivals[0][0]
    # buffering would deliver the first event only after the last was sent
    assert first_arrival < sent[-1] - delay, (
        f"first event arrived {first_arrival - sent[0]:.3f}s after it was sent; the last was sent "
        f"{sent[-1] - sent[0]:.3f}s after the first: the response was buffered"
    )
    for arrived, ev in arrivals:
        assert arrived - ev["sent"] < 0.35, f"event {ev['i']} took {arrived - ev['sent']:.3f}s through credgate"


def test_caller_disconnect_closes_upstream_stream(gate: Credgate, echo: EchoUpstream) -> None:
    token = _echo_token(gate)
    stream_id = unique("cancel")
    with closing(sse_events(gate, f"/echo/events/sse?n=200&delay=0.05&id={stream_id}", token)) as events:
        for got, _ in enumerate(events, 1):
            if got == 2:
                break
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not echo.streams[stream_id]["disconnected"]:
        time.sleep(0.05)
    state = echo.streams[stream_id]
    assert state["disconnected"], (
        f"upstream kept streaming after the caller left: sent {len(state['sent'])} of 200 events, done={state['done']}"
    )
    assert not state["done"]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
def test_mcp_progress_notifications_stream(gate: Credgate, take_mcp_token: Callable[[], str], mode: str) -> None:
    tenant = unique("prog")
    gate.put_bearer(tenant, "github", take_mcp_token())
    client = gate.create_client(tenant=tenant)
    n, delay = 4, 0.5
    res = anyio.run(
        lambda: mcp_session(f"{gate.url}/github/mcp", client, issuer=gate.url, mode=mode, countdown=(n, delay))
    )
    assert res.countdown is not None
    sent = res.countdown["sent"]
    assert len(sent) == n
    assert [p for _, p, _ in res.progress] == [float(i + 1) for i in range(n)], res.progress
    first_arrival = res.progress[0][0]
    assert first_arrival < sent[-1] - delay, (
        f"first progress notification arrived {first_arrival - sent[0]:.3f}s after it was sent, "
        f"the last was sent at +{sent[-1] - sent[0]:.3f}s: the stream was buffered"
    )
    assert len(res.logs) == n, f"log notifications: {res.logs}"


def test_large_chunked_request_body_reaches_upstream_intact(gate: Credgate, echo: EchoUpstream) -> None:
    import hashlib

    token = _echo_token(gate)
    chunk = bytes(range(256)) * 256  # 64 KiB
    count = 48  # 3 MiB, under the default max_body_bytes (10 MiB)

    def gen():  # noqa: ANN202 - no Content-Length: sent chunked
        for _ in range(count):
            yield chunk

    r = gate.proxy("POST", "/echo/upload", token, content=gen())
    assert r.status_code == 200, describe(r)
    assert r.json()["body_len"] == len(chunk) * count
    assert r.json()["body_sha256"] == hashlib.sha256(chunk * count).hexdigest()
