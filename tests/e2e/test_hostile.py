"""A catalogue of hostile requests (issue #9), each sent byte for byte on a raw socket with
its exact expected status. After the whole catalogue credgate is still up, logged no panic,
and no answer carried a token, secret or upstream credential.

Genuinely signed tokens with a bad `exp`, `nbf`, `iss` or `aud` cannot be made from outside
(the signing key never leaves the store); those are unit tests in src/oauth/jwt_tests.rs and
property tests in tests/prop_oauth.rs. Here the JWT attacks are the ones an outsider can mount.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from echo_upstream import EchoUpstream
from support import Client, Credgate, access_claims, b64url, describe, http, jwt_kid, route, unique

MAX_BODY = 65536
MAX_HEADER = 16384


@dataclass
class Ctx:
    gate: Credgate
    echo: EchoUpstream
    client: Client
    token: str
    upstream_cred: str
    tenant: str


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream) -> Iterator[Ctx]:
    g = Credgate(
        tmp_path_factory.mktemp("hostile"),
        [route("echo", "/echo", echo.url), route("raw", "/raw", echo.url, strip_prefix=False)],
        {"proxy": {"max_body_bytes": MAX_BODY, "max_replay_body_bytes": MAX_BODY // 4, "max_header_bytes": MAX_HEADER}},
    )
    g.start()
    tenant = unique("hos")
    cred = f"upstream-hostile-{unique('c')}"
    g.put_bearer(tenant, "echo", cred)
    g.put_bearer(tenant, "raw", cred)
    client = g.create_client(tenant=tenant, integrations=["echo", "raw"])
    yield Ctx(g, echo, client, g.token(client), cred, tenant)
    g.stop()


@dataclass
class Raw:
    status: int | None
    head: str
    body: bytes
    closed: bool
    statuses: list[int]


def send(gate: Credgate, data: bytes, timeout: float = 5.0) -> Raw:
    """Sends `data` as is and reads until the server closes or goes quiet."""
    s = socket.create_connection(("127.0.0.1", gate.proxy_port), timeout=timeout)
    out, closed = b"", False
    try:
        s.sendall(data)
        s.settimeout(1.5)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
    finally:
        s.close()
    head, _, body = out.partition(b"\r\n\r\n")
    statuses = [int(line.split()[1]) for line in out.split(b"\r\n") if line.startswith(b"HTTP/1.") and b" " in line]
    status = statuses[0] if statuses else None
    return Raw(status, head.decode("latin-1"), body, closed, statuses)


def req(method: str, target: bytes | str, headers: list[tuple[bytes, bytes]] | None = None, body: bytes = b"") -> bytes:
    if isinstance(target, str):
        target = target.encode()
    lines = [method.encode() + b" " + target + b" HTTP/1.1", b"Host: 127.0.0.1", b"Connection: close"]
    lines += [k + b": " + v for k, v in (headers or [])]
    if body and not any(k.lower() in (b"content-length", b"transfer-encoding") for k, _ in headers or []):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def bearer(tok: str) -> tuple[bytes, bytes]:
    return (b"Authorization", b"Bearer " + tok.encode())


def spec_code(r: Raw) -> str | None:
    try:
        return json.loads(r.body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _forged(c: Ctx, **over: object) -> str:
    """Claims of our choosing, signed by an attacker's key under the real kid."""
    return jwt.encode(access_claims(c.gate, c.client, **over), Ed25519PrivateKey.generate(), algorithm="EdDSA",
                      headers={"kid": jwt_kid(c.token), "typ": "at+jwt"})


# ----- the catalogue: (id, builder(ctx) -> bytes, expected status, expected code (docs/errors.md)) ---------

def _deep(n: int) -> bytes:
    return b"[" * n + b"]" * n


