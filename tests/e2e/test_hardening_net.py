"""Hostile network traffic (issue #13, docs/RELIABILITY.md "Hardening catalogue"): silent and
HTTP/2-preface-only connections, idle HTTP/2 connections, stalled request bodies, admin bodies
sent before authentication, `X-Forwarded-For` behind a trusted proxy (throttles, `allowedIps`
on every endpoint, junk entries), the bootstrap admin token (length, throttling), `/readyz`
wording, the audit file's mode, and forwarding headers that must not reach the upstream.

Every socket has a timeout; every wait is bounded by a few times the short timeouts below.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import httpx
import pytest
from echo_upstream import EchoUpstream
from support import CREDGATE_BIN, Client, Credgate, describe, http, oauth_error, route, spec_error, unique

HEADER_TIMEOUT = 2  # proxy.header_read_timeout_seconds
BODY_TIMEOUT = 2  # proxy.body_read_timeout_seconds
MAX_FAILURES = 3  # oauth.max_failures_per_address
MAX_CONNECTIONS = 8
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def _sections(trusted: list[str]) -> dict[str, dict[str, Any]]:
    return {
        "proxy": {
            "header_read_timeout_seconds": HEADER_TIMEOUT,
            "body_read_timeout_seconds": BODY_TIMEOUT,
            "max_connections": MAX_CONNECTIONS,
            "trusted_proxies": trusted,
        },
        "oauth": {"max_failures_per_address": MAX_FAILURES},
    }


def _start(tmp: Path, echo: EchoUpstream, trusted: list[str]) -> Credgate:
    g = Credgate(tmp, [route("echo", "/echo", echo.url)], _sections(trusted))
    g.start()
    return g


@pytest.fixture(scope="module")
def direct(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream) -> Iterator[Credgate]:
    """Trusts no proxy: the TCP peer is the caller."""
    g = _start(tmp_path_factory.mktemp("direct"), echo, [])
    yield g
    g.stop()


@pytest.fixture(scope="module")
def behind(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream) -> Iterator[Credgate]:
    """Behind an ingress: 127.0.0.1 is a trusted proxy, so `X-Forwarded-For` names callers."""
    g = _start(tmp_path_factory.mktemp("behind"), echo, ["127.0.0.1/32"])
    yield g
    g.stop()


@pytest.fixture
def fresh(tmp_path: Path, echo: EchoUpstream) -> Iterator[Credgate]:
    """A gate of the test's own (throttle counters start at zero)."""
    g = _start(tmp_path / "fresh", echo, ["127.0.0.1/32"])
    yield g
    g.stop()


def _xff(ip: str) -> dict[str, str]:
    return {"X-Forwarded-For": ip}


def _token(g: Credgate, client: Client, ip: str | None = None) -> str:
    with http() as c:
        r = c.post(
            f"{g.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client.client_id, client.client_secret),
            headers=_xff(ip) if ip else {},
        )
    assert r.status_code == 200, describe(r)
    return r.json()["access_token"]


