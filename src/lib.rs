//! credgate: a credential-injecting sidecar proxy for MCP servers.
//!
//! Agents authenticate to credgate with its own short-lived JWTs; credgate
//! looks up the tenant's upstream credential, injects it, and forwards the
//! request, streaming both ways. Module map:
//!
//! - [`config`]: the TOML configuration, env overrides, validation.
//! - [`error`]: the errors callers see and their one mapping to HTTP.
//! - [`http`]: the body type, the connection a request came on, request and
//!   response helpers (below both `server` and `proxy`).
//! - [`ids`]: tenant and integration identifier rules.
//! - [`store`]: versioned records with check-and-set and per-tenant encryption
//!   (`embedded` file backend; Vault).
//! - [`metrics`]: Prometheus families.
//! - [`audit`]: the secret-free audit log.
//! - [`secrets`]: the admin token and OAuth client secrets, read once from the environment.
//! - [`server`]: listeners, HTTP/1.1 + h2c, graceful shutdown; dispatch.
//! - [`shutdown`]: the one handle that stops every background task.
//! - [`conn_limits`]: how long a connection may sit without a request.
//! - [`client_addr`]: the caller's address (`trusted_proxies`,
//!   `X-Forwarded-For`), the same for every endpoint.
//! - [`proxy`]: the proxied request path, top to bottom.
//! - [`routes`]: the route table.
//! - [`mcp`]: MCP-aware policy: allowed tools, tool scopes, CEL rules, tools/list filtering.
//! - [`ratelimit`]: per-tenant and per-client token buckets.
//! - [`refresh`]: upstream credential refresh: provider calls, single-flight, leases.
//! - [`reload`]: what a SIGHUP reload applies, and which changed keys need a restart.
//! - [`upstream`]: the upstream client, its connection pool, the request
//!   rewrite and header hygiene.
//! - [`credentials`]: upstream credential records and their cache.
//! - [`oauth`]: credgate as authorization server for its clients.
//! - [`admin`]: the admin API.
//! - [`connect`]: connect links, the authorization-code flow, the settings page.
//! - [`tls`]: rustls server (reloading certificates) and client configs.
//! - [`ops`]: `/metrics`, `/healthz`, `/readyz`.
//! - [`telemetry`]: OpenTelemetry traces over OTLP/HTTP.
//! - [`state`]: `AppState`, built once and passed explicitly.

pub mod admin;
pub mod audit;
pub mod client_addr;
pub mod config;
pub mod conn_limits;
pub mod connect;
pub mod credentials;
pub mod error;
pub mod http;
pub mod ids;
pub mod mcp;
pub mod metrics;
pub mod oauth;
pub mod ops;
pub mod proxy;
pub mod ratelimit;
pub mod refresh;
pub mod reload;
pub mod routes;
pub mod secrets;
pub mod server;
pub mod shutdown;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod upstream;
