"""Traffic limits and TLS (issue #6): TLS on the proxy listener with a test CA (ALPN h2 and
HTTP/1.1, X-Forwarded-Proto https, a renewed certificate picked up without a restart), a slow
upstream answered with 504, a client that never finishes its headers dropped, a silent
stream cut by the idle timeout."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from certs import make_ca, write_leaf
from support import Credgate, describe, route, spec_error, unique


def _served_serial(port: int, ca: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            der = t.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der).serial_number


def test_tls_end_to_end_with_reload(make_gate, echo, tmp_path: Path) -> None:
    ca_key, ca_cert = make_ca()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    first = write_leaf(ca_key, ca_cert, tmp_path)
    gate: Credgate = make_gate(
        routes=[route("echo", "/echo", echo.url)],
        start=False,
        proxy={"tls_cert": str(tmp_path / "tls.crt"), "tls_key": str(tmp_path / "tls.key")},
    )
    gate.public_url = f"https://127.0.0.1:{gate.proxy_port}"
    gate.start()
    url = f"https://127.0.0.1:{gate.proxy_port}"
    tenant = unique("tl")
    with httpx.Client(verify=str(ca), timeout=10, trust_env=False) as c:
        admin = {"Authorization": f"Bearer {gate.admin_token}"}
        r = c.put(f"{url}/api/admin/credentials/{tenant}/echo", json={"apiKey": "k-tls-1"}, headers=admin)
        assert r.status_code in (200, 201), describe(r)
        r = c.post(
            f"{url}/api/admin/oauth/clients",
            json={"name": "t", "tenant": tenant, "scopes": ["mcp"], "allowedIntegrations": ["echo"]},
            headers=admin,
        )
        assert r.status_code == 201, describe(r)
        cl = r.json()["client"]
        r = c.post(f"{url}/oauth/token", data={"grant_type": "client_credentials"}, auth=(cl["clientId"], cl["clientSecret"]))
        assert r.status_code == 200, describe(r)
        token = r.json()["access_token"]
        r = c.get(f"{url}/echo/x", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, describe(r)
        seen = dict((k.lower(), v) for k, v in r.json()["headers"])
        assert seen["x-forwarded-proto"] == "https"
        assert seen["authorization"] == "Bearer k-tls-1"
    with httpx.Client(verify=str(ca), http2=True, timeout=10, trust_env=False) as c:
        r = c.get(f"{url}/.well-known/jwks.json")
        assert r.status_code == 200 and r.http_version == "HTTP/2", (r.http_version, describe(r))
    # plaintext to the TLS port gets no HTTP answer
    with socket.create_connection(("127.0.0.1", gate.proxy_port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert not s.recv(4096).startswith(b"HTTP/1.1 200")

    assert _served_serial(gate.proxy_port, ca) == first
    second = write_leaf(ca_key, ca_cert, tmp_path)
    deadline = time.monotonic() + 25
    while _served_serial(gate.proxy_port, ca) != second and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _served_serial(gate.proxy_port, ca) == second, "renewed certificate not picked up"
    # A broken renewal keeps the working certificate.
    (tmp_path / "tls.key").write_text("garbage")
    time.sleep(12)
    assert _served_serial(gate.proxy_port, ca) == second
    assert gate.proc is not None and gate.proc.poll() is None


class _Silent:
    """Accepts connections and reads, but never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


def test_slow_upstream_is_504(make_gate) -> None:
    silent = _Silent()
    try:
        gate: Credgate = make_gate(
            routes=[route("slow", "/slow", f"http://127.0.0.1:{silent.port}")],
            proxy={"upstream_timeout_seconds": 1},
        )
        tenant = unique("sl")
        gate.put_bearer(tenant, "slow", "c-slow")
        token = gate.token(gate.create_client(tenant=tenant, integrations=["slow"]))
        started = time.monotonic()
        r = gate.proxy("GET", "/slow/x", token)
        assert r.status_code == 504, describe(r)
        assert spec_error(r)["code"] == "UPSTREAM_TIMEOUT"
        assert time.monotonic() - started < 5
    finally:
        silent.close()


def test_client_that_never_finishes_its_headers_is_dropped(make_gate, echo) -> None:
    gate: Credgate = make_gate(routes=[route("echo", "/echo", echo.url)], proxy={"header_read_timeout_seconds": 1})
    with socket.create_connection(("127.0.0.1", gate.proxy_port), timeout=10) as s:
        s.sendall(b"GET /echo/x HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        data = s.recv(4096)  # blocks until credgate gives up on us
        waited = time.monotonic() - started
    assert waited < 5, f"slow client held the connection {waited:.1f}s"
    assert data == b"" or data.startswith(b"HTTP/1.1 408"), data[:80]
    # the server still serves others
    assert httpx.get(f"{gate.url}/.well-known/jwks.json", timeout=5).status_code == 200


def test_silent_stream_is_cut_by_the_idle_timeout(make_gate, echo) -> None:
    gate: Credgate = make_gate(routes=[route("echo", "/echo", echo.url)], proxy={"stream_idle_timeout_seconds": 1})
    tenant = unique("id")
    gate.put_bearer(tenant, "echo", "c-idle")
    token = gate.token(gate.create_client(tenant=tenant, integrations=["echo"]))
    got: list[dict] = []
    started = time.monotonic()
    try:
        with httpx.Client(timeout=10, trust_env=False) as c:
            with c.stream(
                "GET",
                f"{gate.url}/echo/sse?n=3&delay=3&id={unique('s')}",
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        got.append(json.loads(line[6:]))
    except httpx.HTTPError:
        pass  # the cut shows as an incomplete chunked body
    assert len(got) < 3, "an idle stream outlived the idle timeout"
    assert time.monotonic() - started < 8
