#!/usr/bin/env bash
# Prepares an initialised, unsealed Vault or OpenBao for credgate (docs/storage.md).
# Idempotent: safe to run again after an upgrade or a partial failure.
#
#   - KV v2 at $VAULT_KV_ENGINE (default secret), Transit at
#     $VAULT_TRANSIT_ENGINE (default transit), enabled if missing;
#   - the AppRole and Kubernetes auth methods, enabled if missing;
#   - the credgate policy (vault/policies/credgate.hcl, mounts substituted);
#   - an AppRole role and a Kubernetes role bound to the credgate service
#     account, both issuing tokens with only that policy.
#
# Needs the `bao` or `vault` CLI, an address (BAO_ADDR or VAULT_ADDR) and an
# admin token (BAO_TOKEN or VAULT_TOKEN). Optional settings, with defaults:
#   CREDGATE_POLICY=credgate            CREDGATE_ROLE=credgate
#   APPROLE_MOUNT=approle               KUBERNETES_MOUNT=kubernetes
#   CREDGATE_K8S_NAMESPACE=credgate     CREDGATE_K8S_SERVICE_ACCOUNT=credgate
#   CREDGATE_K8S_AUDIENCE=              (bind the role to a JWT audience)
#   KUBERNETES_HOST=                    (API server for TokenReview; default
#                                        from KUBERNETES_SERVICE_HOST in a pod)
#   KUBERNETES_CA_CERT=                 (PEM file of the API server's CA)
#   KUBERNETES_REVIEWER_JWT_FILE=       (JWT allowed to call TokenReview)
#   KUBERNETES_DISABLE_LOCAL_CA_JWT=false  (true when Vault runs outside the
#                                        cluster: no pod CA or JWT to read)
#   TOKEN_TTL=1h  TOKEN_MAX_TTL=24h     SECRET_ID_TTL=0 (never expires)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
policy_file="${POLICY_FILE:-$here/../policies/credgate.hcl}"

kv="${VAULT_KV_ENGINE:-secret}"
transit="${VAULT_TRANSIT_ENGINE:-transit}"
policy="${CREDGATE_POLICY:-credgate}"
role="${CREDGATE_ROLE:-credgate}"
approle_mount="${APPROLE_MOUNT:-approle}"
k8s_mount="${KUBERNETES_MOUNT:-kubernetes}"
k8s_namespace="${CREDGATE_K8S_NAMESPACE:-credgate}"
k8s_service_account="${CREDGATE_K8S_SERVICE_ACCOUNT:-credgate}"
k8s_audience="${CREDGATE_K8S_AUDIENCE:-}"
token_ttl="${TOKEN_TTL:-1h}"
token_max_ttl="${TOKEN_MAX_TTL:-24h}"
secret_id_ttl="${SECRET_ID_TTL:-0}"

