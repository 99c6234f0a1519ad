"""Tenant isolation: each tenant's token reaches the upstream with that tenant's credential
only; X-Tenant-Id selects among a client's own tenants and nothing else."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest
from support import ECHO_INTEGRATIONS, Credgate, describe, mcp_session, spec_error, unique, upstream_auth


def _upstream_auth(resp) -> str | None:  # noqa: ANN001
    vals = upstream_auth(resp)
    assert len(vals) <= 1, f"several Authorization headers reached the upstream: {vals}"
    return vals[0] if vals else None


def test_two_tenants_over_mcp_see_only_their_credential(gate: Credgate, take_mcp_token: Callable[[], str]) -> None:
    tenants = {unique("alpha"): take_mcp_token(), unique("beta"): take_mcp_token()}
    clients = {}
    for t, cred in tenants.items():
        gate.put_bearer(t, "github", cred)
        clients[t] = gate.create_client(tenant=t)

    async def both() -> dict:
        out = {}
        for _ in range(2):  # interleave: a cache keyed wrongly would show up on the second round
            for t, c in clients.items():
                res = await mcp_session(f"{gate.url}/github/mcp", c, issuer=gate.url)
                out.setdefault(t, []).append(res.whoami["authorization"])
        return out

    seen = anyio.run(both)
    for t, cred in tenants.items():
        assert seen[t] == [f"Bearer {cred}"] * 2, f"tenant {t} saw {seen[t]}"


def test_two_tenants_over_http_see_only_their_credential(gate: Credgate) -> None:
    a, b = unique("ta"), unique("tb")
    creds = {a: f"cred-a-{unique('x')}", b: f"cred-b-{unique('x')}"}
    tokens = {}
    for t in (a, b):
        gate.put_bearer(t, "echo", creds[t])
        tokens[t] = gate.token(gate.create_client(tenant=t, integrations=ECHO_INTEGRATIONS))
    for _ in range(3):
        for t in (a, b):
            r = gate.proxy("GET", "/echo/who", tokens[t])
            assert r.status_code == 200, describe(r)
            assert _upstream_auth(r) == f"Bearer {creds[t]}"
            other = creds[b if t == a else a]
            assert other not in r.text


def test_single_tenant_client_may_name_only_its_own_tenant(gate: Credgate) -> None:
    mine, other = unique("mine"), unique("other")
    gate.put_bearer(mine, "echo", f"cred-{unique('m')}")
    gate.put_bearer(other, "echo", f"cred-{unique('o')}")
    token = gate.token(gate.create_client(tenant=mine, integrations=ECHO_INTEGRATIONS))

    r = gate.proxy("GET", "/echo/x", token, headers={"X-Tenant-Id": other})
    assert r.status_code == 403, describe(r)
    assert spec_error(r)["code"] == "FORBIDDEN"

    r = gate.proxy("GET", "/echo/x", token, headers={"X-Tenant-Id": mine})
    assert r.status_code == 200, describe(r)
    names = [k.lower() for k, _ in r.json()["headers"]]
    assert "x-tenant-id" not in names, "X-Tenant-Id must not be forwarded upstream"


def test_multi_tenant_client_selects_with_header(gate: Credgate) -> None:
    t1, t2, t3 = unique("m1"), unique("m2"), unique("m3")
    creds = {t: f"cred-{t}-{unique('x')}" for t in (t1, t2, t3)}
    for t, c in creds.items():
        gate.put_bearer(t, "echo", c)
    token = gate.token(gate.create_client(tenants=[t1, t2], integrations=ECHO_INTEGRATIONS))

    for t in (t1, t2):
        r = gate.proxy("GET", "/echo/x", token, headers={"X-Tenant-Id": t})
        assert r.status_code == 200, describe(r)
        assert _upstream_auth(r) == f"Bearer {creds[t]}"

    r = gate.proxy("GET", "/echo/x", token)
    assert r.status_code == 400, f"multi-tenant client without X-Tenant-Id: {describe(r)}"
    assert spec_error(r)["code"] == "BAD_REQUEST"

    r = gate.proxy("GET", "/echo/x", token, headers={"X-Tenant-Id": t3})
    assert r.status_code == 403, describe(r)
    assert spec_error(r)["code"] == "FORBIDDEN"


@pytest.mark.parametrize("bad", ["BAD", "a.b", "../x", "a" * 64, "_credgate", "-x"])
def test_bad_tenant_header_is_400(gate: Credgate, bad: str) -> None:
    t = unique("hdr")
    gate.put_bearer(t, "echo", f"cred-{unique('x')}")
    token = gate.token(gate.create_client(tenants=[t], integrations=ECHO_INTEGRATIONS))
    r = gate.proxy("GET", "/echo/x", token, headers={"X-Tenant-Id": bad})
    assert r.status_code == 400, describe(r)
    assert spec_error(r)["code"] == "BAD_REQUEST"


def test_tenant_without_credential_is_not_connected(gate: Credgate) -> None:
    t = unique("nocred")
    token = gate.token(gate.create_client(tenant=t, integrations=ECHO_INTEGRATIONS))
    r = gate.proxy("GET", "/echo/x", token)
    assert r.status_code == 403, describe(r)
    assert spec_error(r)["code"] == "INTEGRATION_NOT_CONNECTED"


def test_integration_not_allowed_is_forbidden(gate: Credgate) -> None:
    t = unique("noint")
    gate.put_bearer(t, "echo", f"cred-{unique('x')}")
    token = gate.token(gate.create_client(tenant=t, integrations=["github"]))
    r = gate.proxy("GET", "/echo/x", token)
    assert r.status_code == 403, describe(r)
    assert spec_error(r)["code"] == "FORBIDDEN"


def test_missing_scope_is_403_with_insufficient_scope(gate: Credgate) -> None:
    t = unique("scope")
    gate.put_bearer(t, "scoped-echo", f"cred-{unique('x')}")
    token = gate.token(gate.create_client(tenant=t, integrations=["scoped-echo"]))
    r = gate.proxy("GET", "/scoped/x", token)
    assert r.status_code == 403, describe(r)
    err = spec_error(r)
    assert err["code"] == "FORBIDDEN"
    www = r.headers.get("www-authenticate", "")
    assert www.startswith("Bearer ") and 'error="insufficient_scope"' in www, www
    assert 'scope="special"' in www, www
    assert "resource_metadata=" in www, www
