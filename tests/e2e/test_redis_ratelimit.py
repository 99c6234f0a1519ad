"""Tenant rate limits shared across replicas through a real Redis (Debian's `redis-server`,
started here on a free port without persistence): `rate_limit.backend = "redis"`, GCRA in a
server-side script, keys that expire on their own, and `rate_limit.redis.on_error` when
Redis dies, stalls and comes back (docs/scaling.md)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from echo_upstream import EchoUpstream
from support import CREDGATE_BIN, ECHO_INTEGRATIONS, Credgate, describe, free_port, route, spec_error, unique

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
PREFIX = "cgtest:"


class Redis:
    """One redis-server process on a fixed free port, restartable on the same port."""

    def __init__(self, workdir: Path):
        assert os.path.exists(REDIS_SERVER), "redis-server is not installed (apt-get install redis-server)"
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def cli(self, *args: str) -> str:
        out = subprocess.run([REDIS_CLI, "-p", str(self.port), "--raw", *args], capture_output=True, timeout=10,
                             check=True)
        return out.stdout.decode().strip()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    r = Redis(tmp_path)
    r.start()
    yield r
    if r.proc is not None and r.proc.poll() is None:
        r.proc.send_signal(signal.SIGCONT)
    r.kill()


def _metric(gate: Credgate, name: str) -> float:
    with httpx.Client(timeout=5, trust_env=False) as c:
        text = c.get(f"{gate.ops_url}/metrics").text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not exported"
    return float(m.group(1))


def _sections(redis_url: str | None, tenant_limits: dict[str, tuple[int, int]], **redis: object) -> dict:
    rl: dict = {"backend": "redis"}
    sections: dict = {"rate_limit": rl, "rate_limit.default": {"per_second": 1000, "burst": 1000}}
    body = {"key_prefix": PREFIX, "timeout_ms": 200, **redis}
    if redis_url is not None:
        body["url"] = redis_url
    sections["rate_limit.redis"] = body
    for tenant, (per_second, burst) in tenant_limits.items():
        sections[f"rate_limit.tenants.{tenant}"] = {"per_second": per_second, "burst": burst}
    return sections


def _statuses(gate: Credgate, token: str, n: int) -> list[int]:
    with httpx.Client(timeout=5, trust_env=False) as c:
        return [c.get(f"{gate.url}/echo/x", headers={"Authorization": f"Bearer {token}"}).status_code
                for _ in range(n)]


def test_three_replicas_hold_a_tenant_to_its_global_rate(tmp_path: Path, echo: EchoUpstream, redis: Redis) -> None:
    limited, other = unique("glob"), unique("free")
    per_second, burst = 40, 10
    sections = _sections(redis.url, {limited: (per_second, burst)})
    routes = [route("echo", "/echo", echo.url)]
    a = Credgate(tmp_path / "a", routes, sections)
    gates = [a]
    try:
        a.start()
        tokens = {}
        for tenant in (limited, other):
            a.put_bearer(tenant, "echo", f"cred-{tenant}")
            tokens[tenant] = a.token(a.create_client(tenant=tenant, integrations=ECHO_INTEGRATIONS))
        for name in ("b", "c"):
            g = Credgate(tmp_path / name, routes, sections, replica_of=a)
            g.start()
            gates.append(g)
        # every replica serves both tenants before the measured run
        for g in gates:
            r = g.proxy("GET", "/echo/warm", tokens[other])
            assert r.status_code == 200, describe(r)

        duration = 5.0
        counts: dict[str, dict[int, int]] = {limited: {}, other: {}}
        window = [float("inf"), 0.0]  # first request sent, last answer received (limited tenant)
        lock = threading.Lock()
        clients = {id(g): [httpx.Client(timeout=5, trust_env=False) for _ in range(3)] for g in gates}
        barrier = threading.Barrier(len(gates) * 3)

        def hammer(gate: Credgate, c: httpx.Client, tenant: str, pause: float) -> None:
            barrier.wait(timeout=30)
            stop = time.monotonic() + duration
            while time.monotonic() < stop:
                sent = time.monotonic()
                r = c.get(f"{gate.url}/echo/load", headers={"Authorization": f"Bearer {tokens[tenant]}"})
                with lock:
                    counts[tenant][r.status_code] = counts[tenant].get(r.status_code, 0) + 1
                    if tenant == limited:
                        window[0] = min(window[0], sent)
                        window[1] = max(window[1], time.monotonic())
                if pause:
                    time.sleep(pause)

        threads = []
        for g in gates:
            cs = clients[id(g)]
            threads += [threading.Thread(target=hammer, args=(g, cs[0], limited, 0.0)),
                        threading.Thread(target=hammer, args=(g, cs[1], limited, 0.0)),
                        threading.Thread(target=hammer, args=(g, cs[2], other, 0.05))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=duration + 30)
        for cs in clients.values():
            for c in cs:
                c.close()
        elapsed = window[1] - window[0]

        allowed = counts[limited].get(200, 0)
        expected = burst + per_second * elapsed
        assert set(counts[limited]) <= {200, 429}, counts
        assert counts[limited].get(429, 0) > allowed, f"load did not exceed the limit: {counts}"
        assert abs(allowed - expected) <= 0.10 * expected, (
            f"{allowed} allowed across 3 replicas in {elapsed:.2f}s; the global limit allows {expected:.0f}: {counts}"
        )
        assert counts[other].get(200, 0) >= 30 and set(counts[other]) == {200}, f"second tenant affected: {counts}"

        # the state lives in Redis under the prefix, with a TTL (it expires on its own)
        key = f"{PREFIX}t:{limited}"
        assert redis.cli("EXISTS", key) == "1", redis.cli("KEYS", f"{PREFIX}*")
        ttl = int(redis.cli("PTTL", key))
        assert 0 < ttl <= 1000 * burst // per_second + 1000, ttl
        time.sleep(ttl / 1000 + 0.2)
        assert redis.cli("EXISTS", key) == "0", "bucket key did not expire"
        assert all(_metric(g, "credgate_rate_limit_backend_errors_total") == 0 for g in gates)
    finally:
        for g in reversed(gates):
            g.stop()


def test_redis_down_falls_back_to_local_limits_then_recovers(
    tmp_path: Path, echo: EchoUpstream, redis: Redis
) -> None:
    tenant = unique("fall")
    per_second, burst = 2, 5
    gate = Credgate(tmp_path / "g", [route("echo", "/echo", echo.url)],
                    _sections(redis.url, {tenant: (per_second, burst)}, on_error="local"))
    try:
        gate.start()
        gate.put_bearer(tenant, "echo", "cred")
        tok = gate.token(gate.create_client(tenant=tenant, integrations=ECHO_INTEGRATIONS))

        # shared: the burst is taken from Redis
        first = _statuses(gate, tok, burst + 3)
        assert burst <= first.count(200) <= burst + 1 and first.count(429) >= 2, first
        assert redis.cli("EXISTS", f"{PREFIX}t:{tenant}") == "1"

        redis.kill()
        # local buckets take over: still limited, never failing; their burst is fresh
        down = _statuses(gate, tok, burst + 5)
        assert set(down) <= {200, 429}, down
        assert burst <= down.count(200) <= burst + 2 and down.count(429) >= 3, down
        errors = _metric(gate, "credgate_rate_limit_backend_errors_total")
        assert errors >= 1, errors

        redis.start()  # empty: no script cached, no buckets
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and redis.cli("EXISTS", f"{PREFIX}t:{tenant}") != "1":
            time.sleep(0.3)
            _statuses(gate, tok, 1)
        assert redis.cli("EXISTS", f"{PREFIX}t:{tenant}") == "1", "checks did not return to Redis after restart"
        settled = _metric(gate, "credgate_rate_limit_backend_errors_total")
        time.sleep(1.0)
        _statuses(gate, tok, 3)
        assert _metric(gate, "credgate_rate_limit_backend_errors_total") == settled, "still failing after recovery"
    finally:
        gate.stop()


def test_redis_down_with_deny_answers_503_then_recovers(tmp_path: Path, echo: EchoUpstream, redis: Redis) -> None:
    tenant = unique("deny")
    # the URL comes from REDIS_URL here
    gate = Credgate(tmp_path / "g", [route("echo", "/echo", echo.url)],
                    _sections(None, {tenant: (1, 50)}, on_error="deny"), extra_env={"REDIS_URL": redis.url})
    try:
        gate.start()
        gate.put_bearer(tenant, "echo", "cred")
        tok = gate.token(gate.create_client(tenant=tenant, integrations=ECHO_INTEGRATIONS))
        assert _statuses(gate, tok, 3) == [200, 200, 200]
        assert redis.cli("EXISTS", f"{PREFIX}t:{tenant}") == "1", "REDIS_URL not used"

        redis.kill()
        r = gate.proxy("GET", "/echo/x", tok)
        assert r.status_code == 503, describe(r)
        assert spec_error(r)["code"] == "RATE_LIMIT_UNAVAILABLE"
        assert int(r.headers["retry-after"]) >= 1
        assert set(_statuses(gate, tok, 5)) == {503}
        assert _metric(gate, "credgate_rate_limit_backend_errors_total") >= 6

        redis.start()
        deadline = time.monotonic() + 10
        status = 503
        while time.monotonic() < deadline and status != 200:
            time.sleep(0.2)
            status = gate.proxy("GET", "/echo/x", tok).status_code
        assert status == 200, "no recovery after Redis came back"
    finally:
        gate.stop()


def test_stalled_redis_costs_a_bounded_wait(tmp_path: Path, echo: EchoUpstream, redis: Redis) -> None:
    """A Redis that accepts but never answers (SIGSTOP) delays a request by at most
    `timeout_ms`, and the cool-down spares the following ones even that."""
    tenant = unique("slow")
    gate = Credgate(tmp_path / "g", [route("echo", "/echo", echo.url)],
                    _sections(redis.url, {tenant: (100, 100)}, on_error="local", timeout_ms=300))
    try:
        gate.start()
        gate.put_bearer(tenant, "echo", "cred")
        tok = gate.token(gate.create_client(tenant=tenant, integrations=ECHO_INTEGRATIONS))
        assert _statuses(gate, tok, 2) == [200, 200]
        assert redis.proc is not None
        redis.proc.send_signal(signal.SIGSTOP)
        try:
            with httpx.Client(timeout=10, trust_env=False) as c:
                times = []
                for _ in range(8):
                    t0 = time.monotonic()
                    r = c.get(f"{gate.url}/echo/x", headers={"Authorization": f"Bearer {tok}"})
                    times.append(time.monotonic() - t0)
                    assert r.status_code == 200, describe(r)
            assert max(times) < 1.0, times
            assert sum(1 for t in times if t >= 0.29) <= 2, f"each request waited for the stalled Redis: {times}"
        finally:
            redis.proc.send_signal(signal.SIGCONT)
        assert _metric(gate, "credgate_rate_limit_backend_errors_total") >= 1
    finally:
        gate.stop()


def _check_config(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "c.toml"
    path.write_text(text)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("CREDGATE_", "REDIS_"))}
    return subprocess.run([str(CREDGATE_BIN), "check-config", "--config", str(path)], capture_output=True,
                          text=True, timeout=30, env={**base, **(env or {})})


def test_redis_config_is_validated_and_its_password_redacted(tmp_path: Path) -> None:
    r = _check_config(tmp_path, '[rate_limit]\nbackend = "redis"\n')
    assert r.returncode == 1 and "REDIS_URL" in r.stderr, r.stderr
    r = _check_config(tmp_path, '[rate_limit]\nbackend = "redis"\n[rate_limit.redis]\nurl = "http://x"\n')
    assert r.returncode == 1 and "rate_limit.redis.url" in r.stderr, r.stderr
    r = _check_config(tmp_path, '[rate_limit]\nbackend = "redis"\n[rate_limit.redis]\non_error = "maybe"\n',
                      {"REDIS_URL": "redis://127.0.0.1:1"})
    assert r.returncode == 1 and "on_error" in r.stderr, r.stderr
    r = _check_config(tmp_path, '[rate_limit]\nbackend = "redis"\n', {"REDIS_URL": "redis://:hunter2-secret@h:6379/0"})
    assert r.returncode == 0, r.stderr
    assert "hunter2-secret" not in r.stdout + r.stderr
    assert 'url = "redis://:REDACTED@h:6379/0"' in r.stdout, r.stdout


def test_client_limit_is_global_too(tmp_path: Path, echo: EchoUpstream, redis: Redis) -> None:
    """`rate_limit.clients.<id>` draws on a shared bucket as well: two replicas together let
    a limited client through at its burst, not twice it; the tenant's bucket is untouched
    by the refused requests (all-or-nothing)."""
    tenant = unique("cli")
    routes = [route("echo", "/echo", echo.url)]
    a = Credgate(tmp_path / "a", routes, _sections(redis.url, {tenant: (1, 100)}))
    gates = [a]
    try:
        a.start()
        a.put_bearer(tenant, "echo", "cred")
        client = a.create_client(tenant=tenant, integrations=ECHO_INTEGRATIONS)
        token = a.token(client)
        # the client's own limit needs its id, known only now: restart A with it
        a.extra_sections[f"rate_limit.clients.{client.client_id}"] = {"per_second": 1, "burst": 4}
        a.restart()
        b = Credgate(tmp_path / "b", routes, a.extra_sections, replica_of=a)
        b.start()
        gates.append(b)
        statuses = []
        with httpx.Client(timeout=5, trust_env=False) as c:
            for i in range(12):
                g = gates[i % 2]
                statuses.append(c.get(f"{g.url}/echo/c", headers={"Authorization": f"Bearer {token}"}).status_code)
        assert set(statuses) <= {200, 429}, statuses
        assert 4 <= statuses.count(200) <= 5, f"client burst 4 across two replicas: {statuses}"
        assert redis.cli("EXISTS", f"{PREFIX}c:{client.client_id}") == "1"
        # the tenant bucket (burst 100, 1/s) lost only the admitted requests
        tat = int(redis.cli("GET", f"{PREFIX}t:{tenant}"))
        now_s, now_us = redis.cli("TIME").split()
        ahead = tat - (int(now_s) * 1_000_000 + int(now_us))
        assert ahead <= statuses.count(200) * 1_000_000, "refused requests took tenant tokens"
    finally:
        for g in reversed(gates):
            g.stop()
