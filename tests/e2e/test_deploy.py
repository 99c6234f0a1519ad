"""The deployment files agree with the running binary.

- Every metric family that deploy/prometheus/alerts.yml and
  deploy/grafana/credgate-dashboard.json query (histogram `_bucket`/`_sum`/`_count`
  suffixes stripped) is exported on credgate's /metrics, and every label they match on
  is one that family carries. Labelled families appear only once a label set has been
  observed, so the test first drives one request of each kind (token issued and
  denied, proxied 200 and 401, credential stored and read, a refresh that fails).
- The compose and Kubernetes configs pass `credgate check-config`.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from support import CREDGATE_BIN, ECHO_INTEGRATIONS, REPO, Credgate, describe, free_port, http, route, unique

sys.path.insert(0, str(REPO / "deploy" / "tools"))
from deploy_checks import dashboard_exprs, family, metric_names, parse_promql, rule_exprs  # noqa: E402

ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "credgate-dashboard.json"

# Series the rules use that credgate does not export: Prometheus' own scrape health and
# kube-state-metrics' readiness verdict (credgate's /readyz as the kubelet sees it).
EXTERNAL = {"up", "kube_pod_container_status_ready"}
# Labels Prometheus attaches at scrape time (target labels), never in /metrics itself.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "container"}

DEAD_PROVIDER = "deadprov"


def _queries() -> list[tuple[str, str]]:
    out = [(f"{ALERTS.name}", e) for e in rule_exprs(ALERTS)]
    out += [(f"{DASHBOARD.name}", e) for e in dashboard_exprs(DASHBOARD)]
    assert out, "no queries found in the alert rules or the dashboard"
    return out


def _matched_labels(expr: str) -> set[tuple[str, str]]:
    """(metric name, label name) for every label matcher in `expr`."""
    import promql_parser

    pairs: set[tuple[str, str]] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            for m in node.matchers.matchers:
                pairs.add((node.name, m.name))

    promql_parser.walk(parse_promql(expr), visit)
    return pairs


def _exported(text: str) -> dict[str, set[str]]:
    """Family name → label names seen on its samples, from the text exposition."""
    families: dict[str, set[str]] = {}
    for line in text.splitlines():
        m = re.match(r"# TYPE (\S+) (\S+)", line)
        if m:
            families.setdefault(m.group(1), set())
            continue
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s", line)
        if m:
            labels = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(3) or ""))
            families.setdefault(family(m.group(1)), set()).update(labels - {"le"})
    return families


def _drive_traffic(gate: Credgate) -> None:
    t = unique("deploy")
    client = gate.create_client(tenant=t, integrations=[*ECHO_INTEGRATIONS, DEAD_PROVIDER])
    token = gate.token(client)  # tokens_issued_total{result="issued"}
    bad = gate.token_request(None, client_id=client.client_id, client_secret="wrong", method="none")
    assert bad.status_code in (400, 401), describe(bad)  # auth failures / denied
    gate.put_bearer(t, "echo", f"c-{unique('x')}")  # store write
    for _ in range(2):  # cache miss, then hit; upstream latency
        r = gate.proxy("GET", f"/echo/{unique('m')}", token)
        assert r.status_code == 200, describe(r)
    r = gate.proxy("GET", "/echo/none")  # 401: auth_failures_total{reason}
    assert r.status_code == 401, describe(r)
    # A refresh against a token endpoint that refuses connections: refresh result=error.
    gate.put_credential(
        t,
        DEAD_PROVIDER,
        {"access_token": f"a-{unique('x')}", "refresh_token": f"r-{unique('x')}", "token_type": "Bearer", "expires_in": 3600},
    )
    r = gate.admin("POST", f"/api/admin/credentials/{t}/{DEAD_PROVIDER}/refresh")
    assert r.status_code >= 400, f"refresh against a closed port succeeded: {describe(r)}"


def test_alert_and_dashboard_metrics_exist(tmp_path: Path, echo) -> None:  # noqa: ANN001 - fixture
    routes = [
        route("echo", "/echo", echo.url),
        route(DEAD_PROVIDER, "/dead", echo.url),
    ]
    dead_url = f"http://127.0.0.1:{free_port()}/token"  # nothing listens there
    gate = Credgate(
        tmp_path / "gate",
        routes,
        {f"integrations.{DEAD_PROVIDER}": {"token_url": dead_url, "client_id": "deploy-test"}},
        {f"{DEAD_PROVIDER.upper()}_CLIENT_SECRET": "deploy-test-secret"},
    )
    gate.start()
    try:
        _drive_traffic(gate)
        with http() as c:
            m = c.get(f"{gate.ops_url}/metrics")
        assert m.status_code == 200, describe(m)
    finally:
        gate.stop()
    exported = _exported(m.text)

    used: dict[str, set[str]] = {}
    missing_labels: list[str] = []
    for source, expr in _queries():
        for name in metric_names(expr):
            used.setdefault(family(name), set()).add(source)
        for name, label in _matched_labels(expr):
            fam = family(name)
            if fam in exported and label not in TARGET_LABELS and label not in exported[fam]:
                missing_labels.append(f"{source}: {fam} has no label {label!r} (has {sorted(exported[fam])})")

    unknown = sorted(f for f in used if not f.startswith("credgate_") and f not in EXTERNAL)
    assert not unknown, f"queries use series that are neither credgate's nor known external ones: {unknown}"
    missing = sorted(f for f in used if f.startswith("credgate_") and f not in exported)
    assert not missing, (
        "families queried by the alerts/dashboard but absent from /metrics after driving traffic "
        f"(never observed label sets do not render; pre-register them in src/metrics.rs): "
        + ", ".join(f"{f} (in {', '.join(sorted(used[f]))})" for f in missing)
        + f"\nexported: {sorted(exported)}"
    )
    assert not missing_labels, "\n".join(missing_labels)
    # Every credgate family is on the dashboard or in an alert.
    unused = sorted(f for f in exported if f.startswith("credgate_") and f not in used)
    assert not unused, f"credgate families neither alerted on nor graphed: {unused}"


def _check_config(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    r = subprocess.run(
        [str(CREDGATE_BIN), "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, f"check-config {name}: {r.stderr or r.stdout}"


def test_deploy_configs_pass_check_config(tmp_path: Path) -> None:
    _check_config(tmp_path, "compose.toml", (REPO / "deploy" / "compose" / "credgate.toml").read_text())
    cm = yaml.safe_load((REPO / "k8s" / "configmap.yaml").read_text())
    _check_config(tmp_path, "k8s.toml", cm["data"]["credgate.toml"])
    # The image's default config (Dockerfile: config/credgate.toml) with the image's env.
    r = subprocess.run(
        [str(CREDGATE_BIN), "check-config", "--config", str(REPO / "config" / "credgate.toml")],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "CREDGATE_PROXY__LISTEN": "0.0.0.0:8080", "CREDGATE_OPS__LISTEN": "0.0.0.0:9090"},
    )
    assert r.returncode == 0, r.stderr
    assert "0.0.0.0:8080" in r.stdout and "0.0.0.0:9090" in r.stdout, r.stdout


def test_optional_scale_pieces_pass_check_config(tmp_path: Path) -> None:
    """The k8s scale component (k8s/components/scale) and the compose file's optional
    variables configure credgate as docs/scaling.md says: shared limits, OTLP endpoint."""
    patch = yaml.safe_load((REPO / "k8s" / "components" / "scale" / "credgate-env.yaml").read_text())
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    cm = yaml.safe_load((REPO / "k8s" / "configmap.yaml").read_text())
    path = tmp_path / "k8s-scale.toml"
    path.write_text(cm["data"]["credgate.toml"])
    r = subprocess.run([str(CREDGATE_BIN), "check-config", "--config", str(path)], capture_output=True, text=True,
                       timeout=30, env={"PATH": "/usr/bin:/bin", **env})
    assert r.returncode == 0, r.stderr
    assert 'backend = "redis"' in r.stdout and f'url = "{env["REDIS_URL"]}"' in r.stdout, r.stdout
    assert f'otlp_endpoint = "{env["OTEL_EXPORTER_OTLP_ENDPOINT"]}"' in r.stdout, r.stdout
    # compose: with the optional variables unset, the service gets an empty endpoint and the
    # local backend: both stay off.
    compose = (REPO / "deploy" / "compose" / "credgate.toml")
    r = subprocess.run([str(CREDGATE_BIN), "check-config", "--config", str(compose)], capture_output=True, text=True,
                       timeout=30, env={"PATH": "/usr/bin:/bin", "CREDGATE_RATE_LIMIT__BACKEND": "local",
                                        "REDIS_URL": "redis://valkey:6379", "OTEL_EXPORTER_OTLP_ENDPOINT": ""})
    assert r.returncode == 0, r.stderr
    assert 'backend = "local"' in r.stdout and "otlp_endpoint" not in r.stdout, r.stdout