CATALOGUE: list[tuple[str, object, int, str | None]] = [
    # path traversal and odd identifiers
    ("dotdot", lambda c: req("GET", "/echo/../../etc/passwd", [bearer(c.token)]), 400, "BAD_REQUEST"),
    ("dotdot-encoded", lambda c: req("GET", "/echo/%2e%2e/%2E%2e/etc/passwd", [bearer(c.token)]), 400, "BAD_REQUEST"),
    ("dot", lambda c: req("GET", "/echo/./x", [bearer(c.token)]), 400, "BAD_REQUEST"),
    ("dotdot-across-routes", lambda c: req("GET", "/raw/../echo/x", [bearer(c.token)]), 400, "BAD_REQUEST"),
    ("prefix-lookalike", lambda c: req("GET", "/echox/y", [bearer(c.token)]), 404, "NOT_FOUND"),
    ("encoded-slash-prefix", lambda c: req("GET", "/echo%2fx", [bearer(c.token)]), 404, "NOT_FOUND"),
    ("upper-case-prefix", lambda c: req("GET", "/ECHO/x", [bearer(c.token)]), 404, "NOT_FOUND"),
    ("tenant-header-traversal", lambda c: req("GET", "/echo/x", [bearer(c.token), (b"X-Tenant-Id", b"../x")]), 400, "BAD_REQUEST"),
    ("tenant-header-nul-encoded", lambda c: req("GET", "/echo/x", [bearer(c.token), (b"X-Tenant-Id", b"a%00b")]), 400, "BAD_REQUEST"),
    ("tenant-header-other", lambda c: req("GET", "/echo/x", [bearer(c.token), (b"X-Tenant-Id", b"someone-else")]), 403, "FORBIDDEN"),
    ("admin-path-dotdot", lambda c: req("GET", "/api/admin/credentials/../x", [bearer(c.gate.admin_token)]), 400, "BAD_REQUEST"),
    ("admin-path-encoded-slash", lambda c: req("GET", f"/api/admin/credentials/{c.tenant}%2Fecho/echo", [bearer(c.gate.admin_token)]), 400, "BAD_REQUEST"),
    ("admin-client-id-traversal", lambda c: req("GET", "/api/admin/oauth/clients/..", [bearer(c.gate.admin_token)]), 400, "BAD_REQUEST"),
    # CRLF and NUL in headers (refused by the HTTP parser: no docs/errors.md body)
    ("bare-cr-in-header", lambda c: req("GET", "/echo/x", [bearer(c.token), (b"X-A", b"a\rb")]), 400, None),
    ("nul-in-header", lambda c: req("GET", "/echo/x", [bearer(c.token), (b"X-A", b"a\x00b")]), 400, None),
    # a bare LF ends a header line (RFC 9112 §2.2), so this is a second header, judged as one
    ("bare-lf-line-end", lambda c: req("GET", "/echo/x", [bearer(c.token), (b"X-A", b"a\nX-Tenant-Id: other")]), 403, "FORBIDDEN"),
    ("space-before-colon", lambda c: req("GET", "/echo/x", [bearer(c.token), (b"X-A ", b"1")]), 400, None),
    ("obs-fold", lambda c: req("GET", "/echo/x", [bearer(c.token), (b"X-A", b"1\r\n  folded")]), 400, None),
    ("nul-in-target", lambda c: req("GET", b"/echo/a\x00b", [bearer(c.token)]), 400, None),
    # duplicate Authorization headers
    ("dup-auth-proxy", lambda c: req("GET", "/echo/x", [bearer(c.token), bearer(c.token)]), 401, "UNAUTHORIZED"),
    ("dup-auth-admin-good-first", lambda c: req("GET", "/api/admin/oauth/clients", [bearer(c.gate.admin_token), bearer("junk")]), 401, "UNAUTHORIZED"),
    ("dup-auth-admin-good-last", lambda c: req("GET", "/api/admin/oauth/clients", [bearer("junk"), bearer(c.gate.admin_token)]), 401, "UNAUTHORIZED"),
    # oversized headers and bodies
    ("header-over-limit", lambda c: req("GET", "/echo/x", [bearer(c.token), (b"X-Big", b"a" * (MAX_HEADER * 4))]), 431, None),
    ("many-headers", lambda c: req("GET", "/echo/x", [bearer(c.token)] + [(b"X-%d" % i, b"1") for i in range(600)]), 431, None),
    ("huge-token", lambda c: req("GET", "/echo/x", [bearer("x" * 9000)]), 401, "UNAUTHORIZED"),
    ("content-length-huge", lambda c: req("POST", "/echo/x", [bearer(c.token), (b"Content-Length", b"99999999999")], b"abc"), 413, "PAYLOAD_TOO_LARGE"),
    ("chunked-over-limit", lambda c: req("POST", "/echo/x", [bearer(c.token), (b"Transfer-Encoding", b"chunked")],
                                          (b"8000\r\n" + b"a" * 0x8000 + b"\r\n") * 3 + b"0\r\n\r\n"), 413, "PAYLOAD_TOO_LARGE"),
    # OAuth endpoints answer RFC 6749 bodies, which have no 413: 400 invalid_request
    ("token-body-over-limit", lambda c: req("POST", "/oauth/token", [(b"Content-Type", b"application/x-www-form-urlencoded")],
                                             b"grant_type=client_credentials&x=" + b"a" * 70000), 400, None),
    ("admin-body-over-limit", lambda c: req("POST", "/api/admin/oauth/clients", [bearer(c.gate.admin_token), (b"Content-Type", b"application/json")],
                                             b'{"name":"' + b"a" * (1024 * 1024 + 10) + b'"}'), 413, "PAYLOAD_TOO_LARGE"),
    # request smuggling
    ("two-content-lengths", lambda c: req("POST", "/echo/x", [bearer(c.token), (b"Content-Length", b"4"), (b"Content-Length", b"5")], b"abcde"), 400, None),
    ("content-length-negative", lambda c: req("POST", "/echo/x", [bearer(c.token), (b"Content-Length", b"-1")]), 400, None),
    ("content-length-plus", lambda c: req("POST", "/echo/x", [bearer(c.token), (b"Content-Length", b"+4")], b"abcd"), 400, None),
    ("te-obfuscated", lambda c: req("POST", "/echo/x", [bearer(c.token), (b"Transfer-Encoding", b"xchunked")]), 400, None),
    ("te-not-last-chunked", lambda c: req("POST", "/echo/x", [bearer(c.token), (b"Transfer-Encoding", b"chunked, identity")], b"0\r\n\r\n"), 400, None),
    # JWT attacks an outsider can mount
    ("jwt-alg-none", lambda c: req("GET", "/echo/x", [bearer(jwt.encode(access_claims(c.gate, c.client), None, algorithm="none", headers={"kid": jwt_kid(c.token)}))]), 401, "UNAUTHORIZED"),
    ("jwt-expired-forged", lambda c: req("GET", "/echo/x", [bearer(_forged(c, exp=int(time.time()) - 3600))]), 401, "UNAUTHORIZED"),
    ("jwt-future-nbf-forged", lambda c: req("GET", "/echo/x", [bearer(_forged(c, nbf=int(time.time()) + 3600))]), 401, "UNAUTHORIZED"),
    ("jwt-wrong-iss-forged", lambda c: req("GET", "/echo/x", [bearer(_forged(c, iss="http://evil.example"))]), 401, "UNAUTHORIZED"),
    ("jwt-wrong-aud-forged", lambda c: req("GET", "/echo/x", [bearer(_forged(c, aud="http://evil.example"))]), 401, "UNAUTHORIZED"),
    ("jwt-unknown-kid", lambda c: req("GET", "/echo/x", [bearer(jwt.encode(access_claims(c.gate, c.client), Ed25519PrivateKey.generate(), algorithm="EdDSA", headers={"kid": "k-unknown"}))]), 401, "UNAUTHORIZED"),
    ("jwt-tampered-payload", lambda c: req("GET", "/echo/x", [bearer(_tamper(c.token, scope="mcp admin"))]), 401, "UNAUTHORIZED"),
    ("jwt-tampered-tenant", lambda c: req("GET", "/echo/x", [bearer(_tamper(c.token, tenant="someone-else"))]), 401, "UNAUTHORIZED"),
    ("jwt-signature-stripped", lambda c: req("GET", "/echo/x", [bearer(c.token.rsplit(".", 1)[0] + ".")]), 401, "UNAUTHORIZED"),
    ("jwt-as-admin-token", lambda c: req("GET", "/api/admin/oauth/clients", [bearer(c.token)]), 403, "FORBIDDEN"),
    # token in the query string
    ("query-token-only", lambda c: req("GET", f"/echo/x?access_token={c.token}"), 401, "UNAUTHORIZED"),
    ("query-token-and-header", lambda c: req("GET", f"/echo/x?access_token={c.token}", [bearer(c.token)]), 401, "UNAUTHORIZED"),
    ("query-token-encoded-name", lambda c: req("GET", f"/echo/x?access%5Ftoken={c.token}", [bearer(c.token)]), 401, "UNAUTHORIZED"),
    # invalid UTF-8
    ("utf8-in-target", lambda c: req("GET", b"/echo/\xff\xfe", [bearer(c.token)]), 400, None),
    ("utf8-in-bearer", lambda c: req("GET", "/echo/x", [(b"Authorization", b"Bearer \xff\xfe")]), 401, "UNAUTHORIZED"),
    ("utf8-in-tenant-header", lambda c: req("GET", "/echo/x", [bearer(c.token), (b"X-Tenant-Id", b"\xc3\x28")]), 400, "BAD_REQUEST"),
    ("utf8-in-admin-json", lambda c: req("POST", "/api/admin/oauth/clients", [bearer(c.gate.admin_token), (b"Content-Type", b"application/json")],
                                          b'{"name":"\xff\xfe","tenant":"acme"}'), 400, "BAD_REQUEST"),
    # form decoding is lossy (U+FFFD): an unknown client, not a parse error
    ("utf8-in-token-form", lambda c: req("POST", "/oauth/token", [(b"Content-Type", b"application/x-www-form-urlencoded")],
                                          b"grant_type=client_credentials&client_id=\xff&client_secret=\xfe"), 401, None),
    ("utf8-in-credential", lambda c: req("PUT", f"/api/admin/credentials/{c.tenant}/raw", [bearer(c.gate.admin_token), (b"Content-Type", b"application/json")],
                                          b'{"access_token":"\xff\xfe"}'), 400, "BAD_REQUEST"),
    # absurdly nested JSON
    ("nested-json-token", lambda c: req("POST", "/oauth/token", [(b"Content-Type", b"application/json")], _deep(30000)), 400, None),
    ("nested-json-admin-client", lambda c: req("POST", "/api/admin/oauth/clients", [bearer(c.gate.admin_token), (b"Content-Type", b"application/json")],
                                                b'{"a":' * 100000 + b"1" + b"}" * 100000), 400, "BAD_REQUEST"),
    ("nested-json-credential", lambda c: req("PUT", f"/api/admin/credentials/{c.tenant}/raw", [bearer(c.gate.admin_token), (b"Content-Type", b"application/json")],
                                              b'{"access_token":' + _deep(30000) + b"}"), 400, "BAD_REQUEST"),
    ("nested-json-jwks", lambda c: req("POST", "/api/admin/oauth/clients", [bearer(c.gate.admin_token), (b"Content-Type", b"application/json")],
                                        b'{"name":"n","tenant":"acme","jwks":' + _deep(5000) + b"}"), 400, "BAD_REQUEST"),
    # credgate does not inspect proxied JSON-RPC: a deep body passes through untouched
    ("nested-json-proxied", lambda c: req("POST", "/echo/mcp", [bearer(c.token), (b"Content-Type", b"application/json")], _deep(20000)), 200, None),
]


