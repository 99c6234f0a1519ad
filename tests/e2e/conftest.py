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
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from echo_upstream import EchoUpstream
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
