"""Process and HTTP helpers for the credgate end-to-end tests.

`Credgate` writes a config (docs/configuration.md), runs `target/debug/credgate serve` as a subprocess on
free 127.0.0.1 ports, waits for `/readyz`, and stops it with SIGTERM (SIGKILL after a grace
period). It also wraps the admin API and the token endpoint. `McpCall` drives the real
`mcp` Python client through credgate with the client-credentials OAuth provider.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

REPO = Path(__file__).resolve().parents[2]
CREDGATE_BIN = Path(os.environ.get("CREDGATE_BIN", REPO / "target" / "debug" / "credgate"))
HERE = Path(__file__).resolve().parent
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Every network call in the suite is bounded by this (seconds) unless a test says otherwise.
HTTP_TIMEOUT = httpx.Timeout(10.0)
READY_TIMEOUT = 15.0
STOP_GRACE = 5.0


# The integrations of the standard echo routes (conftest.standard_routes).
ECHO_INTEGRATIONS = ["echo", "basic-echo", "apikey-echo", "raw-echo"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unique(prefix: str) -> str:
    """A fresh identifier matching ^[a-z0-9][a-z0-9_-]{0,62}$."""
    return f"{prefix}-{secrets.token_hex(4)}"


def http() -> httpx.Client:
    return httpx.Client(timeout=HTTP_TIMEOUT, trust_env=False, follow_redirects=False)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string for the ASCII values used here
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"cannot render {v!r} as TOML")


def _toml_key(k: str) -> str:
    """A bare key when TOML allows one (`a_b-1`), else a quoted one (`"delete_*"`)."""
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def render_config(sections: dict[str, dict[str, Any]], routes: list[dict[str, Any]]) -> str:
    out: list[str] = []
    for name, body in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in body.items())
        out.append("")
    for route in routes:
        out.append("[[routes]]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in route.items())
        out.append("")
    return "\n".join(out)


def route(integration: str, prefix: str, upstream: str, **extra: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "integration": integration,
        "path_prefix": prefix,
        "upstream": upstream,
        "strip_prefix": True,
        "required_scopes": ["mcp"],
    }
    r.update(extra)
    return r


def spec_error(resp: httpx.Response) -> dict[str, Any]:
    """Assert `resp` carries the docs/errors.md error body and return its `error` object."""
    try:
        body = resp.json()
    except ValueError as e:  # pragma: no cover - reported as a test failure
        raise AssertionError(f"non-JSON error body ({resp.status_code}): {resp.text[:500]!r}") from e
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), f"not a docs/errors.md body: {body!r}"
    err = body["error"]
    assert isinstance(err.get("code"), str) and isinstance(err.get("message"), str), f"bad error object: {body!r}"
    assert isinstance(body.get("request_id"), str) and body["request_id"], f"missing request_id: {body!r}"
    return err


def oauth_error(resp: httpx.Response) -> dict[str, Any]:
    """Assert `resp` carries an RFC 6749 §5.2 error body and return it."""
    try:
        body = resp.json()
    except ValueError as e:  # pragma: no cover
        raise AssertionError(f"non-JSON OAuth error body ({resp.status_code}): {resp.text[:500]!r}") from e
    assert isinstance(body, dict) and isinstance(body.get("error"), str), f"not an RFC 6749 error body: {body!r}"
    assert isinstance(body.get("error_description"), str), f"missing error_description: {body!r}"
    return body


def describe(resp: httpx.Response) -> str:
    """A one-line account of a response for assertion messages."""
    hdrs = {k: v for k, v in resp.headers.items() if k.lower() in ("www-authenticate", "content-type", "retry-after")}
    return f"{resp.request.method} {resp.request.url.path} -> {resp.status_code} {hdrs} {resp.text[:400]!r}"


# ----- small helpers the test modules share ------------------------------------------------


def upstream_auth(resp: httpx.Response) -> list[str]:
    """The Authorization headers the echo upstream reports it received (its JSON answer)."""
    return [v for k, v in resp.json()["headers"] if k.lower() == "authorization"]


def seen_auth(echo: Any, marker: str) -> list[str]:
    """Authorization headers the echo upstream got on requests whose path contains `marker`."""
    out = []
    for r in list(echo.requests):
        if marker in r["path"]:
            out += [v for k, v in r["headers"] if k.lower() == "authorization"]
    return out


def sse_events(gate: Credgate, path: str, token: str, timeout: float = 10.0) -> Iterator[Any]:
    """The JSON `data:` events of `GET path` through credgate as they arrive (the answer must
    be a 200). Closing the generator, or leaving a loop over it, hangs up."""
    with httpx.Client(timeout=httpx.Timeout(timeout), trust_env=False) as c:
        with c.stream("GET", f"{gate.url}{path}", headers={"Authorization": f"Bearer {token}"}) as r:
            assert r.status_code == 200, describe(r)
            for line in r.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])


def eventually(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.1) -> Any:
    """Polls `pred` until it returns something truthy (returned), or returns its last answer
    once `timeout` seconds have passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    return pred()