# Bodies without a Content-Length stream upstream until they pass max_body_bytes.
STREAMED = {"chunked-over-limit"}


def _tamper(tok: str, **over: object) -> str:
    h, p, s = tok.split(".")
    claims = json.loads(base64.urlsafe_b64decode(p + "=" * (-len(p) % 4)))
    claims.update(over)
    return f"{h}.{b64url(json.dumps(claims).encode())}.{s}"


@pytest.mark.parametrize("case_id,build,status,code", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_hostile_request(ctx: Ctx, case_id: str, build, status: int, code: str | None) -> None:  # noqa: ANN001
    n_before = len(ctx.echo.requests)
    r = send(ctx.gate, build(ctx))
    assert r.status == status, f"{case_id}: expected {status}, got {r.status}: {r.head[:300]!r} {r.body[:300]!r}"
    if code is not None:
        assert spec_code(r) == code, f"{case_id}: expected {code}: {r.body[:300]!r}"
    text = r.head.encode("latin-1") + r.body
    for secret in (ctx.token, ctx.token.rsplit(".", 1)[1], ctx.client.client_secret, ctx.upstream_cred, ctx.gate.admin_token):
        if status == 200 and secret == ctx.upstream_cred:
            continue  # the echo upstream reports what it received; checked below instead
        assert secret.encode() not in text, f"{case_id}: answer carries a secret"
    if case_id in STREAMED:
        # the body streams: the upstream saw the start of it, never more than the limit
        deadline = time.monotonic() + 5
        while len(ctx.echo.requests) == n_before and time.monotonic() < deadline:
            time.sleep(0.05)  # the echo thread records the cut-off request when its read ends
        assert all(g["body_len"] <= MAX_BODY for g in ctx.echo.requests[n_before:]), case_id
    elif status != 200:
        assert len(ctx.echo.requests) == n_before, f"{case_id}: a refused request reached the upstream"
    assert ctx.gate.proc is not None and ctx.gate.proc.poll() is None, f"{case_id}: credgate died"


def test_content_length_with_transfer_encoding_is_not_smuggled(ctx: Ctx) -> None:
    """RFC 9112 §6.3: chunked framing wins, Content-Length is dropped before forwarding, and
    the connection closes after the answer, so the bytes after the chunked body are never read
    as a second request."""
    n = len(ctx.echo.requests)
    smuggled = req("GET", "/echo/smuggled", [bearer(ctx.token)]).replace(b"Connection: close\r\n", b"")
    data = (b"POST /echo/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ctx.token.encode()
            + b"\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled)
    r = send(ctx.gate, data)
    assert r.statuses == [200], r.head
    assert r.closed, "connection left open after a request with both Content-Length and Transfer-Encoding"
    got = ctx.echo.requests[n:]
    assert [g["path"] for g in got] == ["/x"], got
    framing = {k.lower() for k, _ in got[0]["headers"]} & {"content-length", "transfer-encoding"}
    assert framing == {"transfer-encoding"}, got[0]["headers"]


def test_equal_duplicate_content_lengths_are_one(ctx: Ctx) -> None:
    n = len(ctx.echo.requests)
    r = send(ctx.gate, req("POST", "/echo/x", [bearer(ctx.token), (b"Content-Length", b"4"), (b"Content-Length", b"4")], b"abcd"))
    assert r.status == 200, r.head
    assert ctx.echo.requests[n]["body"] == "abcd"


def test_tokens_of_deleted_and_suspended_clients(ctx: Ctx) -> None:
    g = ctx.gate
    for action in ("delete", "suspend"):
        client = g.create_client(tenant=ctx.tenant, integrations=["echo"])
        tok = g.token(client)
        assert g.proxy("GET", "/echo/ok", tok).status_code == 200
        if action == "delete":
            r = g.admin("DELETE", f"/api/admin/oauth/clients/{client.client_id}")
        else:
            r = g.admin("PUT", f"/api/admin/oauth/clients/{client.client_id}", json={"active": False})
        assert r.status_code in (200, 204), describe(r)
        r = send(g, req("GET", "/echo/x", [bearer(tok)]))
        assert r.status == 401 and spec_code(r) == "UNAUTHORIZED", (action, r.head, r.body)
        assert g.token_request(client).status_code == (401 if action == "delete" else 403)


def test_hs256_signed_with_the_public_key(ctx: Ctx) -> None:
    kid = jwt_kid(ctx.token)
    with http() as c:
        key = next(k for k in c.get(f"{ctx.gate.url}/.well-known/jwks.json").json()["keys"] if k["kid"] == kid)
    signing_input = b64url(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": kid}).encode()) + "." + b64url(json.dumps(access_claims(ctx.gate, ctx.client)).encode())
    for secret in (key["x"].encode(), base64.urlsafe_b64decode(key["x"] + "=="), json.dumps(key).encode()):
        sig = b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
        r = send(ctx.gate, req("GET", "/echo/x", [bearer(f"{signing_input}.{sig}")]))
        assert r.status == 401 and spec_code(r) == "UNAUTHORIZED", r.body


def test_still_healthy_and_no_panic_after_the_catalogue(ctx: Ctx) -> None:
    with http() as c:
        assert c.get(f"{ctx.gate.ops_url}/healthz").status_code == 200
    assert ctx.gate.proxy("GET", "/echo/after", ctx.token).status_code == 200
    logs = ctx.gate.logs()
    assert "panicked" not in logs, "credgate logged a panic"
    for secret in (ctx.token, ctx.client.client_secret, ctx.upstream_cred, ctx.gate.admin_token):
        assert secret not in logs, "a secret reached the log"


def test_throttled_token_requests_keep_the_connection_usable(make_gate) -> None:  # noqa: ANN001
    """A 429 from the per-address throttle must not leave the request body unread and then
    drop the keep-alive connection silently: the client's next request on it would fail with
    'Server disconnected without sending a response' (found by scripts/soak.sh)."""
    import httpx

    g = make_gate(oauth={"max_failures_per_address": 2})
    tenant = unique("thr")
    g.put_bearer(tenant, "echo", "thr-cred")
    client = g.create_client(tenant=tenant, integrations=["echo"])
    tok = g.token(client)
    errors: list[str] = []
    statuses: set[int] = set()
    with httpx.Client(timeout=5, trust_env=False) as c:
        for _ in range(150):
            for call in (
                lambda: c.post(f"{g.url}/oauth/token", data={"grant_type": "client_credentials"}, auth=(client.client_id, "wrong")),
                lambda: c.get(f"{g.url}/echo/x", headers={"Authorization": f"Bearer {tok}"}),
            ):
                try:
                    statuses.add(call().status_code)
                except httpx.HTTPError as e:
                    errors.append(repr(e))
    assert 429 in statuses, statuses
    assert not errors, f"{len(errors)} requests failed on a reused connection: {errors[:3]}"


def test_json_rpc_inspection_of_a_tools_restricted_client(ctx: Ctx) -> None:
    """The one place credgate reads proxied JSON-RPC: `allowedTools`. Hostile bodies are
    refused before anything reaches the upstream; allowed ones pass."""
    g = ctx.gate
    client = g.create_client(tenant=ctx.tenant, integrations=["echo"], allowedTools=["whoami"])
    tok = g.token(client)

    def call(body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> tuple[Raw, int]:
        n = len(ctx.echo.requests)
        r = send(g, req("POST", "/echo/mcp", [bearer(tok), (b"Content-Type", b"application/json"), *(extra or [])], body))
        return r, len(ctx.echo.requests) - n

    def rpc(name: object, i: int = 1) -> dict:
        return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": name, "arguments": {}}}

    ok = json.dumps(rpc("whoami")).encode()
    cases: list[tuple[str, bytes, list[tuple[bytes, bytes]], int]] = [
        ("allowed", ok, [], 200),
        ("forbidden", json.dumps(rpc("delete_all")).encode(), [], 403),
        ("batch-hiding-one", json.dumps([rpc("whoami", 1), rpc("delete_all", 2), rpc("whoami", 3)]).encode(), [], 403),
        # Duplicate keys are refused outright (docs/policy.md): no parser differential.
        ("duplicate-name-key", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","name":"delete_all"}}', [], 400),
        ("duplicate-escaped-key", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"whoami","n\\u0061me":"delete_all"}}', [], 400),
        ("escaped-name", b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"\\u0064elete_all"}}', [], 403),
        ("escaped-method", b'{"jsonrpc":"2.0","id":1,"method":"tools\\/call","params":{"name":"delete_all"}}', [], 403),
        ("name-not-a-string", json.dumps(rpc(["whoami"])).encode(), [], 400),
        ("header-names-forbidden-tool", ok, [(b"Mcp-Method", b"tools/call"), (b"Mcp-Name", b"delete_all")], 403),
        ("deep-json", _deep(5000), [], 400),
        ("not-json", b"\xff\xfe{not json", [], 400),
        ("over-replay-limit", b'{"pad":"' + b"a" * (MAX_BODY // 4 + 10) + b'"}', [], 413),
    ]
    for name, body, extra, status in cases:
        r, reached = call(body, extra)
        assert r.status == status, f"{name}: expected {status}, got {r.status}: {r.body[:200]!r}"
        assert reached == (1 if status == 200 else 0), f"{name}: upstream reached {reached} times"
