"""Hardening of credgate's own core against hostile peers (issue 13, items 7-10 and 13-17),
each against the real binary and real peers: the Authlib provider (oauth_provider.py), a
stdlib token endpoint for answers no real provider should send, OpenBao, the echo upstream.

Each test names the attack it replays; docs/RELIABILITY.md lists them.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from echo_upstream import EchoUpstream
from oauth_provider import OAuthProvider
from support import Credgate, describe, route, unique

APP_ID = "credgate-app"
MIN_INTERVAL = 3


@pytest.fixture(scope="module")
def provider(echo: EchoUpstream) -> Iterator[OAuthProvider]:
    p = OAuthProvider(APP_ID, secrets.token_urlsafe(24))
    echo.guard(p.valid_access)
    yield p
    echo.guard(None)
    p.close()


@pytest.fixture(autouse=True)
def _provider_ok(provider: OAuthProvider) -> Iterator[None]:
    provider.mode = "ok"
    yield
    provider.mode = "ok"


def _gh_gate(workdir, echo: EchoUpstream, token_url: str, secret: str, **sections: dict) -> Credgate:
    extra = {
        "integrations.gh": {"token_url": token_url, "client_id": APP_ID, "auth_method": "client_secret_post"},
    }
    extra.update(sections)
    return Credgate(
        workdir,
        [route("gh", "/guarded", echo.url, strip_prefix=False)],
        extra,
        {"GH_CLIENT_SECRET": secret},
    )


@pytest.fixture(scope="module")
def hgate(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream, provider: OAuthProvider) -> Iterator[Credgate]:
    g = _gh_gate(
        tmp_path_factory.mktemp("hcore"),
        echo,
        provider.token_url,
        provider.client.client_secret,
        refresh={"min_interval_seconds": MIN_INTERVAL},
    )
    g.start()
    yield g
    g.stop()


def _tenant(gate: Credgate, access: str, refresh: str | None, expires_in: int = 3600) -> tuple[str, str]:
    t = unique("hc")
    cred = {"access_token": access, "token_type": "Bearer", "expires_in": expires_in, "scope": "repo"}
    if refresh is not None:
        cred["refresh_token"] = refresh
    gate.put_credential(t, "gh", cred)
    client = gate.create_client(tenant=t, integrations=["gh"])
    return t, gate.token(client)


def _metric(gate: Credgate, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    import httpx

    text = httpx.get(f"{gate.ops_url}/metrics", timeout=5, trust_env=False).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        if head.split("{")[0] != name:
            continue
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


# ----- item 7: upstream 401s cannot turn every request into a provider call --------------


def test_upstream_401_storm_refreshes_at_most_once_per_interval(
    hgate: Credgate, echo: EchoUpstream, provider: OAuthProvider
) -> None:
    """Attack: an upstream (or a caller who knows it answers 401) makes every request a
    refresh, hammering the provider and rotating the refresh token on each request."""
    a1, r1 = provider.seed(valid=False)
    tenant, token = _tenant(hgate, a1, r1)
    r = hgate.proxy("GET", f"/guarded/{unique('s1')}", token)
    assert r.status_code == 200, describe(r)
    assert len(provider.refreshes_of(r1)) == 1
    before = len(provider.refresh_calls)
    # The upstream now refuses the refreshed token too (revoked behind credgate's back).
    provider.valid_access.clear()
    for i in range(5):
        r = hgate.proxy("GET", f"/guarded/{unique('s2')}/{i}", token)
        assert r.status_code == 401, describe(r)
        # the upstream's own 401 comes back, not one of credgate's
        assert r.json() == {"message": "Bad credentials"}, describe(r)
    assert len(provider.refresh_calls) - before == 0, "a 401 within the interval called the provider"
    # an admin "refresh now" is not limited by the interval
    r = hgate.admin("POST", f"/api/admin/credentials/{tenant}/gh/refresh")
    assert r.status_code == 200, describe(r)
    assert len(provider.refresh_calls) - before == 1
    # after the interval, a 401 may refresh again (and the retry succeeds)
    time.sleep(MIN_INTERVAL + 0.3)
    provider.valid_access.clear()
    r = hgate.proxy("POST", f"/guarded/{unique('s3')}", token, content=b"{}")
    assert r.status_code == 200, describe(r)
    assert len(provider.refresh_calls) - before == 2


# ----- item 8: hostile token endpoint answers ---------------------------------------------


class HostileTokenEndpoint:
    """A token endpoint that answers what `answer` says: a stand-in for a broken or hostile
    provider, which no real provider library would let us send."""

    def __init__(self) -> None:
        self.answer: tuple[str, bytes] = ("json", b"{}")
        self.calls = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.calls += 1
                kind, body = outer.answer
                if kind == "redirect":
                    self.send_response(307)
                    self.send_header("Location", body.decode())
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                if kind == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    try:
                        for i in range(0, len(body), 16384):
                            part = body[i : i + 16384]
                            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                        self.wfile.write(b"0\r\n\r\n")
                    except OSError:
                        pass  # credgate stopped reading: that is the point
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                try:
                    self.wfile.write(body)
                except OSError:
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self._server.daemon_threads = True
        self.token_url = f"http://127.0.0.1:{self._server.server_address[1]}/token"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileTokenEndpoint]:
    h = HostileTokenEndpoint()
    yield h
    h.close()


@pytest.fixture(scope="module")
def hostile_gate(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream, hostile: HostileTokenEndpoint) -> Iterator[Credgate]:
    g = _gh_gate(tmp_path_factory.mktemp("hostile"), echo, hostile.token_url, "s3cret")
    g.routes.append(route("gh", "/plain", echo.url))
    g.start()
    yield g
    g.stop()


def _big_answer(n: int) -> bytes:
    return json.dumps(
        {"access_token": "a" * n, "token_type": "Bearer", "expires_in": 3600, "refresh_token": "r2"}
    ).encode()


@pytest.mark.parametrize(
    "kind,body",
    [
        ("length", _big_answer(2 * 1024 * 1024)),
        ("chunked", _big_answer(2 * 1024 * 1024)),
        ("length", json.dumps({"access_token": "tok\r\nX-Evil: 1", "token_type": "Bearer", "expires_in": 3600}).encode()),
        ("length", json.dumps({"access_token": "caf\u00e9\u0001", "token_type": "Bearer", "expires_in": 3600}).encode()),
    ],
    ids=["oversize-content-length", "oversize-chunked", "crlf-token", "control-char-token"],
)
def test_hostile_provider_answer_is_a_refresh_failure_and_nothing_is_stored(
    hostile_gate: Credgate, echo: EchoUpstream, hostile: HostileTokenEndpoint, kind: str, body: bytes
) -> None:
    """Attack: a provider answers 2 MiB (memory), or a token with CR/LF or control
    characters (every later request would fail with 500)."""
    hostile.answer = (kind, body)
    old = f"old-{secrets.token_hex(8)}"
    tenant, token = _tenant(hostile_gate, old, "r1")
    before = hostile_gate.admin("GET", f"/api/admin/credentials/{tenant}/gh").json()["credential"]
    calls = hostile.calls
    r = hostile_gate.admin("POST", f"/api/admin/credentials/{tenant}/gh/refresh")
    assert hostile.calls == calls + 1, "the provider was not asked"
    assert r.status_code == 503, describe(r)
    after = hostile_gate.admin("GET", f"/api/admin/credentials/{tenant}/gh").json()["credential"]
    assert after["version"] == before["version"] and after["refreshCount"] == before["refreshCount"], (before, after)
    # the credential credgate had keeps working
    marker = unique("hp")
    r = hostile_gate.proxy("GET", f"/plain/{marker}", token)
    assert r.status_code == 200, describe(r)
    assert [v for k, v in r.json()["headers"] if k.lower() == "authorization"] == [f"Bearer {old}"]
    log = hostile_gate.audit_path.read_text()
    assert "X-Evil" not in log and "a" * 1000 not in log


# ----- item 9: a rotated refresh token survives a failed store write ---------------------

FULL_POLICY = 'path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo", "patch"] }'




def test_rotated_refresh_token_survives_a_failed_store_write(
    tmp_path, echo: EchoUpstream, provider: OAuthProvider, bao  # noqa: ANN001
) -> None:
    """Attack/fault: the store refuses the write after the provider rotated the refresh
    token; dropping the new pair would make the next refresh an invalid_grant."""
    bao.client.sys.create_or_update_policy("cg", FULL_POLICY)
    vault_token = bao.client.auth.token.create(policies=["cg"], no_default_policy=False, ttl="1h")["auth"][
        "client_token"
    ]
    g = _gh_gate(
        tmp_path / "vgate",
        echo,
        provider.token_url,
        provider.client.client_secret,
        store={
            "backend": "vault",
            "sync_interval_seconds": 1,
            "vault": {"address": bao.url, "timeout_ms": 2000, "max_retries": 1},
        },
    )
    g.extra_env["VAULT_TOKEN"] = vault_token
    g.start()
    try:
        a1, r1 = provider.seed(valid=False)
        tenant, token = _tenant(g, a1, r1)
        v_before = bao.client.secrets.kv.v2.read_secret_version(path=f"{tenant}/gh", raise_on_deleted_version=True)[
            "data"
        ]["metadata"]["version"]
        read_only = FULL_POLICY + f'\npath "secret/data/{tenant}/*" {{ capabilities = ["read"] }}'

        def break_store() -> None:
            bao.client.sys.create_or_update_policy("cg", read_only)

        provider.after_grant = break_store
        try:
            r = g.proxy("POST", f"/guarded/{unique('pf')}", token, content=b"{}")
        finally:
            provider.after_grant = None
        assert r.status_code == 200, describe(r)
        assert len(provider.refreshes_of(r1)) == 1
        a2 = [v for k, v in r.json()["headers"] if k.lower() == "authorization"][0][7:]
        assert a2 != a1 and a2 in provider.valid_access
        assert _metric(g, "credgate_credential_persist_failures_total", integration="gh") >= 1
        events = [json.loads(x) for x in g.audit_path.read_text().splitlines() if x.strip()]
        failed = [e for e in events if e.get("event", e.get("kind")) == "refresh-persist-failed"]
        assert failed and failed[0].get("tenant") == tenant, events[-5:]
        text = g.audit_path.read_text() + g.logs()
        assert a2 not in text and r1 not in text, "a secret reached the audit log or the logs"
        # Past the cache's sync interval the kept pair is still what credgate injects.
        time.sleep(1.5)
        r = g.proxy("GET", f"/guarded/{unique('pf2')}", token)
        assert r.status_code == 200, describe(r)
        assert [v for k, v in r.json()["headers"] if k.lower() == "authorization"] == [f"Bearer {a2}"]
        # The store comes back: the background write lands.
        bao.client.sys.create_or_update_policy("cg", FULL_POLICY)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            meta = g.admin("GET", f"/api/admin/credentials/{tenant}/gh").json()["credential"]
            if meta.get("refreshCount") == 1:
                break
            time.sleep(0.3)
        assert meta.get("refreshCount") == 1, meta
        assert meta["version"] > v_before
        # The next refresh presents the rotated refresh token, not the consumed one.
        r = g.admin("POST", f"/api/admin/credentials/{tenant}/gh/refresh")
        assert r.status_code == 200, describe(r)
        assert len(provider.refreshes_of(r1)) == 1
        r2 = [t for t, tok in provider.tokens.items() if tok.access_token == a2][0]
        assert len(provider.refreshes_of(r2)) == 1
    finally:
        g.stop()


# ----- item 15: no outbound client follows a redirect --------------------------------------


def test_provider_redirect_is_not_followed(hostile_gate: Credgate, hostile: HostileTokenEndpoint) -> None:
    """Attack: a token endpoint answers 307 to another server, hoping the client secret and
    refresh token follow. (The Vault client's twin is tests/vault_store.rs
    `the_vault_client_never_follows_a_redirect_with_the_token`.)"""
    elsewhere = HostileTokenEndpoint()
    try:
        elsewhere.answer = ("length", json.dumps({"access_token": "stolen", "token_type": "Bearer"}).encode())
        hostile.answer = ("redirect", elsewhere.token_url.encode())
        tenant, _ = _tenant(hostile_gate, "old-token", "r1")
        r = hostile_gate.admin("POST", f"/api/admin/credentials/{tenant}/gh/refresh")
        assert r.status_code == 503, describe(r)
        assert elsewhere.calls == 0, "the refresh followed the provider's redirect"
    finally:
        elsewhere.close()


# ----- item 17: revocations and the change marker on a cas_required mount -----------------


def test_revocation_and_change_marker_are_written_with_check_and_set(
    tmp_path, echo: EchoUpstream, bao  # noqa: ANN001
) -> None:
    """Fault: a KV mount with `cas_required=true` refused credgate's unconditional writes,
    so a revoked token stayed valid and other replicas were not told."""
    bao.client.secrets.kv.v2.configure(cas_required=True, mount_point="secret")
    g = Credgate(
        tmp_path / "casgate",
        [route("echo", "/echo", echo.url)],
        {"store": {"backend": "vault", "vault": {"address": bao.url, "timeout_ms": 2000, "max_retries": 1}}},
        {"VAULT_TOKEN": bao.token},
    )
    g.start()
    try:
        client = g.create_client(tenant=unique("cas"), integrations=["echo"])
        token = g.token(client)

        def active() -> bool:
            r = g.admin("POST", "/oauth/introspect", data={"token": token})
            assert r.status_code == 200, describe(r)
            return r.json()["active"]

        assert active()
        import httpx

        with httpx.Client(timeout=10, trust_env=False) as c:
            r = c.post(f"{g.url}/oauth/revoke", data={"token": token}, auth=(client.client_id, client.client_secret))
        assert r.status_code == 200, describe(r)
        assert not active(), "the revocation was not recorded"
        kv = bao.client.secrets.kv.v2
        marker = kv.read_secret_version(path="_credgate/oauth-changes", mount_point="secret", raise_on_deleted_version=True)
        assert marker["data"]["metadata"]["version"] >= 1
        revs = kv.list_secrets(path="_credgate/revocations", mount_point="secret")["data"]["keys"]
        assert len(revs) == 1, revs
        assert "cannot announce an oauth change" not in g.logs()
    finally:
        g.stop()


# ----- item 16: metrics.tenant_label ---------------------------------------------------------


def test_tenant_label_adds_tenant_to_the_three_families(
    tmp_path, echo: EchoUpstream, provider: OAuthProvider, hgate: Credgate  # noqa: ANN001
) -> None:
    """Contract gap: `metrics.tenant_label = true` was parsed and did nothing."""
    import httpx

    g = _gh_gate(
        tmp_path / "labelled",
        echo,
        provider.token_url,
        provider.client.client_secret,
        metrics={"tenant_label": True},
        **{"rate_limit.default": {"per_second": 1, "burst": 1}},
    )
    g.start()
    try:
        a1, r1 = provider.seed(valid=True)
        tenant, token = _tenant(g, a1, r1)
        assert g.proxy("GET", f"/guarded/{unique('tl')}", token).status_code == 200
        assert g.proxy("GET", f"/guarded/{unique('tl')}", token).status_code == 429
        assert g.admin("POST", f"/api/admin/credentials/{tenant}/gh/refresh").status_code == 200
        text = httpx.get(f"{g.ops_url}/metrics", timeout=5, trust_env=False).text
        assert f'credgate_http_requests_total{{route="gh",status="200",tenant="{tenant}"}} 1' in text, text
        assert f'credgate_rate_limited_total{{tenant="{tenant}"}} 1' in text, text
        assert (
            f'credgate_credential_refresh_total{{integration="gh",result="success",tenant="{tenant}",trigger="admin"}} 1'
            in text
        ), text
    finally:
        g.stop()
    # Without the key, no metric carries a tenant.
    text = httpx.get(f"{hgate.ops_url}/metrics", timeout=5, trust_env=False).text
    assert "tenant=" not in text


# ----- item 13: private_key_jwt assertions are single-use and short-lived ------------------


def _b64u(b: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def test_client_assertion_replay_and_long_lifetime_are_refused(hgate: Credgate) -> None:
    """Attack: an intercepted (or logged) client assertion replayed for an hour; an
    assertion without `jti`, or living longer than 5 minutes."""
    import httpx
    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    priv = ed25519.Ed25519PrivateKey.generate()
    x = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = priv.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    client = hgate.create_client(
        tenant=unique("pkj"), integrations=["gh"], jwks={"keys": [{"kty": "OKP", "crv": "Ed25519", "x": _b64u(x), "kid": "k1"}]}
    )
    cid = client.client_id

    def assertion(**claims: object) -> str:
        now = int(time.time())
        body = {"iss": cid, "sub": cid, "aud": f"{hgate.url}/oauth/token", "iat": now, "exp": now + 300,
                "jti": secrets.token_hex(16)}
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        return jwt.encode(body, pem, algorithm="EdDSA", headers={"kid": "k1"})

    def ask(a: str) -> httpx.Response:
        with httpx.Client(timeout=10, trust_env=False) as c:
            return c.post(
                f"{hgate.url}/oauth/token",
                data={
                    "grant_type": "client_credentials",
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": a,
                },
            )

    a = assertion()
    assert ask(a).status_code == 200
    r = ask(a)
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", describe(r)
    for bad in (assertion(jti=None), assertion(exp=int(time.time()) + 3600, iat=None),
                assertion(iat=int(time.time()) - 200, exp=int(time.time()) + 200)):
        r = ask(bad)
        assert r.status_code == 401 and r.json()["error"] == "invalid_client", describe(r)
    # a fresh assertion still works
    assert ask(assertion()).status_code == 200


def test_retired_signing_keys_leave_the_jwks_after_retention(tmp_path, echo: EchoUpstream, bao) -> None:  # noqa: ANN001
    """Contract gap: retired signing keys stayed in the JWKS forever. A rotated-out key is
    stamped `retiredAt`, kept while any token it signed (static API keys included) may be
    valid, then deleted. The stamp is moved into the past from outside (hvac) to stand in
    for a year passing."""
    import httpx
    import hvac

    g = Credgate(
        tmp_path / "keys",
        [route("echo", "/echo", echo.url)],
        {"store": {"backend": "vault", "sync_interval_seconds": 1,
                   "vault": {"address": bao.url, "timeout_ms": 2000, "max_retries": 1}}},
        {"VAULT_TOKEN": bao.token},
    )
    g.start()
    try:
        def kids() -> list[str]:
            return [k["kid"] for k in httpx.get(f"{g.url}/.well-known/jwks.json", timeout=5, trust_env=False).json()["keys"]]

        (old,) = kids()
        assert g.admin("POST", "/api/admin/oauth/signing-keys/rotate").status_code == 200
        assert old in kids() and len(kids()) == 2
        kv = bao.client.secrets.kv.v2
        rec = kv.read_secret_version(path=f"_credgate/signing-keys/{old}", mount_point="secret",
                                     raise_on_deleted_version=True)["data"]
        retired = rec["data"]["retiredAt"]
        assert abs(retired - time.time()) < 60, rec["data"]
        # One day ago: a static key (oauth.max_static_key_days = 365) may still be valid.
        kv.create_or_update_secret(path=f"_credgate/signing-keys/{old}", mount_point="secret",
                                   secret={**rec["data"], "retiredAt": retired - 86400},
                                   cas=rec["metadata"]["version"])
        g.restart()  # a replica reads the stamp as stored (running ones keep the first one)
        assert old in kids(), "pruned while a static API key it signed may still be valid"
        rec = kv.read_secret_version(path=f"_credgate/signing-keys/{old}", mount_point="secret",
                                     raise_on_deleted_version=True)["data"]
        kv.create_or_update_secret(path=f"_credgate/signing-keys/{old}", mount_point="secret",
                                   secret={**rec["data"], "retiredAt": retired - 367 * 86400},
                                   cas=rec["metadata"]["version"])
        g.restart()
        assert kids() != [] and old not in kids(), "the expired retired key is still published"
        assert len(kids()) == 1
        with pytest.raises(hvac.exceptions.InvalidPath):
            kv.read_secret_version(path=f"_credgate/signing-keys/{old}", mount_point="secret",
                                   raise_on_deleted_version=True)
    finally:
        g.stop()


# ----- item 14: the embedded store authenticates every record -------------------------------


def test_forged_store_record_stops_start_up_naming_the_file(tmp_path, echo: EchoUpstream) -> None:  # noqa: ANN001
    """Attack: someone who can write the store file but lacks the master key appends a
    well-formed record (valid frame and CRC) creating an admin client."""
    import struct
    import zlib

    g = Credgate(tmp_path / "forge", [route("echo", "/echo", echo.url)])
    g.start()
    g.create_client(tenant=unique("fg"), integrations=["echo"])
    g.stop()
    entry = json.dumps({"op": "put", "path": "_credgate/clients/cg-evil", "version": 1,
                        "data": {"clientId": "cg-evil", "scopes": ["admin"], "active": True},
                        "metadata": {}, "updated_at": "2026-01-01T00:00:00Z"}).encode()
    length = struct.pack("<I", len(entry))
    frame = b"CGF1" + length + struct.pack("<I", zlib.crc32(length + entry)) + entry
    with open(g.store_path, "ab") as f:
        f.write(frame)
    with pytest.raises(AssertionError) as failed:
        g.start()
    text = str(failed.value)
    assert "did not become ready (exited" in text, text[-2000:]
    assert str(g.store_path) in text and "not authenticated" in text, text[-2000:]


# ----- item 10: SIGHUP says what it applied and names what needs a restart -----------------


def _garbage(g: Credgate) -> None:
    """A connection that sends a broken request (credgate logs it at debug)."""
    import socket

    with socket.create_connection(("127.0.0.1", g.proxy_port), timeout=5) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        try:
            s.recv(1024)
        except OSError:
            pass


class _QuietGate(Credgate):
    """A credgate without RUST_LOG, so `log.level` from the file is in charge."""

    def env(self) -> dict[str, str]:
        env = super().env()
        env.pop("RUST_LOG", None)
        return env


def test_sighup_applies_live_settings_and_names_each_key_needing_a_restart(tmp_path, echo: EchoUpstream) -> None:  # noqa: ANN001
    """Contract gap: "configuration reloaded" while silently keeping old values of most of
    [proxy], [refresh], [audit], [log], [metrics], [shutdown]."""
    import signal

    g = _QuietGate(tmp_path / "reload", [route("echo", "/echo", echo.url)], {"log": {"level": "info"}})
    g.start()
    try:
        tenant = unique("rl")
        g.put_bearer(tenant, "echo", "cred")
        token = g.token(g.create_client(tenant=tenant, integrations=["echo"]))
        assert g.proxy("GET", "/echo/x", token).status_code == 200
        assert g.proxy("POST", "/echo/big", token, content=b"x" * 5000).status_code == 200
        _garbage(g)
        time.sleep(0.3)
        assert " DEBUG " not in g.logs() and '"level":"DEBUG"' not in g.logs()

        g.extra_sections.update(
            proxy={"max_body_bytes": 4096, "trusted_proxies": ["10.0.0.0/8"], "upstream_timeout_seconds": 7},
            refresh={"interval_seconds": 11, "before_seconds": 123, "min_interval_seconds": 5},
            metrics={"tenant_label": True},
            shutdown={"drain_seconds": 3},
            log={"level": "debug"},
            **{"rate_limit.default": {"per_second": 5, "burst": 5}},
        )
        g.extra_sections["audit"] = {"path": str(tmp_path / "reload" / "audit2.log")}
        g.config_path.write_text(g.config_text())
        assert g.proc is not None
        g.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "configuration reloaded" not in g.logs():
            assert time.monotonic() < deadline, g.log_tail()
            time.sleep(0.1)
        line = next(x for x in g.logs().splitlines() if "configuration reloaded" in x)
        for key in ("proxy.trusted_proxies", "proxy.upstream_timeout_seconds",
                    "refresh.interval_seconds", "metrics.tenant_label", "shutdown.drain_seconds", "audit.path"):
            assert key in line, f"{key} changed, needs a restart, and the reload did not say so: {line}"
        for live in ("log.level", "refresh.before_seconds", "refresh.min_interval_seconds", "rate_limit",
                     "proxy.max_body_bytes"):
            assert live not in line, f"{live} is applied live but was reported as needing a restart: {line}"
        # proxy.max_body_bytes applied: a 5000-byte body is now too large
        r = g.proxy("POST", "/echo/big", token, content=b"x" * 5000)
        assert r.status_code == 413, describe(r)
        # log.level applied: a broken connection is now logged at debug
        _garbage(g)
        deadline = time.monotonic() + 5
        while " DEBUG " not in g.logs() and '"level":"DEBUG"' not in g.logs():
            assert time.monotonic() < deadline, "log.level = debug not applied on reload:\n" + g.log_tail()
            time.sleep(0.2)
    finally:
        g.stop()
