"""Scheduled refresh and replica races with a real rotating provider (oidc-provider): a refreshed
credential stays scheduled; two replicas refresh once per due period; a replica whose read
predates another's refresh re-reads under the lease instead of presenting a consumed token."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from echo_upstream import EchoUpstream
from oidc_provider import RATE, OidcProvider, connect_seeded, oidc_integration, oidc_routes
from openbao import OpenBao
from support import Credgate

# The `oidc`, `vault_pair` and `bao` fixtures are in conftest.py.
pytestmark = pytest.mark.usefixtures("oidc_reset")


def test_scheduled_refresh_keeps_the_credential_scheduled(tmp_path: Path, echo: EchoUpstream, oidc: OidcProvider) -> None:
    """One credgate. Tokens live 3600 s, due 3594 s ahead: a refresh every ~6 s."""
    period, window = 6, 15
    g = Credgate(tmp_path / "one", oidc_routes(echo),
                 {"integrations.gh": oidc_integration(oidc), "refresh": {"interval_seconds": 1, "before_seconds": 3600 - period}, **RATE},
                 {"GH_CLIENT_SECRET": oidc.client_secret})
    g.start()
    try:
        seeded = oidc.seed()
        connect_seeded(g, seeded, expires_in=3600 - period + 1)
        start = time.time()
        time.sleep(window)
        times = [round(e["at"] - start, 2) for e in oidc.refreshes(seeded["grantId"])]
        assert len(times) >= window // period, f"refreshes at {times} s in a {window} s window, one due every {period} s"
    finally:
        g.stop()


def test_two_replicas_scheduled_refresh_once_per_due_period(
    vault_pair: Callable[..., Credgate], oidc: OidcProvider
) -> None:
    """Access tokens live 3600 s and are due `before_seconds` = 3594 s ahead, i.e. 6 s after
    each refresh; both replicas tick every second and both have the credential in their
    schedule. One refresh per due period means consecutive refreshes ≥ ~5 s apart (a tick
    is 1 s), not two refreshes (one per replica) per period."""
    period, window = 6, 16
    sched = {"refresh": {"interval_seconds": 1, "before_seconds": 3600 - period}}
    a = vault_pair(**sched)
    seeded = oidc.seed()
    gid = seeded["grantId"]
    # due at once on both: A through its own write, B through its start-up scan
    connect_seeded(a, seeded, expires_in=3600 - period + 1)
    b = vault_pair(replica_of=a, **sched)
    start = time.time()
    time.sleep(window)
    calls = oidc.refreshes(gid)
    times = [round(e["at"] - start, 2) for e in calls]
    assert all(e["status"] == 200 for e in calls), f"a scheduled refresh failed: {calls}"
    assert not oidc.revoked(gid), "a replica presented a consumed refresh token (reuse detection revoked the grant)"
    gaps = [y - x for x, y in zip(times, times[1:])]
    assert calls, "the scheduler never refreshed"
    assert all(g >= period - 1.5 for g in gaps), (
        f"refreshes at {times} s: more than one per {period} s due period (two replicas both refreshed)"
    )
    assert len(calls) <= window // period + 1, f"{len(calls)} refreshes in {window} s at {times}"
    succ = [g.audit_path.read_text().count("refresh-success") for g in (a, b)]
    assert sum(succ) == len(calls), f"audit refresh-success per replica {succ} vs provider {len(calls)}"


# ----- the lease race: a stale credential read before the lease is taken -------------------

import threading  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402

import httpx  # noqa: E402
from support import describe, unique  # noqa: E402


class SlowLeaseReads:
    """A reverse proxy in front of OpenBao that delays GETs of refresh-lease records
    (a slow Vault or a GC pause between credgate's two reads)."""

    def __init__(self, target: str, delay: float) -> None:
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "GET" and "leases" in self.path and outer.delay:
                    time.sleep(outer.delay)
                hdrs = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length", "connection")}
                r = httpx.request(self.command, target + self.path, headers=hdrs, content=body, timeout=10, trust_env=False)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_LIST = _any

        self.delay = 0.0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_replica_refreshing_with_a_stale_read_revokes_the_grant(
    tmp_path: Path, bao: OpenBao, echo: EchoUpstream, oidc: OidcProvider
) -> None:
    """Refresher::refresh loads the credential, THEN takes the lease, and refreshes with what
    it loaded. If the other replica refreshes and releases the lease in between, this one
    presents the consumed refresh token: oidc-provider's reuse detection revokes the grant."""
    slow = SlowLeaseReads(bao.url, 0.0)

    def make(addr: str, replica_of: Credgate | None = None) -> Credgate:
        g = Credgate(
            tmp_path / f"g{addr[-5:]}", oidc_routes(echo),
            {"store": {"backend": "vault", "sync_interval_seconds": 1,
                       "vault": {"address": addr, "timeout_ms": 5000, "max_retries": 1}},
             "integrations.gh": oidc_integration(oidc), **RATE},
            {"VAULT_TOKEN": bao.token, "GH_CLIENT_SECRET": oidc.client_secret},
            replica_of=replica_of,
        )
        g.start()
        return g

    a = make(bao.url)
    try:
        seeded = oidc.seed(revoke_access=True)
        gid = seeded["grantId"]
        _, token = connect_seeded(a, seeded)
        b = make(slow.url, replica_of=a)
        try:
            slow.delay = 1.5
            out: dict[str, httpx.Response] = {}
            tb = threading.Thread(target=lambda: out.__setitem__("b", b.proxy("GET", f"/guarded/{unique('rb')}", token)))
            tb.start()
            time.sleep(0.5)  # B has loaded the credential and is waiting on its lease read
            out["a"] = a.proxy("GET", f"/guarded/{unique('ra')}", token)
            tb.join(timeout=20)
            calls = oidc.refreshes(gid)
            assert out["a"].status_code == 200, describe(out["a"])
            assert out["b"].status_code == 200, f"replica B: {describe(out['b'])}; provider saw {calls}"
            assert len(calls) == 1, calls
            assert not oidc.revoked(gid)
        finally:
            b.stop()
    finally:
        a.stop()
        slow.close()
