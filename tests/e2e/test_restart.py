"""State survives a restart on the same embedded store file and master key."""

from __future__ import annotations

from collections.abc import Callable

import anyio
from support import ECHO_INTEGRATIONS, Credgate, describe, http, mcp_session, unique, upstream_auth


def test_clients_keys_and_credentials_survive_restart(
    make_gate: Callable[..., Credgate], take_mcp_token: Callable[[], str]
) -> None:
    gate = make_gate()
    tenant = unique("persist")
    echo_cred = f"echo-cred-{unique('p')}"
    mcp_cred = take_mcp_token()
    gate.put_bearer(tenant, "echo", echo_cred)
    gate.put_bearer(tenant, "github", mcp_cred)
    client = gate.create_client(tenant=tenant, integrations=[*ECHO_INTEGRATIONS, "github"])
    old_token = gate.token(client)
    r = gate.proxy("GET", "/echo/before", old_token)
    assert r.status_code == 200, describe(r)
    assert upstream_auth(r) == [f"Bearer {echo_cred}"]

    gate.restart()
    assert gate.store_path.exists(), "embedded store file not at the configured path"

    # a token issued before the restart still validates: the signing key was persisted
    r = gate.proxy("GET", "/echo/after", old_token)
    assert r.status_code == 200, f"old token after restart: {describe(r)}"
    assert upstream_auth(r) == [f"Bearer {echo_cred}"]
    # the old client secret still gets a token
    r = gate.token_request(client)
    assert r.status_code == 200, f"old client secret after restart: {describe(r)}"
    # and the whole MCP flow works on the restarted process
    res = anyio.run(lambda: mcp_session(f"{gate.url}/github/mcp", client, issuer=gate.url, mode="legacy"))
    assert res.whoami["authorization"] == f"Bearer {mcp_cred}"
    # metadata of the stored credential is still there, and reveals no secret
    r = gate.admin("GET", f"/api/admin/credentials/{tenant}/echo")
    assert r.status_code == 200, describe(r)
    assert echo_cred not in r.text
    r = gate.admin("GET", f"/api/admin/oauth/clients/{client.client_id}")
    assert r.status_code == 200, describe(r)
    assert client.client_secret not in r.text


def test_restart_twice_keeps_jwks_stable(make_gate: Callable[..., Credgate]) -> None:
    gate = make_gate()
    with http() as c:
        kids1 = {k["kid"] for k in c.get(f"{gate.url}/.well-known/jwks.json").json()["keys"]}
    gate.restart()
    gate.restart()
    with http() as c:
        kids2 = {k["kid"] for k in c.get(f"{gate.url}/.well-known/jwks.json").json()["keys"]}
    assert kids1 and kids1 <= kids2, (kids1, kids2)


def test_store_file_holds_no_plaintext_secret(make_gate: Callable[..., Credgate]) -> None:
    """Credentials are encrypted at rest: the raw value is nowhere in the store file."""
    gate = make_gate()
    tenant = unique("mk")
    cred = f"mk-cred-{unique('x')}"
    gate.put_bearer(tenant, "echo", cred)
    gate.stop()
    assert cred.encode() not in gate.store_path.read_bytes(), "credential stored in clear text"
    assert gate.admin_token.encode() not in gate.store_path.read_bytes()