log() { printf 'init-vault: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

if command -v bao >/dev/null 2>&1; then
  cli=bao
  # bao reads BAO_*; fall back to the VAULT_* names.
  export BAO_ADDR="${BAO_ADDR:-${VAULT_ADDR:-}}"
  export BAO_TOKEN="${BAO_TOKEN:-${VAULT_TOKEN:-}}"
  [[ -n "$BAO_ADDR" ]] || die "set BAO_ADDR or VAULT_ADDR"
elif command -v vault >/dev/null 2>&1; then
  cli=vault
  export VAULT_ADDR="${VAULT_ADDR:-${BAO_ADDR:-}}"
  export VAULT_TOKEN="${VAULT_TOKEN:-${BAO_TOKEN:-}}"
  [[ -n "$VAULT_ADDR" ]] || die "set VAULT_ADDR or BAO_ADDR"
else
  die "neither bao nor vault is on PATH"
fi
[[ -r "$policy_file" ]] || die "cannot read the policy $policy_file"

v() { "$cli" "$@"; }

"$cli" token lookup >/dev/null || die "the token is not valid at this address"

# --- secrets engines -------------------------------------------------------

if v read "sys/mounts/$kv" >/dev/null 2>&1; then
  type="$(v read -field=type "sys/mounts/$kv")"
  options="$(v read -field=options "sys/mounts/$kv" 2>/dev/null || true)"
  if [[ "$type" != kv || "$options" != *"version:2"* ]]; then
    die "$kv/ is mounted as '$type' ($options), not KV version 2; choose another VAULT_KV_ENGINE"
  fi
  log "KV v2 already at $kv/"
else
  v secrets enable -path="$kv" -version=2 kv >/dev/null
  log "enabled KV v2 at $kv/"
fi

if v read "sys/mounts/$transit" >/dev/null 2>&1; then
  type="$(v read -field=type "sys/mounts/$transit")"
  [[ "$type" == transit ]] || die "$transit/ is mounted as '$type', not transit"
  log "transit already at $transit/"
else
  v secrets enable -path="$transit" transit >/dev/null
  log "enabled transit at $transit/"
fi

# --- auth methods ------------------------------------------------------------

enable_auth() {
  local method="$1" path="$2"
  if v read "sys/auth/$path" >/dev/null 2>&1; then
    log "$method auth already at auth/$path/"
  else
    v auth enable -path="$path" "$method" >/dev/null
    log "enabled $method auth at auth/$path/"
  fi
}
enable_auth approle "$approle_mount"
enable_auth kubernetes "$k8s_mount"

# --- policy ------------------------------------------------------------------

sed -e "s#^path \"secret/#path \"$kv/#" -e "s#^path \"transit/#path \"$transit/#" \
  "$policy_file" | v policy write "$policy" - >/dev/null
log "wrote policy $policy"

# --- roles -------------------------------------------------------------------

token_settings=(
  "token_policies=$policy"
  "token_no_default_policy=true"
  "token_type=service"
  "token_ttl=$token_ttl"
  "token_max_ttl=$token_max_ttl"
)

v write "auth/$approle_mount/role/$role" "${token_settings[@]}" \
  "secret_id_ttl=$secret_id_ttl" secret_id_num_uses=0 bind_secret_id=true >/dev/null
log "wrote approle role $role"

k8s_host="${KUBERNETES_HOST:-}"
if [[ -z "$k8s_host" && -n "${KUBERNETES_SERVICE_HOST:-}" ]]; then
  k8s_host="https://$KUBERNETES_SERVICE_HOST:${KUBERNETES_SERVICE_PORT:-443}"
fi
if [[ -n "$k8s_host" ]]; then
  k8s_config=(
    "kubernetes_host=$k8s_host"
    "disable_local_ca_jwt=${KUBERNETES_DISABLE_LOCAL_CA_JWT:-false}"
  )
  if [[ -n "${KUBERNETES_CA_CERT:-}" ]]; then
    k8s_config+=("kubernetes_ca_cert=@$KUBERNETES_CA_CERT")
  fi
  if [[ -n "${KUBERNETES_REVIEWER_JWT_FILE:-}" ]]; then
    k8s_config+=("token_reviewer_jwt=@$KUBERNETES_REVIEWER_JWT_FILE")
  fi
  v write "auth/$k8s_mount/config" "${k8s_config[@]}" >/dev/null
  log "configured kubernetes auth for $k8s_host"
elif ! v read "auth/$k8s_mount/config" >/dev/null 2>&1; then
  log "warning: kubernetes auth has no config yet; set KUBERNETES_HOST and run again"
fi

k8s_role=(
  "bound_service_account_names=$k8s_service_account"
  "bound_service_account_namespaces=$k8s_namespace"
)
if [[ -n "$k8s_audience" ]]; then
  k8s_role+=("audience=$k8s_audience")
fi
v write "auth/$k8s_mount/role/$role" "${k8s_role[@]}" "${token_settings[@]}" >/dev/null
log "wrote kubernetes role $role ($k8s_namespace/$k8s_service_account)"

role_id="$(v read -field=role_id "auth/$approle_mount/role/$role/role-id")"
cat <<EOF
credgate's Vault setup is in place.
  AppRole role_id: $role_id
  New secret_id:   $cli write -f -field=secret_id auth/$approle_mount/role/$role/secret-id
  Kubernetes:      role "$role" for service account $k8s_namespace/$k8s_service_account
EOF
