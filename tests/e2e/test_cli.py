"""The `credgate` binary's subcommands besides `serve`."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from support import CREDGATE_BIN, free_port, render_config, route


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert CREDGATE_BIN.exists(), f"no binary at {CREDGATE_BIN}"
    return subprocess.run(
        [str(CREDGATE_BIN), *args],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("CREDGATE_")}, **(env or {})},
    )


def _config(tmp_path: Path, **extra_proxy: object) -> dict:
    p = free_port()
    return {
        "proxy": {"listen": f"127.0.0.1:{p}", "public_url": f"http://127.0.0.1:{p}", **extra_proxy},
        "ops": {"listen": f"127.0.0.1:{free_port()}"},
        "store": {"backend": "embedded", "path": str(tmp_path / "s.store")},
        "audit": {"path": str(tmp_path / "audit.log")},
    }


def _write(tmp_path: Path, sections: dict, routes: list[dict]) -> Path:
    f = tmp_path / "c.toml"
    f.write_text(render_config(sections, routes))
    return f


def test_version() -> None:
    r = _run("version")
    assert r.returncode == 0, r
    assert re.search(r"\b\d+\.\d+\.\d+\b", r.stdout), r.stdout


def test_check_config_good(tmp_path: Path) -> None:
    secret = "check-config-admin-token-do-not-print"
    f = _write(tmp_path, _config(tmp_path), [route("github", "/github", "http://127.0.0.1:3000")])
    r = _run("check-config", "--config", str(f), env={"CREDGATE_ADMIN_TOKEN": secret})
    assert r.returncode == 0, f"stdout={r.stdout!r} stderr={r.stderr!r}"
    out = r.stdout + r.stderr
    assert "/github" in out, f"effective config not printed: {out!r}"
    assert secret not in out, "check-config printed the admin token"


def test_check_config_env_override_is_effective(tmp_path: Path) -> None:
    f = _write(tmp_path, _config(tmp_path), [route("github", "/github", "http://127.0.0.1:3000")])
    r = _run("check-config", "--config", str(f), env={"CREDGATE_PROXY__MAX_BODY_BYTES": "23456789"})
    assert r.returncode == 0, r
    assert "23456789" in r.stdout + r.stderr


@pytest.mark.parametrize(
    "where,key",
    [("proxy", "listne"), ("store", "bogus_key"), ("route", "strip_prefixx"), ("top", "unknown_section")],
)
def test_check_config_unknown_key(tmp_path: Path, where: str, key: str) -> None:
    sections = _config(tmp_path)
    r0 = route("github", "/github", "http://127.0.0.1:3000")
    if where == "route":
        r0[key] = True
    elif where == "top":
        sections[key] = {"x": 1}
    else:
        sections[where][key] = "x"
    f = _write(tmp_path, sections, [r0])
    r = _run("check-config", "--config", str(f))
    assert r.returncode == 1, f"rc={r.returncode} stdout={r.stdout!r} stderr={r.stderr!r}"
    assert key in r.stdout + r.stderr, f"message does not name {key!r}: {r.stderr!r}"


@pytest.mark.parametrize("integration", ["GitHub", "a.b", "_x"])
def test_check_config_bad_identifier(tmp_path: Path, integration: str) -> None:
    f = _write(tmp_path, _config(tmp_path), [route(integration, "/github", "http://127.0.0.1:3000")])
    r = _run("check-config", "--config", str(f))
    assert r.returncode == 1, f"rc={r.returncode} stdout={r.stdout!r} stderr={r.stderr!r}"


def test_check_config_missing_file(tmp_path: Path) -> None:
    r = _run("check-config", "--config", str(tmp_path / "absent.toml"))
    assert r.returncode == 1, r
    assert (r.stdout + r.stderr).strip()
