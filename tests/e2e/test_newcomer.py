"""A newcomer's first hour (issue 19): the rmcp example server as a third real MCP SDK,
the access log, start-up messages, environment overrides, the CLI, the admin API's rough
edges and the ops port's error body."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from support import (
    CREDGATE_BIN,
    REPO,
    Credgate,
    describe,
    free_port,
    http,
    mcp_session,
    render_config,
    route,
    spec_error,
    unique,
)

MCP_EXAMPLE = REPO / "target" / "debug" / "examples" / "mcp_server"


class RmcpServer:
    """examples/mcp_server.rs (the Rust MCP SDK, rmcp) as a subprocess."""

    def __init__(self, workdir: Path, token: str) -> None:
        assert MCP_EXAMPLE.exists(), f"{MCP_EXAMPLE} missing: run `cargo build --all-targets`"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "rmcp.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(MCP_EXAMPLE), "--port", str(self.port)],
                env={**os.environ, "MCP_ACCEPTED_TOKEN": token},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with http() as c:
                    if c.post(f"{self.url}/mcp", json={}).status_code == 401:
                        return
            except httpx.HTTPError:
                time.sleep(0.1)
        self.close()
        raise AssertionError(f"rmcp example did not start: {self.log.read_text()}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture
def rmcp(tmp_path: Path):
    token = f"rmcp-{secrets.token_urlsafe(16)}"
    server = RmcpServer(tmp_path, token)
    server.token = token  # type: ignore[attr-defined]
    yield server
    server.close()


# ----- the rmcp example through credgate, called by the Python mcp client ---------------


@pytest.mark.parametrize("mode", ["legacy", "auto"])
def test_python_client_reaches_rmcp_server_through_credgate(make_gate, rmcp, mode: str) -> None:
    gate: Credgate = make_gate(routes=[route("rust", "/rust", rmcp.url)])
    tenant = unique("rs")
    gate.put_bearer(tenant, "rust", rmcp.token)
    client = gate.create_client(tenant=tenant, integrations=["rust"])
    res = anyio.run(lambda: mcp_session(f"{gate.url}/rust/mcp", client, issuer=gate.url, mode=mode))
    assert res.whoami is not None
    assert res.whoami["authorization"] == f"Bearer {rmcp.token}", res.whoami
    for tok in res.access_tokens:
        assert tok not in str(res.whoami), "credgate's own token reached the MCP server"
    assert res.whoami["x_request_id"], "credgate sends X-Request-Id upstream"


def test_rmcp_server_refuses_calls_without_its_token(rmcp) -> None:
    with http() as c:
        r = c.post(f"{rmcp.url}/mcp", json={}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401, describe(r)


# ----- access log ------------------------------------------------------------------------


def test_access_log_line_per_request_without_secrets(make_gate, rmcp) -> None:
    gate: Credgate = make_gate(routes=[route("rust", "/rust", rmcp.url)])
    tenant = unique("acc")
    gate.put_bearer(tenant, "rust", rmcp.token)
    client = gate.create_client(tenant=tenant, integrations=["rust"])
    token = gate.token(client)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}
    headers = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    ok = gate.proxy("POST", "/rust/mcp", token, json=body, headers=headers)
    assert ok.status_code == 200, describe(ok)
    denied = gate.proxy("GET", "/rust/mcp", "not-a-token")
    assert denied.status_code == 401
    rid_ok, rid_denied = ok.headers["x-request-id"], spec_error(denied) and denied.json()["request_id"]
    time.sleep(0.3)
    lines = [ln for ln in gate.logs().splitlines() if "credgate::access" in ln]
    line_ok = next((ln for ln in lines if rid_ok in ln), None)
    assert line_ok, f"no access log line for {rid_ok}: {lines[-5:]}"
    for want in ("method=POST", "path=/rust/mcp", 'route="rust"', "status=200", "duration_ms=",
                 client.client_id, tenant):
        assert want in line_ok, f"{want!r} missing: {line_ok}"
    line_denied = next((ln for ln in lines if rid_denied in ln), None)
    assert line_denied and "status=401" in line_denied, lines[-5:]
    admin = gate.admin("GET", "/api/admin/oauth/clients")
    line_admin = next((ln for ln in lines_now(gate) if admin.headers["x-request-id"] in ln), "")
    assert 'route="admin"' in line_admin and "admin-token" in line_admin and "status=200" in line_admin, line_admin
    logs = gate.logs()
    for secret in (token, rmcp.token, client.client_secret, gate.admin_token, "not-a-token"):
        assert secret not in logs, "a secret reached the log"


def lines_now(gate: Credgate) -> list[str]:
    time.sleep(0.3)
    return [ln for ln in gate.logs().splitlines() if "credgate::access" in ln]


# ----- start-up ----------------------------------------------------------------------------


def _serve(tmp_path: Path, sections: dict, routes: list[dict], env: dict[str, str], wait: float = 2.5,
           cwd: Path | None = None, config_name: str = "c.toml") -> tuple[int | None, str]:
    """Runs `credgate serve` for `wait` seconds (or until it exits); returns (status, output)."""
    f = tmp_path / config_name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(render_config(sections, routes))
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CREDGATE_", "RUST_LOG"))}
    p = subprocess.Popen([str(CREDGATE_BIN), "serve", "--config", str(f)], env={**base, **env},
                         cwd=cwd or tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        out, _ = p.communicate(timeout=wait)
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=10)
        return None, out.decode(errors="replace")
    return p.returncode, out.decode(errors="replace")


def _sections(tmp_path: Path, store: str | None = None) -> dict[str, Any]:
    port = free_port()
    return {
        "proxy": {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"},
        "ops": {"listen": f"127.0.0.1:{free_port()}"},
        "store": {"backend": "embedded", "path": store or str(tmp_path / "s.store")},
        "audit": {"path": str(tmp_path / "audit.log")},
    }


ADMIN = {"CREDGATE_ADMIN_TOKEN": "dev-admin-token-0123456789abcdef0123"}
ROUTES = [route("github", "/github", "http://127.0.0.1:9")]


def test_startup_log_names_version_config_store_and_warns(tmp_path: Path) -> None:
    sections = _sections(tmp_path)
    sections["proxy"]["public_url"] = "http://127.0.0.1:1"  # on loopback, another port
    sections["integrations.github"] = {"token_url": "http://127.0.0.1:9/token", "client_id": "app"}
    rc, out = _serve(tmp_path, sections, ROUTES, {"CREDGATE_PROXY_LISTEN": "127.0.0.1:1"})
    assert rc is None, out
    assert re.search(r"credgate starting.*version=\S*\d+\.\d+\.\d+", out), out
    assert str(tmp_path / "c.toml") in out and str(tmp_path / "s.store") in out, out
    assert "CREDGATE_ADMIN_TOKEN is not set" in out, out
    assert "CREDGATE_PROXY_LISTEN" in out and "matches no configuration key" in out, out
    assert "public_url" in out and "port 1" in out, out
    assert "GITHUB_CLIENT_SECRET" in out, out


def test_store_path_is_relative_to_the_config_folder(tmp_path: Path) -> None:
    conf_dir, elsewhere = tmp_path / "etc", tmp_path / "elsewhere"
    elsewhere.mkdir()
    rc, out = _serve(conf_dir, _sections(conf_dir, store="data/x.store"), ROUTES, ADMIN, cwd=elsewhere)
    assert rc is None, out
    assert (conf_dir / "data" / "x.store").exists(), out
    assert not (elsewhere / "data").exists()
    assert str(conf_dir / "data" / "x.store") in out, "the absolute store path is logged"


@pytest.mark.parametrize("how", ["file", "RUST_LOG"])
def test_a_log_level_that_is_no_level_fails_check_config_and_serve(tmp_path: Path, how: str) -> None:
    sections = _sections(tmp_path)
    env = dict(ADMIN)
    if how == "file":
        sections["log"] = {"level": "verbose"}
    else:
        env["RUST_LOG"] = "verbose"
    rc, out = _serve(tmp_path, sections, ROUTES, env)
    assert rc == 1, out
    assert "verbose" in out and "not a log level" in out, out
    r = _cli(tmp_path, "check-config", "--config", str(tmp_path / "c.toml"), env=env)
    assert r.returncode == 1 and "not a log level" in r.stderr, r


def test_misspelt_override_is_an_environment_error(tmp_path: Path) -> None:
    rc, out = _serve(tmp_path, _sections(tmp_path), ROUTES, {**ADMIN, "CREDGATE_PROXY__LISTN": "127.0.0.1:1"})
    assert rc == 1, out
    assert "environment variable CREDGATE_PROXY__LISTN" in out, out
    assert "c.toml" not in out, f"blamed on the config file: {out}"
    assert out.count("CREDGATE_PROXY__LISTN") == 1, out


def test_overrides_are_typed_by_key_and_reach_routes(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(render_config(_sections(tmp_path), ROUTES))
    env = {"CREDGATE_STORE__VAULT__KV_MOUNT": "123.456", "CREDGATE_ROUTES__0__UPSTREAM": "http://127.0.0.1:4321"}
    r = _cli(tmp_path, "check-config", "--config", str(f), env=env)
    assert r.returncode == 0, r
    assert 'kv_mount = "123.456"' in r.stdout and 'upstream = "http://127.0.0.1:4321"' in r.stdout, r.stdout


def test_startup_error_is_printed_once_with_a_hint(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sections = _sections(tmp_path)
        port = taken.getsockname()[1]
        sections["proxy"] = {"listen": f"127.0.0.1:{port}", "public_url": f"http://127.0.0.1:{port}"}
        rc, out = _serve(tmp_path, sections, ROUTES, ADMIN)
    assert rc == 1, out
    assert out.lower().count("address already in use") == 1, out
    assert "hint:" in out and "proxy.listen" in out, out


# ----- CLI and check-config ----------------------------------------------------------------


def _cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CREDGATE_", "RUST_LOG"))}
    return subprocess.run([str(CREDGATE_BIN), *args], capture_output=True, text=True, timeout=30,
                          env={**base, **(env or {})}, cwd=tmp_path, stdin=subprocess.DEVNULL)


def test_cli_version_flags_and_no_admin_token_flag(tmp_path: Path) -> None:
    for flag in ("--version", "-V"):
        r = _cli(tmp_path, flag)
        assert r.returncode == 0 and re.search(r"credgate \d+\.\d+\.\d+", r.stdout), r
    r = _cli(tmp_path, "serve", "--help")
    assert "configuration file" in r.stdout, r.stdout
    assert "--admin-token" not in r.stdout, r.stdout
    r = _cli(tmp_path, "serve", "--config", "x.toml", "--admin-token", "x" * 40)
    assert r.returncode == 2 and "--admin-token" in r.stderr, r


def test_check_config_shows_defaults_and_names_problems(tmp_path: Path) -> None:
    f = tmp_path / "c.toml"
    f.write_text(render_config(_sections(tmp_path), ROUTES))
    r = _cli(tmp_path, "check-config", "--config", str(f))
    assert r.returncode == 0, r
    assert re.search(r'issuer = "http://127\.0\.0\.1:\d+"', r.stdout), r.stdout
    assert "master_key_file = " in r.stdout, r.stdout

    bad = _sections(tmp_path)
    bad["ops"]["listen"] = "localhost:9090"
    f.write_text(render_config(bad, ROUTES))
    r = _cli(tmp_path, "check-config", "--config", str(f))
    assert r.returncode == 1 and "127.0.0.1:9090" in r.stderr, r.stderr

    f.write_text(render_config(_sections(tmp_path), [*ROUTES, {"integration": "b", "path_prefix": "/b"}]))
    r = _cli(tmp_path, "check-config", "--config", str(f))
    assert r.returncode == 1 and "routes[1]" in r.stderr, r.stderr

    missing = tmp_path / "absent.toml"
    r = _cli(tmp_path, "check-config", "--config", str(missing))
    assert r.returncode == 1 and r.stderr.count(str(missing)) == 1, r.stderr


@pytest.mark.parametrize("name", ["admin", "oauth", "none"])
def test_integration_names_of_builtin_route_labels_are_refused(tmp_path: Path, name: str) -> None:
    f = tmp_path / "c.toml"
    f.write_text(render_config(_sections(tmp_path), [route(name, "/x", "http://127.0.0.1:9")]))
    r = _cli(tmp_path, "check-config", "--config", str(f))
    assert r.returncode == 1 and "reserved" in r.stderr, r


# ----- admin API and ops port --------------------------------------------------------------


def test_admin_credential_rough_edges(gate: Credgate) -> None:
    tenant = unique("adm")
    cred = {"access_token": "edge-token-1", "token_type": "Bearer", "expires_in": 3600}
    r = gate.admin("PUT", f"/api/admin/credentials/{tenant}/no-such-integration", json=cred)
    assert r.status_code == 400, describe(r)
    assert "no-such-integration" in spec_error(r)["message"]

    put = gate.admin("PUT", f"/api/admin/credentials/{tenant}/echo", json=cred)
    assert put.status_code == 201, describe(put)
    get = gate.admin("GET", f"/api/admin/credentials/{tenant}/echo")
    assert get.status_code == 200, describe(get)
    assert get.json()["success"] is True and get.json()["credential"]["tenant"] == tenant, get.json()
    assert put.json()["credential"]["updatedAt"], put.json()
    assert put.json()["credential"]["updatedAt"] == get.json()["credential"]["updatedAt"]
    assert "edge-token-1" not in put.text + get.text

    r = gate.admin("GET", "/api/admin/oauth/clients", token=None, headers={"Authorization": gate.admin_token})
    assert r.status_code == 401
    assert "Bearer" in spec_error(r)["message"], r.text


def test_ops_port_errors_and_build_info(gate: Credgate) -> None:
    with http() as c:
        r = c.get(f"{gate.ops_url}/nope")
        assert r.status_code == 404
        assert spec_error(r)["code"] == "NOT_FOUND" and r.json()["request_id"], r.text
        m = c.get(f"{gate.ops_url}/metrics").text
    assert re.search(r'credgate_build_info\{version="\d+\.\d+\.\d+[^"]*"\} 1', m), m[:500]
