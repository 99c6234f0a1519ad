"""The oidc-provider peer for the refresh tests: `node tests/oidc/provider.mjs` (pinned
oidc-provider with refresh-token rotation and reuse detection) on a free 127.0.0.1 port, the
echo upstream's introspecting guard, and how the tests wire credgate to it. The fixtures
(`oidc`, `doomed`, `introspecting`, `oidc_reset`, `vault_pair`) are in conftest.py.
"""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from echo_upstream import EchoUpstream
from support import REPO, Client, Credgate, route, unique

OIDC_DIR = REPO / "tests" / "oidc"
START_TIMEOUT = 20.0
CLIENT_ID = "credgate"
# Tenants here make 100 requests at once: keep the rate limiter out of the way.
RATE = {"rate_limit.default": {"per_second": 10000, "burst": 10000}}


class NodeProvider:
    """An oidc-provider script in tests/oidc run with node on a free 127.0.0.1 port: it
    prints `READY {"issuer": …}` once listening; its log goes to `workdir`. The
    introspection and `_test` side channel are common to every script here."""

    def __init__(self, workdir: Path, script: str, argv: list[str], label: str) -> None:
        node = shutil.which("node")
        if node is None:
            pytest.fail("node is not installed (the oidc-provider tests need Node 20+): scripts/test.sh installs it")
        if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            pytest.fail("oidc-provider is missing: npm ci --prefix tests/oidc --no-audit --no-fund")
        self.log = workdir / f"{label}-{secrets.token_hex(3)}.log"
        self._log = self.log.open("wb")
        self.proc = subprocess.Popen(
            [node, str(OIDC_DIR / script), *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=OIDC_DIR,
        )
        ready: dict[str, Any] = {}

        def read_ready() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                if line.startswith(b"READY "):
                    ready.update(json.loads(line[6:]))
                    break
            # keep draining so the child never blocks on a full pipe
            for line in self.proc.stdout:
                self._log.write(line)

        threading.Thread(target=read_ready, daemon=True).start()
        deadline = time.monotonic() + START_TIMEOUT
        while not ready:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"oidc-provider did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        self.issuer: str = ready["issuer"]
        self._http = httpx.Client(timeout=httpx.Timeout(10.0), trust_env=False)

    def introspect(self, token: str) -> dict[str, Any]:
        """RFC 7662 introspection, as a resource server calls it."""
        r = self._http.post(
            f"{self.issuer}/token/introspection",
            data={"token": token},
            auth=("upstream", self.upstream_secret),
        )
        assert r.status_code == 200, f"introspection: {r.status_code} {r.text[:300]}"
        return r.json()

    def active(self, token: str) -> bool:
        return self.introspect(token).get("active") is True

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self._log.close()
        if hasattr(self, "_http"):
            self._http.close()


class OidcProvider(NodeProvider):
    """`node tests/oidc/provider.mjs` on a free 127.0.0.1 port (in-memory state)."""

    def __init__(self, workdir: Path) -> None:
        self.client_secret = secrets.token_urlsafe(24)
        self.upstream_secret = secrets.token_urlsafe(24)
        super().__init__(workdir, "provider.mjs", [self.client_secret, self.upstream_secret], "oidc-provider")
        self.token_url = f"{self.issuer}/token"
        self._http = httpx.Client(timeout=httpx.Timeout(10.0), trust_env=False)

    # side channel
    def _side(self, method: str, path: str, body: dict | None = None) -> Any:
        r = self._http.request(method, f"{self.issuer}/_test/{path}", json=body)
        assert r.status_code == 200, f"provider side channel {path}: {r.status_code} {r.text[:500]}"
        return r.json()

    def seed(self, *, revoke_access: bool = False) -> dict[str, str]:
        """A grant after a login: {grantId, access_token, refresh_token}."""
        return self._side("POST", "seed", {"revokeAccess": revoke_access})

    def configure(self, **settings: int) -> None:
        self._side("POST", "config", settings)

    def revoke(self, grant_id: str) -> None:
        self._side("POST", "revoke", {"grantId": grant_id})

    def stats(self) -> dict[str, Any]:
        return self._side("GET", "stats")

    def refreshes(self, grant_id: str) -> list[dict[str, Any]]:
        """Every refresh_token request for this grant (a request whose token the provider no
        longer knows at all has grantId null and is matched by the token value instead)."""
        return [e for e in self.stats()["refreshes"] if e["grantId"] == grant_id]

    def refreshes_of_token(self, refresh_token: str) -> list[dict[str, Any]]:
        return [e for e in self.stats()["refreshes"] if e["refreshToken"] == refresh_token]

    def revoked(self, grant_id: str) -> bool:
        return grant_id in self.stats()["revokedGrants"]


class Introspecting:
    """The echo upstream's guard: a bearer token is good if a live provider says it is
    active (echo_upstream tests `token in guard`)."""

    def __init__(self, *providers: NodeProvider) -> None:
        self.providers: list[NodeProvider] = list(providers)

    def __contains__(self, token: object) -> bool:
        for p in list(self.providers):
            if p.proc.poll() is not None:
                continue
            try:
                if p.active(str(token)):
                    return True
            except (httpx.HTTPError, AssertionError):
                continue
        return False



def oidc_integration(p: OidcProvider) -> dict[str, Any]:
    return {"token_url": p.token_url, "client_id": CLIENT_ID, "auth_method": "client_secret_post"}


def oidc_routes(echo: EchoUpstream) -> list[dict[str, Any]]:
    return [
        route("gh", "/guarded", echo.url, strip_prefix=False),
        route("down", "/guarded-down", echo.url, strip_prefix=False),
    ]


def connect_seeded(gate: Credgate, seeded: dict[str, str], *, integration: str = "gh", expires_in: int = 3600) -> tuple[Client, str]:
    """Stores the seeded pair for a fresh tenant; returns its client and a caller token."""
    t = unique("oi")
    gate.put_credential(
        t,
        integration,
        {
            "access_token": seeded["access_token"],
            "refresh_token": seeded["refresh_token"],
            "token_type": "Bearer",
            "expires_in": expires_in,
            "scope": "offline_access repo",
        },
    )
    client = gate.create_client(tenant=t, integrations=[integration])
    return client, gate.token(client)

