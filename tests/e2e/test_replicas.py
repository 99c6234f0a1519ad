"""Two credgate processes on one embedded store file, as replicas behind one public URL:
each validates the other's tokens, sees the other's clients and credentials, and a
suspension on one reaches the other within store.sync_interval_seconds (docs/http-api.md)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from echo_upstream import EchoUpstream
from support import ECHO_INTEGRATIONS, Credgate, describe, eventually, route, unique

SYNC_SECONDS = 1


@pytest.fixture
def pair(tmp_path: Path, echo: EchoUpstream) -> Iterator[tuple[Credgate, Credgate]]:
    routes = [route("echo", "/echo", echo.url)]
    sections = {"store": {"sync_interval_seconds": SYNC_SECONDS}}
    a = Credgate(tmp_path / "a", routes, sections)
    b = Credgate(tmp_path / "b", routes, sections, replica_of=a)
    try:
        a.start()
        b.start()
        yield a, b
    finally:
        b.stop()
        a.stop()


def test_replicas_share_clients_keys_and_credentials(pair: tuple[Credgate, Credgate]) -> None:
    a, b = pair
    tenant = unique("rep")
    a.put_bearer(tenant, "echo", "replicated-cred")
    client = a.create_client(tenant=tenant, integrations=ECHO_INTEGRATIONS)
    tok_a = a.token(client)

    # B validates A's token (shared signing keys) and injects A's stored credential
    assert eventually(lambda: b.proxy("GET", "/echo/x", tok_a).status_code == 200, SYNC_SECONDS + 5), describe(
        b.proxy("GET", "/echo/x", tok_a)
    )
    r = b.proxy("GET", "/echo/x", tok_a)
    assert [v for k, v in r.json()["headers"] if k.lower() == "authorization"] == ["Bearer replicated-cred"]
    # B issues tokens to A's client; A validates them
    r = b.token_request(client)
    assert r.status_code == 200, describe(r)
    assert a.proxy("GET", "/echo/y", r.json()["access_token"]).status_code == 200


def test_suspension_reaches_other_replica_within_sync_interval(pair: tuple[Credgate, Credgate]) -> None:
    a, b = pair
    tenant = unique("rsus")
    a.put_bearer(tenant, "echo", "c")
    client = a.create_client(tenant=tenant, integrations=ECHO_INTEGRATIONS)
    tok = a.token(client)
    assert eventually(lambda: b.proxy("GET", "/echo/s", tok).status_code == 200, SYNC_SECONDS + 5)

    r = a.admin("PUT", f"/api/admin/oauth/clients/{client.client_id}", json={"active": False})
    assert r.status_code == 200, describe(r)
    assert a.proxy("GET", "/echo/s", tok).status_code == 401, "not refused at once on the replica that suspended"
    start = time.monotonic()
    ok = eventually(lambda: b.proxy("GET", "/echo/s", tok).status_code == 401, SYNC_SECONDS + 3)
    assert ok, f"other replica still accepts a suspended client's token after {time.monotonic() - start:.1f}s"
