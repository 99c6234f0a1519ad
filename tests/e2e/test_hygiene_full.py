"""Secret hygiene over a full session (issue #9), on the Vault backend so that real Transit
ciphertexts exist: every log line (RUST_LOG=debug), audit line, metric and response body that
is not meant to carry a secret is gathered during a session of successful and failing calls,
and none may contain any token, secret or ciphertext used in it.

Responses that exist to hand over a secret (a token response, a new client's or rotated
secret, a static API key, and what the echo upstream reports it received) are the only ones
left out of the gathered text. test_secret_hygiene.py covers the embedded store and the real
MCP client; this one adds rotation, static keys, private_key_jwt, introspection, revocation,
suspension, upstream refresh and its failure, refused bodies that carry secrets, and Vault.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from echo_upstream import EchoUpstream
from oauth_provider import OAuthProvider
from openbao import OpenBao
from support import Client, Credgate, b64url, describe, http, route, unique

APP_ID = "hygiene-app"  # the `provider` fixture (conftest.py) registers this client


def test_no_secret_anywhere_after_a_full_session(
    tmp_path: Path, bao: OpenBao, echo: EchoUpstream, provider: OAuthProvider
) -> None:
    gate = Credgate(
        tmp_path / "g",
        [route("echo", "/echo", echo.url), route("gh", "/guarded", echo.url, strip_prefix=False),
         route("apikey", "/apikey", echo.url, inject={"header": "X-API-Key"})],
        {
            "store": {"backend": "vault", "sync_interval_seconds": 1,
                      "vault": {"address": bao.url, "timeout_ms": 2000, "max_retries": 1}},
            "integrations.gh": {"token_url": provider.token_url, "client_id": APP_ID,
                                "auth_method": "client_secret_post"},
        },
        {"VAULT_TOKEN": bao.token, "GH_CLIENT_SECRET": provider.client.client_secret},
    )
    gate.start()
    gathered: list[str] = []  # every body not meant to carry a secret
    handed: list[str] = []  # bodies that hand a secret over: mined for the secrets list

    def keep(r: httpx.Response, hands_over: bool = False) -> httpx.Response:
        (handed if hands_over and r.status_code < 300 else gathered).append(
            f"{r.status_code} {dict(r.headers)} {r.text}"
        )
        return r

    secrets_: dict[str, str] = {
        "admin token": gate.admin_token,
        "vault token": bao.token,
        "provider app secret": provider.client.client_secret,
    }
    try:
        tenant = unique("hy")
        echo_cred = f"echo-cred-{secrets.token_urlsafe(12)}"
        api_key = f"api-key-{secrets.token_urlsafe(12)}"
        access1, refresh1 = provider.seed(valid=False)  # the upstream will answer 401 → refresh
        secrets_ |= {"echo credential": echo_cred, "api key": api_key, "upstream access": access1,
                     "upstream refresh": refresh1}
        keep(gate.put_credential(tenant, "echo", {"access_token": echo_cred, "token_type": "Bearer", "expires_in": 3600}))
        keep(gate.put_credential(tenant, "apikey", {"apiKey": api_key}))
        keep(gate.put_credential(tenant, "gh", {"access_token": access1, "refresh_token": refresh1,
                                                "token_type": "Bearer", "expires_in": 3600, "scope": "repo"}))
        for integ in ("echo", "apikey", "gh"):
            keep(gate.admin("GET", f"/api/admin/credentials/{tenant}/{integ}"))

        # clients: secret, rotation, private_key_jwt
        client = gate.create_client(tenant=tenant, integrations=["echo", "apikey", "gh"], scopes=["mcp", "introspect"])
        secrets_["client secret"] = client.client_secret
        rot = keep(gate.admin("POST", f"/api/admin/oauth/clients/{client.client_id}/rotate-secret", json={"graceMinutes": 5}), True)
        new_secret = rot.json()["clientSecret"]
        secrets_["rotated client secret"] = new_secret
        key = Ed25519PrivateKey.generate()
        x = b64url(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        jclient = keep(gate.admin("POST", "/api/admin/oauth/clients", json={
            "name": "hy-jwt", "tenant": tenant, "scopes": ["mcp"], "allowedIntegrations": ["echo"],
            "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"}]}}), True).json()["client"]
        now = int(time.time())
        assertion = jwt.encode({"iss": jclient["clientId"], "sub": jclient["clientId"], "aud": gate.url,
                                "exp": now + 300, "iat": now, "jti": unique("a")}, key, algorithm="EdDSA",
                               headers={"kid": "k1"})
        secrets_["client assertion"] = assertion
        secrets_["client assertion signature"] = assertion.rsplit(".", 1)[1]

        tokens: list[str] = []
        with http() as c:
            for auth, data in (
                ((client.client_id, client.client_secret), {}),
                ((client.client_id, new_secret), {}),
                (None, {"client_id": client.client_id, "client_secret": new_secret}),
                (None, {"client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                        "client_assertion": assertion}),
            ):
                r = keep(c.post(f"{gate.url}/oauth/token", data={"grant_type": "client_credentials", **data}, auth=auth), True)
                assert r.status_code == 200, describe(r)
                tokens.append(r.json()["access_token"])
            r = keep(c.post(f"{gate.url}/oauth/token", json={"grant_type": "client_credentials",
                                                              "client_id": client.client_id, "client_secret": new_secret}), True)
            tokens.append(r.json()["access_token"])
        static = keep(gate.admin("POST", f"/api/admin/oauth/clients/{client.client_id}/generate-token",
                                 json={"expirationDays": 1}), True).json()["api_key"]
        tokens.append(static)
        tok = tokens[0]

        # successful proxied calls, including an upstream 401 → refresh → retry
        for path in ("/echo/a", "/apikey/b", "/guarded/c"):
            r = gate.proxy("GET", path, tok)
            assert r.status_code == 200, describe(r)
            handed.append(r.text)
        r = keep(gate.admin("GET", f"/api/admin/credentials/{tenant}/gh"))
        assert r.json()["credential"].get("refreshCount", 0) >= 1, r.text
        # every token the provider ever issued (rotated access and refresh tokens)
        for t in list(provider.tokens.values()):
            secrets_[f"provider access {t.access_token[:6]}"] = t.access_token
            if t.refresh_token:
                secrets_[f"provider refresh {t.refresh_token[:6]}"] = t.refresh_token
        assert len(provider.tokens) >= 2, "no refresh happened"

        # introspection and revocation
        with http() as c:
            keep(c.post(f"{gate.url}/oauth/introspect", data={"token": tok},
                        headers={"Authorization": f"Bearer {gate.admin_token}"}))
            keep(c.post(f"{gate.url}/oauth/introspect", data={"token": tokens[1]},
                        auth=(client.client_id, new_secret)))
            keep(c.post(f"{gate.url}/oauth/revoke", data={"token": tokens[2]}, auth=(client.client_id, new_secret)))
        keep(gate.proxy("GET", "/echo/revoked", tokens[2]))

        # failures that tempt an implementation to log or echo what it got
        wrong = Client(client.client_id, new_secret[:-4] + "abcd", None, {})
        keep(gate.token_request(wrong))
        keep(gate.token_request(wrong, method="post"))
        keep(gate.token_request(Client(client.client_id, new_secret, None, {}), scope="mcp admin"))
        keep(gate.proxy("GET", "/echo/a", tok[:-6] + "AAAAAA"))
        keep(gate.proxy("GET", f"/echo/a?access_token={tok}"))
        keep(gate.proxy("GET", "/echo/a", tok, headers={"X-Tenant-Id": "someone-else"}))
        keep(gate.admin("GET", "/api/admin/oauth/clients", token=gate.admin_token + "x"))
        keep(gate.admin("GET", "/api/admin/oauth/clients", token=tok))
        with http() as c:
            keep(c.post(f"{gate.url}/oauth/token", json={"grant_type": "client_credentials", "client_id": client.client_id,
                                                          "client_secret": [new_secret]}))
            keep(c.post(f"{gate.url}/oauth/token", content=f"grant_type=client_credentials&client_secret={new_secret}&client_secret={new_secret}",
                        headers={"Content-Type": "application/x-www-form-urlencoded"}))
            bad_assert = assertion.rsplit(".", 1)[0] + "." + b64url(b"\0" * 64)
            keep(c.post(f"{gate.url}/oauth/token", data={
                "grant_type": "client_credentials", "client_assertion": bad_assert,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}))
        private = {"kty": "OKP", "crv": "Ed25519", "x": x, "d": b64url(secrets.token_bytes(32))}
        secrets_["private jwk d"] = private["d"]
        keep(gate.admin("POST", "/api/admin/oauth/clients", json={"name": "p", "tenant": tenant, "jwks": {"keys": [private]}}))
        bad_secret = f"bad-body-secret-{secrets.token_urlsafe(8)}"
        secrets_["secret in a refused credential body"] = bad_secret
        keep(gate.admin("PUT", f"/api/admin/credentials/{tenant}/echo",
                        json={"access_token": bad_secret, "apiKey": bad_secret}))
        keep(gate.admin("PUT", f"/api/admin/credentials/{tenant}/echo",
                        json={"access_token": bad_secret + "\n", "token_type": "Bearer"}))
        keep(gate.admin("PUT", f"/api/admin/credentials/{tenant}/echo",
                        content=b'{"access_token": "' + bad_secret.encode() + b'", "expires_in": }'))
        # the provider fails: refresh now → typed error; then invalid_grant
        provider.mode = "error"
        keep(gate.admin("POST", f"/api/admin/credentials/{tenant}/gh/refresh"))
        provider.mode = "invalid_grant"
        keep(gate.admin("POST", f"/api/admin/credentials/{tenant}/gh/refresh"))
        provider.mode = "ok"
        for t in list(provider.tokens.values()):
            secrets_[f"provider access {t.access_token[:6]}"] = t.access_token
            secrets_[f"provider refresh {t.refresh_token[:6]}"] = t.refresh_token or secrets_["upstream refresh"]
        # suspension, then deletion
        keep(gate.admin("PUT", f"/api/admin/oauth/clients/{client.client_id}", json={"active": False}))
        keep(gate.proxy("GET", "/echo/suspended", tok))
        keep(gate.token_request(Client(client.client_id, new_secret, None, {})))
        keep(gate.admin("DELETE", f"/api/admin/oauth/clients/{client.client_id}"))
        keep(gate.proxy("GET", "/echo/deleted", static))
        keep(gate.admin("GET", "/api/admin/oauth/clients"))
        with http() as c:
            metrics = c.get(f"{gate.ops_url}/metrics").text
            keep(c.get(f"{gate.ops_url}/readyz"))

        # what credgate wrote to Vault: Transit ciphertexts of the upstream credentials
        kv = bao.client.secrets.kv.v2
        for integ in ("echo", "apikey", "gh"):
            data = kv.read_secret_version(path=f"{tenant}/{integ}", mount_point="secret",
                                          raise_on_deleted_version=False)["data"]["data"]
            for field in ("accessToken", "refreshToken"):
                ct = data.get(field)
                if ct:
                    assert ct.startswith("vault:v"), (integ, field, ct[:12])
                    secrets_[f"ciphertext {integ}.{field}"] = ct
                    secrets_[f"ciphertext body {integ}.{field}"] = ct.split(":", 2)[2]
    finally:
        code = gate.stop()
    assert code == 0, f"credgate exited with {code}"

    for i, t in enumerate(dict.fromkeys(tokens)):
        secrets_[f"access token #{i}"] = t
        secrets_[f"access token #{i} signature"] = t.rsplit(".", 1)[-1]
    outputs = {p.name: p.read_text(errors="replace") for p in gate.log_files()}
    outputs["audit.log"] = gate.audit_path.read_text(errors="replace")
    outputs["/metrics"] = metrics
    outputs["bodies"] = "\n".join(gathered)
    lines = sum(t.count("\n") for t in outputs.values())
    assert sum(len(v) for k, v in outputs.items() if k.startswith("credgate.")) > 0, "no log output"
    assert len(gathered) >= 30, len(gathered)
    leaks = [f"{what} in {where}" for what, s in secrets_.items() for where, text in outputs.items() if s and s in text]
    assert not leaks, "secrets leaked: " + ", ".join(leaks)
    # the audit log recorded the session as JSON lines
    events = [json.loads(ln) for ln in outputs["audit.log"].splitlines() if ln.strip()]
    assert len(events) >= 10, events
    print(f"hygiene: {len(secrets_)} secrets checked against {lines} lines of logs, audit, metrics and {len(gathered)} bodies")
