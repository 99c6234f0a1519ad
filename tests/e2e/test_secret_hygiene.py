"""After a full session at RUST_LOG=debug, no secret appears in credgate's output, audit log,
metrics or error bodies (docs/errors.md: no log line at any level contains a secret)."""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
from support import ECHO_INTEGRATIONS, Client, Credgate, describe, http, mcp_session, unique


def test_no_secret_in_logs_audit_or_metrics(
    make_gate: Callable[..., Credgate], take_mcp_token: Callable[[], str]
) -> None:
    gate = make_gate()
    tenant = unique("hyg")
    mcp_cred = take_mcp_token()
    echo_cred = f"echo-secret-{unique('h')}"
    api_key = f"apikey-secret-{unique('h')}"
    refresh = f"refresh-secret-{unique('h')}"
    gate.put_bearer(tenant, "github", mcp_cred)
    gate.put_credential(
        tenant,
        "echo",
        {"access_token": echo_cred, "refresh_token": refresh, "token_type": "Bearer", "expires_in": 3600},
    )
    gate.put_credential(tenant, "apikey-echo", {"apiKey": api_key})
    client = gate.create_client(tenant=tenant, integrations=[*ECHO_INTEGRATIONS, "github"])

    tokens: list[str] = []
    for mode in ("auto", "legacy"):
        res = anyio.run(lambda m=mode: mcp_session(f"{gate.url}/github/mcp", client, issuer=gate.url, mode=m))
        assert res.whoami["authorization"] == f"Bearer {mcp_cred}"
        tokens += res.access_tokens
    tok = gate.token(client)
    tokens.append(tok)
    for path in ("/echo/a", "/apikey/b"):
        r = gate.proxy("GET", path, tok, headers={"X-Request-Id": "hyg-1"})
        assert r.status_code == 200, describe(r)
    # failures that tempt an implementation to log what it got
    wrong = Client(client.client_id, client.client_secret[:-4] + "abcd", None, {})
    assert gate.token_request(wrong).status_code == 401
    assert gate.token_request(wrong, method="post").status_code == 401
    r = gate.proxy("GET", "/echo/a", tok[:-6] + "AAAAAA")
    assert r.status_code == 401
    assert tok[:-6] not in r.text
    assert gate.proxy("GET", f"/echo/a?access_token={tok}").status_code == 401
    assert gate.admin("GET", "/api/admin/oauth/clients", token=gate.admin_token + "x").status_code == 401
    # admin reads return metadata only
    for integ, secret in (("echo", echo_cred), ("echo", refresh), ("apikey-echo", api_key)):
        r = gate.admin("GET", f"/api/admin/credentials/{tenant}/{integ}")
        assert r.status_code == 200, describe(r)
        assert secret not in r.text, f"GET credential revealed a secret: {r.text}"
    r = gate.admin("GET", "/api/admin/oauth/clients")
    assert r.status_code == 200, describe(r)
    assert client.client_secret not in r.text
    with http() as c:
        metrics = c.get(f"{gate.ops_url}/metrics").text

    code = gate.stop()
    assert code == 0, f"credgate exited with {code} on SIGTERM"

    secrets_ = {
        "client secret": client.client_secret,
        "admin token": gate.admin_token,
        "master key": gate.master_key,
        "upstream credential (mcp)": mcp_cred,
        "upstream credential (echo)": echo_cred,
        "upstream refresh token": refresh,
        "upstream api key": api_key,
    }
    for i, t in enumerate(dict.fromkeys(tokens)):
        secrets_[f"access token #{i}"] = t
        secrets_[f"access token #{i} signature"] = t.rsplit(".", 1)[-1]
    outputs = {p.name: p.read_text(errors="replace") for p in gate.log_files()}
    assert gate.audit_path.exists(), "no audit log written at [audit] path"
    outputs["audit.log"] = gate.audit_path.read_text(errors="replace")
    outputs["/metrics"] = metrics
    assert sum(len(v) for k, v in outputs.items() if k.startswith("credgate.")) > 0, "RUST_LOG=debug produced no log"
    leaks = [f"{what} in {where}" for what, s in secrets_.items() for where, text in outputs.items() if s in text]
    assert not leaks, "secrets leaked: " + ", ".join(leaks)

    # the audit log is JSON lines and recorded issued and denied tokens
    lines = [ln for ln in outputs["audit.log"].splitlines() if ln.strip()]
    assert len(lines) >= 3, f"audit log too short: {lines}"
    events = [json.loads(ln) for ln in lines]
    text = json.dumps(events).lower()
    assert "token" in text and client.client_id in text, events[:5]
    assert tenant not in metrics, "tenant label in metrics without metrics.tenant_label"
