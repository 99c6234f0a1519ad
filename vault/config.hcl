# OpenBao / HashiCorp Vault server for credgate's store (docs/storage.md), production
# style: integrated (raft) storage, TLS only, Prometheus telemetry.
#
# One node is shown; for HA run three or five and add `retry_join` blocks to
# the storage stanza. Initialise once (`bao operator init`), unseal (or
# configure auto-unseal with a `seal` stanza), then run
# vault/scripts/init-vault.sh to create the mounts, policy and roles.

ui            = false
cluster_name  = "credgate"
log_level     = "info"
log_format    = "json"

# Raft keeps its data in memory-mapped files; mlock would pin all of it.
disable_mlock = true

# How clients and peers reach this node (must match the TLS certificate).
api_addr     = "https://vault.credgate.svc:8200"
cluster_addr = "https://vault.credgate.svc:8201"

# credgate bounds each request itself (VAULT_TIMEOUT); keep the server's cap
# close so a stuck request frees its resources.
default_max_request_duration = "30s"

storage "raft" {
  path    = "/vault/data"
  node_id = "vault-0"
}

listener "tcp" {
  address         = "0.0.0.0:8200"
  cluster_address = "0.0.0.0:8201"

  tls_cert_file   = "/vault/tls/tls.crt"
  tls_key_file    = "/vault/tls/tls.key"
  tls_min_version = "tls12"

  # /v1/sys/metrics needs a token with read on sys/metrics.
  telemetry {
    unauthenticated_metrics_access = false
  }
}

telemetry {
  prometheus_retention_time = "60s"
  disable_hostname          = true
}
