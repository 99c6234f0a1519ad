"""Static checks for the deployment files that no off-the-shelf tool covers here.

    python deploy/tools/deploy_checks.py rules deploy/prometheus/alerts.yml
    python deploy/tools/deploy_checks.py dashboard deploy/grafana/credgate-dashboard.json
    python deploy/tools/deploy_checks.py podmonitor k8s/podmonitor.yaml k8s/deployment.yaml

- rules: the Prometheus rule-file structure (groups → rules with alert/record, expr,
  for, labels, annotations; unique group and alert names; durations; no unknown keys),
  and every expr parsed by a real PromQL parser (promql-parser, the Python binding of
  the Rust `promql-parser` crate). This is the fallback when `promtool check rules`
  is not available; promtool is stricter and is preferred.
- dashboard: JSON validity, Grafana dashboard essentials (uid, title, unique panel
  ids, a datasource per target) and every target expression parsed as PromQL after
  substituting Grafana's variables.
- podmonitor: the PodMonitor (a CRD: no schema in kubernetes-validate) has the
  required fields, selects the Deployment's pod labels, and names a declared port.

`metric_names(expr)` is also used by tests/e2e/test_deploy.py.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser
import yaml

DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
RULE_KEYS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
GROUP_KEYS = {"name", "interval", "rules", "limit", "query_offset", "labels"}
SERIES_SUFFIXES = ("_bucket", "_sum", "_count")
# Grafana's built-in and dashboard variables, replaced before parsing.
GRAFANA_VARS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${__range}": "1h",
}


def parse_promql(expr: str) -> Any:
    try:
        return promql_parser.parse(expr)
    except ValueError as e:
        raise ValueError(f"PromQL does not parse: {e}\n  {expr}") from e


def metric_names(expr: str) -> set[str]:
    """Names of every vector selector in `expr`, as written (suffixes kept)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(parse_promql(expr), visit)
    return names


