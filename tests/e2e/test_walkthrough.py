"""The README's walkthrough, run as written, on a fresh copy of the repository.

The test reads README.md, takes every ```sh block of the "## Walkthrough" section in
order, and runs them as one bash script (`set -euo pipefail`) in a temporary folder that
holds a copy of the repository's tracked files (`git ls-files`: README.md, config/, …),
like a fresh clone. It then checks that the final `whoami` call through credgate reports
the injected upstream credential. Because the text comes from the README, the README
cannot drift from what works.

What the test substitutes, and nothing else:
- `cargo run -- ` → `<repo>/target/debug/credgate ` and
  `cargo run --example mcp_server -- ` → `<repo>/target/debug/examples/mcp_server `:
  the binaries `cargo build --all-targets` (and `cargo test`) already built, so the test
  does not rebuild inside the copy;
- the fixed ports of config/dev.toml (8080, 9090, 3000) → free ports, in the commands'
  text and, for the config file, through environment overrides
  (`CREDGATE_PROXY__LISTEN`, `CREDGATE_PROXY__PUBLIC_URL`, `CREDGATE_OPS__LISTEN`,
  `CREDGATE_ROUTES__0__UPSTREAM`), so that the test does not collide with anything else
  listening on this machine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from support import REPO, free_port

CREDGATE = REPO / "target" / "debug" / "credgate"
MCP_SERVER = REPO / "target" / "debug" / "examples" / "mcp_server"
UPSTREAM_TOKEN = "gho_example_upstream_token"


def walkthrough_commands(readme: str) -> list[str]:
    section = readme.split("\n## Walkthrough\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


def fresh_copy(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "README.md", "config", "examples"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert "config/dev.toml" in files, files
    for f in files:
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, dest / f)


def test_readme_walkthrough_runs_verbatim(tmp_path: Path) -> None:
    assert CREDGATE.exists(), f"{CREDGATE} missing: run `cargo build`"
    assert MCP_SERVER.exists(), f"{MCP_SERVER} missing: run `cargo build --all-targets` (or cargo test)"
    blocks = walkthrough_commands((REPO / "README.md").read_text())
    assert len(blocks) >= 4, blocks
    script = "\n".join(blocks)
    assert "cargo run -- serve --config config/dev.toml" in script
    assert "cargo run --example mcp_server -- --port 3000" in script

    proxy, ops, mcp = free_port(), free_port(), free_port()
    script = (
        script.replace("cargo run --example mcp_server -- ", f"{MCP_SERVER} ")
        .replace("cargo run -- ", f"{CREDGATE} ")
        .replace("127.0.0.1:8080", f"127.0.0.1:{proxy}")
        .replace("127.0.0.1:9090", f"127.0.0.1:{ops}")
        .replace("127.0.0.1:3000", f"127.0.0.1:{mcp}")
        .replace("--port 3000", f"--port {mcp}")
    )
    clone = tmp_path / "credgate"
    fresh_copy(clone)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CREDGATE_", "RUST_LOG"))}
    env.update(
        CREDGATE_PROXY__LISTEN=f"127.0.0.1:{proxy}",
        CREDGATE_PROXY__PUBLIC_URL=f"http://127.0.0.1:{proxy}",
        CREDGATE_OPS__LISTEN=f"127.0.0.1:{ops}",
        CREDGATE_ROUTES__0__UPSTREAM=f"http://127.0.0.1:{mcp}",
    )
    proc = subprocess.Popen(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"walkthrough timed out:\n{out.decode()}\n{err.decode()[-3000:]}") from None
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything the script left running
        except ProcessLookupError:
            pass
    text, log = out.decode(), err.decode(errors="replace")
    assert proc.returncode == 0, f"walkthrough failed ({proc.returncode}):\n{text}\n{log[-4000:]}"
    # The last command's answer: the MCP server saw the tenant's credential, injected.
    assert f'"authorization":"Bearer {UPSTREAM_TOKEN}"' in text, f"{text}\n{log[-3000:]}"
    assert '"success":true' in text, text
    # The store was created in the copy (relative to the config file), not elsewhere.
    assert (clone / "data" / "credgate.store").exists(), list(clone.rglob("*"))
    # The request that reached the MCP server left an access log line.
    assert re.search(r"credgate::access.*status=200", log) or '"status":200' in log, log[-3000:]
