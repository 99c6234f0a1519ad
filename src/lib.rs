//! credgate: a credential-injecting sidecar proxy for MCP servers.
//!
//! Agents authenticate to credgate with its own short-lived JWTs; credgate
//! looks up the tenant's upstream credential, injects it, and forwards the
//! request, streaming both ways. Module map:
//!
//! - [`config`]: the TOML configuration, env overrides, validation.
//! - [`error`]: the errors callers see and their one mapping to HTTP.
//! - [`http`]: the body type and response helpers.
//! - [`ids`]: tenant and integration identifier rules.
//! - [`store`]: versioned records with check-and-set and per-tenant encryption
//!   (`embedded` file backend; Vault).
//! - [`metrics`]: Prometheus families.
//! - [`audit`]: the secret-free audit log.
//! - [`server`]: listeners, HTTP/1.1 + h2c, graceful shutdown; dispatch.
//! - [`proxy`]: the proxied request path, top to bottom.
//! - [`routes`]: the route table.
//! - [`ratelimit`]: per-tenant and per-client token buckets.
//! - [`refresh`]: upstream credential refresh: provider calls, single-flight, leases.
//! - [`reload`]: what a SIGHUP reload applies, and which changed keys need a restart.
//! - [`upstream`]: the upstream client and header hygiene.
//! - [`credentials`]: upstream credential records and their cache.
//! - [`oauth`]: credgate as authorization server for its clients.
//! - [`admin`]: the admin API.
//! - [`tls`]: rustls server (reloading certificates) and client configs.
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`state`]: `AppState`, built once and passed explicitly.

pub mod admin;
pub mod audit;
pub mod config;
pub mod credentials;
pub mod error;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod oauth;
pub mod ops;
pub mod proxy;
pub mod ratelimit;
pub mod refresh;
pub mod reload;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod tls;
pub mod upstream;