def family(name: str) -> str:
    """The metric family of a series name: histogram suffixes stripped."""
    for suffix in SERIES_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    # Template variables inside label matchers ($namespace, ${namespace}).
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def rule_exprs(path: Path) -> Iterator[str]:
    doc = yaml.safe_load(path.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


def dashboard_exprs(path: Path) -> Iterator[str]:
    doc = json.loads(path.read_text())

    def panels(ps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(doc.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                yield grafana_to_promql(t["expr"])


def check_rules(path: Path) -> list[str]:
    errors: list[str] = []
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or set(doc) != {"groups"} or not isinstance(doc["groups"], list):
        return [f"{path}: top level must be exactly {{groups: [...]}}"]
    group_names: set[str] = set()
    alert_names: set[str] = set()
    count = 0
    for gi, group in enumerate(doc["groups"]):
        where = f"{path}: groups[{gi}]"
        if not isinstance(group, dict):
            errors.append(f"{where}: not a mapping")
            continue
        if unknown := set(group) - GROUP_KEYS:
            errors.append(f"{where}: unknown keys {sorted(unknown)}")
        name = group.get("name")
        if not isinstance(name, str) or not name:
            errors.append(f"{where}: missing name")
        elif name in group_names:
            errors.append(f"{where}: duplicate group name {name!r}")
        group_names.add(str(name))
        if "interval" in group and not DURATION.match(str(group["interval"])):
            errors.append(f"{where}: bad interval {group['interval']!r}")
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            errors.append(f"{where}: rules must be a non-empty list")
            continue
        for ri, rule in enumerate(rules):
            at = f"{where}.rules[{ri}]"
            count += 1
            if not isinstance(rule, dict):
                errors.append(f"{at}: not a mapping")
                continue
            if unknown := set(rule) - RULE_KEYS:
                errors.append(f"{at}: unknown keys {sorted(unknown)}")
            if ("alert" in rule) == ("record" in rule):
                errors.append(f"{at}: exactly one of alert/record")
            if "record" in rule and ({"for", "annotations", "keep_firing_for"} & set(rule)):
                errors.append(f"{at}: a recording rule has no for/annotations")
            alert = rule.get("alert")
            if alert is not None:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(alert)):
                    errors.append(f"{at}: bad alert name {alert!r}")
                if alert in alert_names:
                    errors.append(f"{at}: duplicate alert {alert!r}")
                alert_names.add(str(alert))
                sev = (rule.get("labels") or {}).get("severity")
                if sev not in ("critical", "warning", "info"):
                    errors.append(f"{at}: labels.severity must be critical, warning or info")
                if not (rule.get("annotations") or {}).get("summary"):
                    errors.append(f"{at}: annotations.summary missing")
            for key in ("for", "keep_firing_for"):
                if key in rule and not DURATION.match(str(rule[key])):
                    errors.append(f"{at}: bad {key} {rule[key]!r}")
            for key in ("labels", "annotations"):
                value = rule.get(key, {})
                if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                    errors.append(f"{at}: {key} must map names to strings")
            expr = rule.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                errors.append(f"{at}: expr missing")
                continue
            try:
                parse_promql(expr)
            except ValueError as e:
                errors.append(f"{at} ({alert}): {e}")
    if not count:
        errors.append(f"{path}: no rules")
    return errors


def check_dashboard(path: Path) -> list[str]:
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        return [f"{path}: invalid JSON: {e}"]
    errors: list[str] = []
    for key in ("uid", "title", "panels", "schemaVersion"):
        if key not in doc:
            errors.append(f"{path}: missing {key}")
    ids = [p.get("id") for p in doc.get("panels", [])]
    if len(ids) != len(set(ids)) or None in ids:
        errors.append(f"{path}: panel ids must be present and unique")
    for p in doc.get("panels", []):
        for t in p.get("targets", []):
            if "expr" not in t:
                errors.append(f"{path}: panel {p.get('title')!r}: a target without expr")
                continue
            if not (t.get("datasource") or p.get("datasource")):
                errors.append(f"{path}: panel {p.get('title')!r}: no datasource")
            try:
                parse_promql(grafana_to_promql(t["expr"]))
            except ValueError as e:
                errors.append(f"{path}: panel {p.get('title')!r}: {e}")
    if not list(dashboard_exprs(path)):
        errors.append(f"{path}: no queries")
    return errors


def check_podmonitor(path: Path, deployment: Path) -> list[str]:
    pm = yaml.safe_load(path.read_text())
    dep = yaml.safe_load(deployment.read_text())
    errors: list[str] = []
    if pm.get("apiVersion") != "monitoring.coreos.com/v1" or pm.get("kind") != "PodMonitor":
        return [f"{path}: not a monitoring.coreos.com/v1 PodMonitor"]
    if not (pm.get("metadata") or {}).get("name"):
        errors.append(f"{path}: metadata.name missing")
    spec = pm.get("spec") or {}
    if unknown := set(spec) - {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel", "podTargetLabels"}:
        errors.append(f"{path}: unexpected spec keys {sorted(unknown)}")
    wanted = (spec.get("selector") or {}).get("matchLabels") or {}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    if not wanted or any(labels.get(k) != v for k, v in wanted.items()):
        errors.append(f"{path}: selector {wanted} does not match the pod labels {labels}")
    ports = {p["name"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    endpoints = spec.get("podMetricsEndpoints") or []
    if not endpoints:
        errors.append(f"{path}: no podMetricsEndpoints")
    for ep in endpoints:
        if unknown := set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings"}:
            errors.append(f"{path}: unexpected endpoint keys {sorted(unknown)}")
        if ep.get("port") not in ports:
            errors.append(f"{path}: endpoint port {ep.get('port')!r} is not a declared container port {sorted(ports)}")
        for key in ("interval", "scrapeTimeout"):
            if key in ep and not DURATION.match(str(ep[key])):
                errors.append(f"{path}: bad {key} {ep[key]!r}")
    return errors


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    what, *paths = argv[1:]
    if what == "rules":
        errors = [e for p in paths for e in check_rules(Path(p))]
    elif what == "dashboard":
        errors = [e for p in paths for e in check_dashboard(Path(p))]
    elif what == "podmonitor" and len(paths) == 2:
        errors = check_podmonitor(Path(paths[0]), Path(paths[1]))
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    if not errors:
        print(f"{what}: {' '.join(paths)} OK")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