def wait_for(pred: Callable[[], Any], timeout: float, what: str) -> Any:
    """`eventually`, failing the test with `what` if `pred` never holds."""
    v = eventually(pred, timeout)
    if not v:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")
    return v


def jwt_kid(token: str) -> str:
    """The `kid` in a JWT's header (unverified)."""
    return jwt.get_unverified_header(token)["kid"]


def access_claims(gate: Credgate, client: Client, **over: Any) -> dict[str, Any]:
    """The claims credgate puts in an access token for `client` (good for 10 minutes), with
    `over` replacing some: what a forger would sign."""
    now = int(time.time())
    claims = {
        "iss": gate.url,
        "sub": client.client_id,
        "aud": gate.url,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": unique("j"),
        "scope": "mcp",
        "tenant": client.tenant,
    }
    claims.update(over)
    return claims


def b64url(data: bytes) -> str:
    """Unpadded base64url, as in JWTs and JWKs."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


NODE_DIR = REPO / "tests" / "node"
NODE_TIMEOUT = 60.0


def run_node_client(script: str, env: dict[str, str]) -> dict[str, Any]:
    """Runs `node tests/node/<script>` (a client on the TypeScript MCP SDK) with `env` added
    and no proxy variables. Its last line on stdout is its JSON result, whose `ok` must be
    true."""
    if shutil.which("node") is None:
        pytest.fail("node is not installed: scripts/test.sh installs it")
    if not (NODE_DIR / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir():
        pytest.fail("tests/node dependencies missing: npm ci --prefix tests/node")
    full_env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    full_env.update(env)
    try:
        p = subprocess.run(
            ["node", str(NODE_DIR / script)],
            cwd=NODE_DIR,
            env=full_env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=NODE_TIMEOUT,
        )
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{script} did not finish in {NODE_TIMEOUT}s: {e.stdout!r} {e.stderr!r}") from e
    out = p.stdout.decode(errors="replace").strip().splitlines()
    assert out, f"node printed nothing (exit {p.returncode}): {p.stderr.decode(errors='replace')[-2000:]}"
    result = json.loads(out[-1])
    assert p.returncode == 0 and result.get("ok"), f"{script} failed: {result}\n{p.stderr.decode()[-2000:]}"
    return result


@dataclass
class Client:
    """A credgate OAuth client as returned by the admin API."""

    client_id: str
    client_secret: str
    tenant: str | None
    raw: dict[str, Any] = field(repr=False)


class Credgate:
    """One credgate process with its own config, store, audit log and captured output."""

    def __init__(
        self,
        workdir: Path,
        routes: list[dict[str, Any]],
        extra_sections: dict[str, dict] | None = None,
        extra_env: dict[str, str] | None = None,
        replica_of: Credgate | None = None,
    ):
        """`replica_of`: share that instance's store file, master key, admin token and
        public URL (issuer), as replicas behind one load balancer do."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.routes = routes
        self.extra_sections = extra_sections or {}
        self.extra_env = extra_env or {}
        self.admin_token = secrets.token_urlsafe(32)
        self.master_key = base64.b64encode(secrets.token_bytes(32)).decode()
        self.store_path = workdir / "credgate.store"
        self.public_url: str | None = None
        if replica_of is not None:
            self.admin_token = replica_of.admin_token
            self.master_key = replica_of.master_key
            self.store_path = replica_of.store_path
            self.public_url = replica_of.public_url or replica_of.url
        self.audit_path = workdir / "audit.log"
        self.config_path = workdir / "credgate.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.last_returncode: int | None = None
        self._pick_ports()

    # ----- process lifecycle -------------------------------------------------------------

    def _pick_ports(self) -> None:
        self.proxy_port = free_port()
        self.ops_port = free_port()
        while self.ops_port == self.proxy_port:
            self.ops_port = free_port()
        self.url = f"http://127.0.0.1:{self.proxy_port}"
        self.ops_url = f"http://127.0.0.1:{self.ops_port}"

    def config_text(self) -> str:
        sections: dict[str, dict[str, Any]] = {
            "proxy": {"listen": f"127.0.0.1:{self.proxy_port}", "public_url": self.public_url or self.url},
            "ops": {"listen": f"127.0.0.1:{self.ops_port}"},
            "store": {"backend": "embedded", "path": str(self.store_path)},
            "audit": {"path": str(self.audit_path)},
        }
        for name, body in self.extra_sections.items():
            sections.setdefault(name, {}).update(body)
        return render_config(sections, self.routes)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDGATE_", "VAULT_", "BAO_"))}
        env.update(
            CREDGATE_ADMIN_TOKEN=self.admin_token,
            CREDGATE_MASTER_KEY=self.master_key,
            RUST_LOG="debug",
            RUST_BACKTRACE="1",
        )
        env.update(self.extra_env)
        return env

    @property
    def stdout_path(self) -> Path:
        return self.workdir / f"credgate.{self.starts}.stdout"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / f"credgate.{self.starts}.stderr"

    def log_files(self) -> list[Path]:
        return sorted(self.workdir.glob("credgate.*.std*"))

    def logs(self) -> str:
        return "".join(f"===== {p.name}\n{p.read_text(errors='replace')}\n" for p in self.log_files())

    def log_tail(self, lines: int = 60) -> str:
        out = []
        for p in self.log_files()[-2:]:
            text = _ANSI.sub("", p.read_text(errors="replace")).splitlines()
            out.append(f"===== {p.name} (last {lines} lines)\n" + "\n".join(text[-lines:]))
        return "\n".join(out)

    def start(self) -> None:
        if not CREDGATE_BIN.exists():
            raise AssertionError(f"credgate binary not found at {CREDGATE_BIN}: run `cargo build` first")
        for attempt in range(3):
            self.starts += 1
            self.config_path.write_text(self.config_text())
            with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
                self.proc = subprocess.Popen(
                    [str(CREDGATE_BIN), "serve", "--config", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    env=self.env(),
                    cwd=self.workdir,
                )
            ok, why = self._wait_ready()
            if ok:
                return
            self._kill()
            text = self.log_tail(200)
            if attempt < 2 and "in use" in text.lower() and self.starts == 1 + attempt:
                self._pick_ports()  # a port was taken between probing and binding: try others
                continue
            raise AssertionError(f"credgate did not become ready ({why}); config:\n{self.config_text()}\n{text}")

    def _wait_ready(self) -> tuple[bool, str]:
        deadline = time.monotonic() + READY_TIMEOUT
        last = "no answer"
        with httpx.Client(timeout=httpx.Timeout(1.0), trust_env=False) as c:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    return False, f"exited with status {self.proc.returncode}"
                try:
                    r = c.get(f"{self.ops_url}/readyz")
                    if r.status_code == 200:
                        return True, ""
                    last = f"/readyz answered {r.status_code} {r.text[:200]!r}"
                except httpx.HTTPError as e:
                    last = f"/readyz: {type(e).__name__}"
                time.sleep(0.1)
        return False, f"timeout after {READY_TIMEOUT}s, {last}"

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """SIGTERM (by default), then SIGKILL after a grace period. Returns the exit status."""
        if self.proc is None:
            return self.last_returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self._kill()
        self.last_returncode = self.proc.returncode
        self.proc = None
        return self.last_returncode

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        """Stop and start again on the same config, store file, master key and admin token."""
        self.stop()
        self.start()

    # ----- HTTP helpers ------------------------------------------------------------------

    def admin(self, method: str, path: str, *, token: str | None = "", **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        tok = self.admin_token if token == "" else token
        if tok is not None:
            headers["Authorization"] = f"Bearer {tok}"
        with http() as c:
            return c.request(method, self.url + path, headers=headers, **kw)

    def create_client(
        self,
        *,
        tenant: str | None = None,
        tenants: list[str] | None = None,
        scopes: list[str] | None = None,
        integrations: list[str] | None = None,
        name: str | None = None,
        **extra: Any,
    ) -> Client:
        body: dict[str, Any] = {
            "name": name or unique("client"),
            "scopes": scopes if scopes is not None else ["mcp"],
            "allowedIntegrations": integrations if integrations is not None else ["github"],
        }
        if tenant is not None:
            body["tenant"] = tenant
        if tenants is not None:
            body["tenants"] = tenants
        body.update(extra)
        r = self.admin("POST", "/api/admin/oauth/clients", json=body)
        assert r.status_code == 201, f"create client: {describe(r)}"
        data = r.json()
        assert data.get("success") is True, data
        c = data["client"]
        if body.get("jwks"):
            # private_key_jwt only: no shared secret is issued.
            assert c.get("clientId") and "clientSecret" not in c, data
            return Client(c["clientId"], "", tenant, c)
        assert c.get("clientId") and c.get("clientSecret"), data
        return Client(c["clientId"], c["clientSecret"], tenant, c)

    def put_credential(self, tenant: str, integration: str, body: dict[str, Any]) -> httpx.Response:
        r = self.admin("PUT", f"/api/admin/credentials/{tenant}/{integration}", json=body)
        assert r.status_code in (200, 201, 204), f"store credential: {describe(r)}"
        return r

    def put_bearer(self, tenant: str, integration: str, access_token: str) -> None:
        self.put_credential(
            tenant, integration, {"access_token": access_token, "token_type": "Bearer", "expires_in": 3600}
        )

    def token_request(self, client: Client | None = None, *, method: str = "basic", **form: str) -> httpx.Response:
        data = {"grant_type": "client_credentials", **form}
        auth = None
        if client is not None and method == "basic":
            auth = httpx.BasicAuth(client.client_id, client.client_secret)
        elif client is not None and method == "post":
            data.update(client_id=client.client_id, client_secret=client.client_secret)
        with http() as c:
            return c.post(f"{self.url}/oauth/token", data=data, auth=auth)

    def token(self, client: Client, **form: str) -> str:
        r = self.token_request(client, **form)
        assert r.status_code == 200, f"token request: {describe(r)}"
        return r.json()["access_token"]

    def proxy(self, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        with http() as c:
            return c.request(method, self.url + path, headers=headers, **kw)


class McpUpstream:
    """The real MCP server of mcp_server.py (or of another `script` in this folder, with
    extra `args` and `env`) as a subprocess, accepting only `tokens`."""

    def __init__(
        self,
        workdir: Path,
        tokens: list[str],
        script: str = "mcp_server.py",
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.tokens = tokens
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.script = script
        self.log_path = workdir / f"{Path(script).stem}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, str(HERE / script), "--port", str(self.port), *(args or [])],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "MCP_ACCEPTED_TOKENS": ",".join(tokens), **(env or {})},
                cwd=workdir,
            )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        with httpx.Client(timeout=httpx.Timeout(1.0), trust_env=False) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    if c.post(f"{self.url}/mcp", json={}).status_code == 401:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
        self.close()
        raise AssertionError(f"{self.script} did not start:\n{self.log_path.read_text(errors='replace')}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


class MemoryTokenStorage:
    """In-memory `mcp.client.auth.TokenStorage`; also lets a test see the tokens it got."""

    def __init__(self) -> None:
        self.tokens = None
        self.client_info = None

    async def get_tokens(self):  # noqa: ANN201 - mcp protocol types
        return self.tokens

    async def set_tokens(self, tokens) -> None:  # noqa: ANN001
        self.tokens = tokens

    async def get_client_info(self):  # noqa: ANN201
        return self.client_info

    async def set_client_info(self, client_info) -> None:  # noqa: ANN001
        self.client_info = client_info


@dataclass
class McpResult:
    whoami: dict[str, Any] | None
    countdown: dict[str, Any] | None
    progress: list[tuple[float, float, str | None]]
    logs: list[tuple[float, Any]]
    access_tokens: list[str]
    http_log: list[tuple[str, str, int]]


async def mcp_session(
    server_url: str,
    client: Client,
    *,
    issuer: str,
    mode: str = "auto",
    auth_method: str = "client_secret_basic",
    headers: dict[str, str] | None = None,
    countdown: tuple[int, float] | None = None,
    timeout: float = 45.0,
) -> McpResult:
    """Connect the real `mcp` client through credgate, call `whoami` (and `countdown`)."""
    import anyio
    import httpx2
    from mcp import Client as McpClient
    from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
    from mcp.client.streamable_http import streamable_http_client

    storage = MemoryTokenStorage()
    provider = ClientCredentialsOAuthProvider(
        server_url=server_url,
        storage=storage,
        client_id=client.client_id,
        client_secret=client.client_secret,
        token_endpoint_auth_method=auth_method,  # type: ignore[arg-type]
        issuer=issuer,
    )
    http_log: list[tuple[str, str, int]] = []
    access_tokens: list[str] = []

    async def on_response(resp: httpx2.Response) -> None:
        http_log.append((resp.request.method, str(resp.request.url), resp.status_code))
        auth = resp.request.headers.get("authorization", "")
        if auth.startswith("Bearer ") and auth[7:] not in access_tokens:
            access_tokens.append(auth[7:])

    progress: list[tuple[float, float, str | None]] = []
    logs: list[tuple[float, Any]] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append((time.time(), p, message))

    async def on_log(params: Any) -> None:
        logs.append((time.time(), params.data))

    result = McpResult(None, None, progress, logs, access_tokens, http_log)
    with anyio.fail_after(timeout):
        async with httpx2.AsyncClient(
            auth=provider,
            headers=headers or {},
            timeout=httpx2.Timeout(10.0, read=30.0),
            trust_env=False,
            event_hooks={"response": [on_response]},
        ) as hc:
            async with McpClient(
                streamable_http_client(server_url, http_client=hc),
                mode=mode,  # type: ignore[arg-type]
                logging_callback=on_log,
                log_level="debug",
                read_timeout_seconds=30,
                raise_exceptions=True,
            ) as mc:
                r = await mc.call_tool("whoami", {})
                assert not r.is_error, f"whoami failed: {r}"
                result.whoami = r.structured_content
                if countdown is not None:
                    n, delay = countdown
                    r = await mc.call_tool("countdown", {"n": n, "delay": delay}, progress_callback=on_progress)
                    assert not r.is_error, f"countdown failed: {r}"
                    result.countdown = r.structured_content
    return result
