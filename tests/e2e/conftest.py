"""Fixtures: real peers (an MCP server from `mcp==2.3.0`, a stdlib echo upstream) and
credgate processes on free 127.0.0.1 ports.

- `echo`: the echo upstream (session).
- `mcp_upstream`: the real MCP server, accepting only the tokens in `mcp_upstream.tokens`
  (session). Each test that stores a credential for the `github` integration takes one of
  them with `take_mcp_token()`.
- `gate`: a shared credgate (session) with the standard routes below. Tests isolate
  themselves by using fresh tenants and clients (`support.unique`).
- `make_gate(routes=None, **sections)`: a credgate of a test's own (function), for restart,
  shutdown, log-hygiene and failure-counting tests.
- `provider`: the Authlib OAuth provider (module), registered as the test module's `APP_ID`.
- `oidc`, `doomed`, `introspecting`, `oidc_reset`: oidc-provider (module) and its guard.
- `bao`: an OpenBao dev server (function); `vault_gate`, `vault_pair`: credgates on it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from echo_upstream import EchoUpstream
from oauth_provider import OAuthProvider
from oidc_provider import RATE, Introspecting, OidcProvider, oidc_integration, oidc_routes
from openbao import OpenBao
from support import Credgate, McpUpstream, route

MCP_TOKEN_POOL = 16


@pytest.fixture(scope="session")
def echo() -> Iterator[EchoUpstream]:
    up = EchoUpstream()
    yield up
    up.close()


@pytest.fixture(scope="session")
def mcp_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[McpUpstream]:
    tokens = [f"upstream-{secrets.token_urlsafe(24)}" for _ in range(MCP_TOKEN_POOL)]
    up = McpUpstream(tmp_path_factory.mktemp("mcp"), tokens)
    yield up
    up.close()


@pytest.fixture(scope="session")
def _mcp_token_pool(mcp_upstream: McpUpstream) -> list[str]:
    return list(mcp_upstream.tokens)


@pytest.fixture
def take_mcp_token(_mcp_token_pool: list[str]) -> Callable[[], str]:
    """Hands out upstream credentials the MCP server accepts, each one once per session."""

    def take() -> str:
        assert _mcp_token_pool, "MCP token pool exhausted: raise MCP_TOKEN_POOL"
        return _mcp_token_pool.pop()

    return take


def standard_routes(echo: EchoUpstream, mcp_upstream: McpUpstream) -> list[dict[str, Any]]:
    return [
        route("github", "/github", mcp_upstream.url),
        route("echo", "/echo", echo.url),
        route("basic-echo", "/basic", echo.url, inject="basic"),
        route("apikey-echo", "/apikey", echo.url, inject={"header": "X-API-Key"}),
        route("raw-echo", "/raw", echo.url, strip_prefix=False),
        route("scoped-echo", "/scoped", echo.url, required_scopes=["special"]),
    ]


@pytest.fixture(scope="session")
def gate(tmp_path_factory: pytest.TempPathFactory, echo: EchoUpstream, mcp_upstream: McpUpstream) -> Iterator[Credgate]:
    g = Credgate(tmp_path_factory.mktemp("gate"), standard_routes(echo, mcp_upstream))
    g.start()
    yield g
    g.stop()


@pytest.fixture
def make_gate(tmp_path: Path, echo: EchoUpstream, mcp_upstream: McpUpstream) -> Iterator[Callable[..., Credgate]]:
    made: list[Credgate] = []

    def make(routes: list[dict[str, Any]] | None = None, start: bool = True, **sections: dict) -> Credgate:
        g = Credgate(
            tmp_path / f"gate{len(made)}",
            routes if routes is not None else standard_routes(echo, mcp_upstream),
            sections,
        )
        made.append(g)
        if start:
            g.start()
        return g

    make.made = made  # type: ignore[attr-defined]  # read by the failure-report hook
    yield make
    for g in made:
        g.stop()


# ----- upstream OAuth providers ------------------------------------------------------------


@pytest.fixture(scope="module")
def provider(request: pytest.FixtureRequest, echo: EchoUpstream) -> Iterator[OAuthProvider]:
    """The Authlib provider (one per test module), registered as the module's `APP_ID`
    (with `PROVIDER_AUTH_METHOD` if the module sets it); the echo upstream accepts only its
    live access tokens meanwhile."""
    kw = {}
    if hasattr(request.module, "PROVIDER_AUTH_METHOD"):
        kw["auth_method"] = request.module.PROVIDER_AUTH_METHOD
    p = OAuthProvider(request.module.APP_ID, secrets.token_urlsafe(24), **kw)
    echo.guard(p.valid_access)
    yield p
    echo.guard(None)
    p.close()


@pytest.fixture(scope="module")
def introspecting(echo: EchoUpstream) -> Iterator[Introspecting]:
    """The echo upstream's guard for oidc-provider tokens (one per test module)."""
    guard = Introspecting()
    echo.guard(guard)  # type: ignore[arg-type]  # anything with __contains__
    yield guard
    echo.guard(None)