def _connect(g: Credgate, timeout: float = 10.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", g.proxy_port), timeout=timeout)
    s.settimeout(timeout)
    return s


def _closed_within(s: socket.socket, seconds: float) -> bool:
    """Reads (and ignores) whatever comes until the peer closes; False if it is still open
    after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        s.settimeout(left)
        try:
            if s.recv(65536) == b"":
                return True
        except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
            return True
        except TimeoutError:
            return False


def _raw_request(g: Credgate, head: bytes, body: bytes = b"", wait: float = 10.0) -> tuple[float, bytes]:
    """Sends `head` (and `body`), then reads the answer until the peer closes or `wait`
    passes. Returns (seconds until the first byte of the answer, the bytes read)."""
    s = _connect(g, wait)
    try:
        t0 = time.monotonic()
        s.sendall(head + body)
        got = b""
        first = None
        deadline = t0 + wait
        while time.monotonic() < deadline:
            s.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                break
            if not chunk:
                break
            if first is None:
                first = time.monotonic() - t0
            got += chunk
            if b"\r\n\r\n" in got:
                head_end = got.index(b"\r\n\r\n")
                length = _content_length(got[:head_end])
                if length is not None and len(got) >= head_end + 4 + length:
                    break
        return (first if first is not None else float("inf")), got
    finally:
        s.close()


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def _status(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), f"no HTTP answer: {answer[:200]!r}"
    return int(answer[9:12])


def _header(answer: bytes, name: str) -> str | None:
    head = answer.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n")[1:]:
        n, _, v = line.partition(b":")
        if n.strip().lower() == name.encode():
            return v.strip().decode()
    return None


# ----- 1. connections that never ask --------------------------------------------------------


def test_silent_and_preface_only_connections_are_closed_and_the_port_stays_reachable(direct: Credgate) -> None:
    """Twice `max_connections` sockets that send nothing or only the HTTP/2 preface: each
    accepted one is closed after the header timeout, and a real request gets through."""
    socks: list[socket.socket] = []
    try:
        for i in range(2 * MAX_CONNECTIONS):
            s = _connect(direct)
            if i % 2:
                s.sendall(H2_PREFACE)
            socks.append(s)
        t0 = time.monotonic()
        # The port answers while the hostile sockets hold (or wait for) every slot.
        with httpx.Client(timeout=httpx.Timeout(4 * HEADER_TIMEOUT + 5), trust_env=False) as c:
            r = c.get(f"{direct.url}/.well-known/oauth-authorization-server")
        assert r.status_code == 200, describe(r)
        assert time.monotonic() - t0 < 4 * HEADER_TIMEOUT + 5
        still_open = [i for i, s in enumerate(socks) if not _closed_within(s, 3 * HEADER_TIMEOUT + 2)]
        assert not still_open, f"sockets {still_open} (odd: preface only) were never closed"
    finally:
        for s in socks:
            s.close()


def test_tls_connections_that_never_ask_are_closed_at_the_header_timeout(
    tmp_path: Path, echo: EchoUpstream
) -> None:
    """With TLS the header timeout counts from the accept: a silent socket does not get the
    whole TLS handshake timeout on top, and a finished handshake with no request is closed."""
    from cryptography.hazmat.primitives import serialization
    from certs import make_ca, write_leaf

    ca_key, ca_cert = make_ca()
    ca = tmp_path / "ca.pem"
    ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    write_leaf(ca_key, ca_cert, tmp_path)
    sections = _sections([])
    sections["proxy"].update(tls_cert=str(tmp_path / "tls.crt"), tls_key=str(tmp_path / "tls.key"))
    g = Credgate(tmp_path / "tls", [route("echo", "/echo", echo.url)], sections)
    g.public_url = f"https://127.0.0.1:{g.proxy_port}"
    g.start()
    try:
        silent = _connect(g)
        ctx = ssl.create_default_context(cafile=str(ca))
        shook = ctx.wrap_socket(_connect(g), server_hostname="127.0.0.1")
        try:
            t0 = time.monotonic()
            assert _closed_within(silent, HEADER_TIMEOUT + 3), "silent socket still open"
            assert _closed_within(shook, HEADER_TIMEOUT + 3), "TLS connection without a request still open"
            assert time.monotonic() - t0 < HEADER_TIMEOUT + 3
        finally:
            silent.close()
            shook.close()
    finally:
        g.stop()


def _h2_client(g: Credgate) -> tuple[socket.socket, h2.connection.H2Connection]:
    s = _connect(g)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return s, conn


def _h2_pump(s: socket.socket, conn: h2.connection.H2Connection, seconds: float) -> tuple[list[Any], bool]:
    """Feeds what arrives to `conn` (PINGs are answered, like a live client) for up to
    `seconds`; returns the events and whether the server closed the connection."""
    events: list[Any] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            data = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return events, True
        if not data:
            return events, True
        if conn.state_machine.state == h2.connection.ConnectionState.CLOSED:
            continue  # GOAWAY seen: only the end of the connection is left to see
        try:
            events.extend(conn.receive_data(data))
        except h2.exceptions.ProtocolError:
            # The server's PING after its GOAWAY (graceful shutdown): the h2 library
            # refuses frames once closed; only the end of the connection is left to see.
            events.append("goaway+ping")
            continue
        out = conn.data_to_send()
        if out:
            try:
                s.sendall(out)
            except (BrokenPipeError, ConnectionResetError):
                return events, True
        if any(isinstance(e, h2.events.StreamEnded) for e in events) and seconds <= 5:
            return events, False
    return events, False


def test_an_idle_http2_connection_is_closed(direct: Credgate) -> None:
    s, conn = _h2_client(direct)
    try:
        conn.send_headers(
            1,
            [
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", f"127.0.0.1:{direct.proxy_port}"),
                (":path", "/.well-known/jwks.json"),
            ],
            end_stream=True,
        )
        s.sendall(conn.data_to_send())
        events, closed = _h2_pump(s, conn, 5)
        assert any(isinstance(e, h2.events.ResponseReceived) for e in events), events
        assert not closed
        # Now idle, though answering every ping: GOAWAY, then the connection ends.
        t0 = time.monotonic()
        events, closed = _h2_pump(s, conn, 3 * HEADER_TIMEOUT + 6)
        assert any(isinstance(e, h2.events.ConnectionTerminated) or e == "goaway+ping" for e in events), events
        assert closed, f"still open {time.monotonic() - t0:.1f}s after going idle: {events}"
    finally:
        s.close()


# ----- 2. bodies: authenticated first, read within a deadline -----------------------------


@pytest.mark.parametrize("expect", [False, True])
def test_an_unauthenticated_admin_request_is_refused_without_waiting_for_its_body(
    direct: Credgate, expect: bool
) -> None:
    head = (
        b"POST /api/admin/oauth/clients HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong-token\r\n"
        + (b"Expect: 100-continue\r\n" if expect else b"")
        + b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"
    )
    # With `Expect: 100-continue` the caller sends nothing until invited, and is not invited.
    first, answer = _raw_request(direct, head, b"" if expect else b"{", wait=BODY_TIMEOUT + 3)
    assert _status(answer) == 401, answer[:300]
    assert first < BODY_TIMEOUT / 2, f"answered after {first:.2f}s: the body was waited for"
    assert _header(answer, "connection") == "close", answer[:300]


@pytest.mark.parametrize("where", ["admin", "oauth", "replay"])
def test_a_stalled_body_gets_408_and_the_connection_is_closed(direct: Credgate, where: str) -> None:
    auth = f"Bearer {direct.admin_token}"
    path = "/api/admin/oauth/clients"
    if where == "oauth":
        path, auth = "/oauth/token", "Basic Y2ctMDAwMDAwMDAwMDAwMDAwMDAwMDE6eA=="
    elif where == "replay":
        tenant = unique("t")
        client = direct.create_client(tenant=tenant, integrations=["echo"])
        direct.put_bearer(tenant, "echo", f"up-{unique('x')}")
        path, auth = "/echo/anything", f"Bearer {direct.token(client)}"
    head = (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n"
        f"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    ).encode()
    first, answer = _raw_request(direct, head, b'{"name": "slo', wait=BODY_TIMEOUT + 5)
    assert answer, f"{where}: no answer within {BODY_TIMEOUT + 5}s for a stalled body"
    assert _status(answer) == 408, answer[:400]
    assert BODY_TIMEOUT - 0.5 < first < BODY_TIMEOUT + 3, first
    assert _header(answer, "connection") == "close", answer[:400]
    body = answer.split(b"\r\n\r\n", 1)[1]
    if where == "oauth":
        assert b'"error":"request_timeout"' in body, body
    else:
        assert b'"code":"REQUEST_TIMEOUT"' in body, body


# ----- 3, 4, 6. one client address for every endpoint ---------------------------------------


def test_token_throttle_counts_the_forwarded_caller_not_the_ingress(fresh: Credgate) -> None:
    client = fresh.create_client(tenant=unique("t"))
    attacker = "198.51.100.66"
    with http() as c:
        codes = [
            c.post(
                f"{fresh.url}/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(client.client_id, "wrong"),
                headers=_xff(attacker),
            ).status_code
            for _ in range(MAX_FAILURES + 2)
        ]
    assert codes[-1] == 429, codes
    # Another caller behind the same ingress still gets its token.
    _token(fresh, client, "198.51.100.77")


def _client_with_ips(g: Credgate, scopes: list[str], ips: list[str]) -> Client:
    return g.create_client(tenant=unique("t"), scopes=scopes, integrations=["echo"], allowedIps=ips)


def test_allowed_ips_at_the_token_endpoint_follow_trusted_proxies(behind: Credgate) -> None:
    client = _client_with_ips(behind, ["mcp"], ["203.0.113.0/24"])
    _token(behind, client, "203.0.113.5")
    with http() as c:
        r = c.post(
            f"{behind.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client.client_id, client.client_secret),
        )
    assert r.status_code == 403 and oauth_error(r)["error"] == "access_denied", describe(r)


def test_allowed_ips_apply_to_the_admin_api_and_generate_token(behind: Credgate) -> None:
    admin = _client_with_ips(behind, ["admin"], ["203.0.113.0/24"])
    token = _token(behind, admin, "203.0.113.5")
    target = behind.create_client(tenant=unique("t"))
    gen = f"/api/admin/oauth/clients/{target.client_id}/generate-token"
    inside, outside = _xff("203.0.113.5"), _xff("192.0.2.9")
    r = behind.admin("GET", "/api/admin/oauth/clients", token=token, headers=inside)
    assert r.status_code == 200, describe(r)
    for method, path, kw in [
        ("GET", "/api/admin/oauth/clients", {}),
        ("POST", gen, {"json": {"expirationDays": 1}}),
    ]:
        r = behind.admin(method, path, token=token, headers=outside, **kw)
        assert r.status_code == 403 and spec_error(r)["code"] == "FORBIDDEN", describe(r)
    r = behind.admin("POST", gen, token=token, headers=inside, json={"expirationDays": 1})
    assert r.status_code == 200, describe(r)


def test_allowed_ips_apply_to_introspection(behind: Credgate) -> None:
    rs = _client_with_ips(behind, ["introspect"], ["203.0.113.0/24"])
    admin = _client_with_ips(behind, ["admin"], ["203.0.113.0/24"])
    admin_token = _token(behind, admin, "203.0.113.5")
    subject = _token(behind, rs, "203.0.113.5")
    with http() as c:
        for kw in (
            {"auth": (rs.client_id, rs.client_secret)},
            {"headers": {"Authorization": f"Bearer {admin_token}"}},
        ):
            headers = dict(kw.get("headers", {}))
            ok = c.post(f"{behind.url}/oauth/introspect", data={"token": subject},
                        auth=kw.get("auth"), headers={**headers, **_xff("203.0.113.5")})
            assert ok.status_code == 200 and ok.json()["active"] is True, describe(ok)
            bad = c.post(f"{behind.url}/oauth/introspect", data={"token": subject},
                         auth=kw.get("auth"), headers={**headers, **_xff("192.0.2.9")})
            assert bad.status_code == 403 and oauth_error(bad)["error"] == "access_denied", describe(bad)


@pytest.mark.parametrize("xff", ["203.0.113.5, not-an-ip", "203.0.113.5, 203.0.113.6:443", "203.0.113.5,"])
def test_a_forwarded_entry_that_is_not_an_ip_makes_the_address_unknown(behind: Credgate, xff: str) -> None:
    tenant = unique("t")
    client = behind.create_client(tenant=tenant, integrations=["echo"], allowedIps=["203.0.113.0/24"])
    behind.put_bearer(tenant, "echo", f"up-{unique('x')}")
    token = _token(behind, client, "203.0.113.5")
    ok = behind.proxy("GET", "/echo/x", token, headers=_xff("203.0.113.5"))
    assert ok.status_code == 200, describe(ok)
    r = behind.proxy("GET", "/echo/x", token, headers=_xff(xff))
    assert r.status_code == 403 and spec_error(r)["code"] == "FORBIDDEN", describe(r)
    assert spec_error(r)["details"]["ip"] == "unknown", r.json()
    with http() as c:
        t = c.post(
            f"{behind.url}/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(client.client_id, client.client_secret),
            headers=_xff(xff),
        )
    assert t.status_code == 403 and oauth_error(t)["error"] == "access_denied", describe(t)
    # A client without allowedIps is not affected by an unknown address.
    free = behind.create_client(tenant=tenant, integrations=["echo"])
    assert behind.proxy("GET", "/echo/x", _token(behind, free, xff), headers=_xff(xff)).status_code == 200


# ----- 11. the bootstrap admin token ---------------------------------------------------------


def test_wrong_admin_tokens_are_throttled_per_address(fresh: Credgate) -> None:
    attacker, other = _xff("198.51.100.66"), _xff("198.51.100.77")
    codes = [
        fresh.admin("GET", "/api/admin/oauth/clients", token=fresh.admin_token[:-1] + "x", headers=attacker).status_code
        for _ in range(MAX_FAILURES + 1)
    ]
    assert codes[:MAX_FAILURES] == [401] * MAX_FAILURES and codes[-1] == 429, codes
    r = fresh.admin("GET", "/api/admin/oauth/clients", headers=attacker)
    assert r.status_code == 429 and r.headers.get("retry-after"), describe(r)
    assert spec_error(r)["code"] == "RATE_LIMITED"
    assert fresh.admin("GET", "/api/admin/oauth/clients", headers=other).status_code == 200
    # Its own counters: the attacker's address can still get client tokens.
    _token(fresh, fresh.create_client(tenant=unique("t")), "198.51.100.66")


def test_a_short_admin_token_is_a_start_up_error(tmp_path: Path, echo: EchoUpstream) -> None:
    g = Credgate(tmp_path / "short", [route("echo", "/echo", echo.url)])
    g.config_path.write_text(g.config_text())
    env = {**g.env(), "CREDGATE_ADMIN_TOKEN": "a" * 31}
    p = subprocess.run(
        [str(CREDGATE_BIN), "serve", "--config", str(g.config_path)],
        env=env, cwd=g.workdir, capture_output=True, timeout=20, stdin=subprocess.DEVNULL,
    )
    assert p.returncode != 0, p.stderr[-2000:]
    assert b"CREDGATE_ADMIN_TOKEN must be at least 32 characters" in p.stderr, p.stderr[-2000:]
    assert b"a" * 31 not in p.stderr + p.stdout


# ----- 19. what the ops port, the audit file and the upstream get ----------------------------


def test_readyz_names_the_failing_component_without_the_stores_words(fresh: Credgate) -> None:
    store_path = str(fresh.store_path)
    os.remove(fresh.store_path)
    with http() as c:
        r = c.get(f"{fresh.ops_url}/readyz")
    assert r.status_code == 503, describe(r)
    body = r.json()
    assert body["components"]["store"]["status"] == "failing", body
    assert "error" not in body["components"]["store"], body
    assert store_path not in r.text, r.text
    deadline = time.monotonic() + 5
    while "readiness: store check failed" not in fresh.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "readiness: store check failed" in fresh.logs(), "the detail belongs in the log"


def test_the_audit_file_is_owner_only(direct: Credgate) -> None:
    mode = stat.S_IMODE(direct.audit_path.stat().st_mode)
    assert mode == 0o600, oct(mode)


def _echoed_headers(g: Credgate, headers: dict[str, str]) -> dict[str, str]:
    tenant = unique("t")
    client = g.create_client(tenant=tenant, integrations=["echo"])
    g.put_bearer(tenant, "echo", f"up-{unique('x')}")
    r = g.proxy("GET", "/echo/h", g.token(client), headers=headers)
    assert r.status_code == 200, describe(r)
    return {k.lower(): v for k, v in r.json()["headers"]}


FORWARDING = {
    "Forwarded": "for=203.0.113.9;proto=https",
    "X-Real-IP": "203.0.113.9",
    "Cookie": "mcp_session=abc; credgate_connect=secret1; __Host-credgate-csrf=secret2",
}


def test_forwarding_headers_from_an_untrusted_peer_do_not_reach_the_upstream(direct: Credgate) -> None:
    seen = _echoed_headers(direct, FORWARDING)
    assert "forwarded" not in seen and "x-real-ip" not in seen, seen
    assert seen.get("cookie") == "mcp_session=abc", seen


def test_forwarding_headers_from_a_trusted_proxy_pass(behind: Credgate) -> None:
    seen = _echoed_headers(behind, FORWARDING)
    assert seen.get("forwarded") == FORWARDING["Forwarded"], seen
    assert seen.get("x-real-ip") == FORWARDING["X-Real-IP"], seen
    assert seen.get("cookie") == "mcp_session=abc", seen


def test_body_read_timeout_must_be_positive(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    for value, ok in ((0, False), (5, True)):
        cfg.write_text(f"[proxy]\nbody_read_timeout_seconds = {value}\n")
        p = subprocess.run(
            [str(CREDGATE_BIN), "check-config", "--config", str(cfg)],
            capture_output=True, timeout=20, stdin=subprocess.DEVNULL,
        )
        assert (p.returncode == 0) == ok, (value, p.stdout[-500:], p.stderr[-500:])
        if ok:
            assert b"body_read_timeout_seconds = 5" in p.stdout, p.stdout[-2000:]
