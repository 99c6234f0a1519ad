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
//! - [`oauth`]: credgate as authorization server for its clients.

pub mod config;
pub mod error;
pub mod http;
pub mod ids;
pub mod store;
pub mod audit;
pub mod metrics;
pub mod oauth;