def _oidc_provider(workdir: Path, introspecting: Introspecting) -> Iterator[OidcProvider]:
    p = OidcProvider(workdir)
    introspecting.providers.append(p)
    yield p
    introspecting.providers.remove(p)
    p.close()


@pytest.fixture(scope="module")
def oidc(tmp_path_factory: pytest.TempPathFactory, introspecting: Introspecting) -> Iterator[OidcProvider]:
    """oidc-provider (one per test module): modules using it also use `oidc_reset`."""
    yield from _oidc_provider(tmp_path_factory.mktemp("oidc"), introspecting)


@pytest.fixture(scope="module")
def doomed(tmp_path_factory: pytest.TempPathFactory, introspecting: Introspecting) -> Iterator[OidcProvider]:
    """A second provider that a test stops (the `down` integration)."""
    yield from _oidc_provider(tmp_path_factory.mktemp("oidc-doomed"), introspecting)


@pytest.fixture
def oidc_reset(oidc: OidcProvider) -> Iterator[None]:
    """After each test: no answer delay, the usual access-token lifetime."""
    yield
    if oidc.proc.poll() is None:
        oidc.configure(delayMs=0, accessTtl=3600)


# ----- OpenBao -------------------------------------------------------------------------------


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[OpenBao]:
    b = OpenBao(tmp_path)
    yield b
    b.close()


def _gate_maker(build: Callable[..., Credgate]) -> Iterator[Callable[..., Credgate]]:
    """Yields `make(**kw)`: `build(n, **kw)` (`n` counts the gates made so far), started;
    every gate made is stopped after the test."""
    made: list[Credgate] = []

    def make(**kw: Any) -> Credgate:
        g = build(len(made), **kw)
        made.append(g)
        g.start()
        return g

    yield make
    for g in made:
        g.stop()


@pytest.fixture
def vault_gate(
    tmp_path: Path, bao: OpenBao, echo: EchoUpstream, mcp_upstream: McpUpstream
) -> Iterator[Callable[[], Credgate]]:
    """`make()`: a credgate with the standard routes on the test's OpenBao."""

    def build(n: int) -> Credgate:
        return Credgate(
            tmp_path / f"gate{n}",
            standard_routes(echo, mcp_upstream),
            extra_sections={
                "store": {
                    "backend": "vault",
                    "sync_interval_seconds": 1,
                    "vault": {"address": bao.url, "timeout_ms": 1000, "max_retries": 1},
                }
            },
            extra_env={"VAULT_TOKEN": bao.token},
        )

    yield from _gate_maker(build)


@pytest.fixture
def vault_pair(
    tmp_path: Path, bao: OpenBao, echo: EchoUpstream, oidc: OidcProvider
) -> Iterator[Callable[..., Credgate]]:
    """`make(replica_of=None, **sections)`: a credgate on the shared OpenBao."""

    def build(n: int, replica_of: Credgate | None = None, **sections: dict[str, Any]) -> Credgate:
        return Credgate(
            tmp_path / f"vgate{n}",
            oidc_routes(echo),
            {
                "store": {
                    "backend": "vault",
                    "sync_interval_seconds": 1,
                    "vault": {"address": bao.url, "timeout_ms": 2000, "max_retries": 1},
                },
                "integrations.gh": oidc_integration(oidc),
                **RATE,
                **sections,
            },
            {"VAULT_TOKEN": bao.token, "GH_CLIENT_SECRET": oidc.client_secret},
            replica_of=replica_of,
        )

    yield from _gate_maker(build)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On failure, attach the tail of every involved credgate's log to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and call.when in ("setup", "call"):
        funcargs = getattr(item, "funcargs", {})
        for name, value in funcargs.items():
            if isinstance(value, Credgate):
                rep.sections.append((f"credgate log ({name})", value.log_tail(40)))
            elif name == "make_gate":
                for i, g in enumerate(getattr(value, "made", [])):
                    rep.sections.append((f"credgate log (make_gate #{i})", g.log_tail(40)))
        mcp = funcargs.get("mcp_upstream")
        if isinstance(mcp, McpUpstream) and mcp.log_path.exists():
            tail = mcp.log_path.read_text(errors="replace").splitlines()[-20:]
            rep.sections.append(("mcp server log", "\n".join(tail)))


# A skipped test is a capability nobody checked: every peer is installed by scripts/test.sh,
# so a skip (a missing peer, a forgotten mark) fails the run instead of passing quietly.
_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _SKIPPED:
        terminalreporter.write_line(
            f"error: {len(_SKIPPED)} test(s) skipped; a skip counts as a failure here: " + ", ".join(_SKIPPED),
            red=True,
        )
