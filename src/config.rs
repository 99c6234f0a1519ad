//! Configuration: serde structs (unknown keys are errors), named defaults,
//! `CREDGATE_<SECTION>__<KEY>` and `VAULT_*` overrides, then `validate()`.
//!
//! Secrets never live in the file: the admin token, the master key and the
//! integrations' OAuth app secrets come from the environment only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::ids;

mod env;
pub use env::{KNOWN_ENV_VARS, unmatched_env_vars};

pub const DEFAULT_PROXY_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_OPS_LISTEN: &str = "127.0.0.1:9090";
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024;
pub const DEFAULT_MAX_REPLAY_BODY_BYTES: u64 = 1024 * 1024;
pub const DEFAULT_TOKEN_MINUTES: u64 = 60;
pub const MAX_TOKEN_MINUTES: u64 = 1440;
pub const MAX_STATIC_KEY_DAYS: u64 = 365;
pub const DEFAULT_SYNC_INTERVAL_SECONDS: u64 = 5;
pub const DEFAULT_STORE_PATH: &str = "data/credgate.store";
pub const DEFAULT_DRAIN_SECONDS: u64 = 30;
pub const DEFAULT_BODY_READ_TIMEOUT_SECONDS: u64 = 30;

/// Environment variables that hold secrets; read by name, never from the file.
pub const ENV_ADMIN_TOKEN: &str = "CREDGATE_ADMIN_TOKEN";
pub const ENV_MASTER_KEY: &str = "CREDGATE_MASTER_KEY";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(String),
    /// A `CREDGATE_<SECTION>__<KEY>` override is wrong (not the file).
    #[error("environment variable {0}")]
    Env(String),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub ops: OpsConfig,
    pub oauth: OAuthConfig,
    pub store: StoreConfig,
    pub refresh: RefreshConfig,
    pub rate_limit: RateLimitConfig,
    pub audit: AuditConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub shutdown: ShutdownConfig,
    pub tracing: crate::telemetry::TracingConfig,
    pub integrations: BTreeMap<String, IntegrationConfig>,
    pub routes: Vec<RouteConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub public_url: String,
    pub max_body_bytes: u64,
    pub max_replay_body_bytes: u64,
    /// Seconds to wait for the upstream's response headers (504 after).
    pub upstream_timeout_seconds: u64,
    /// Seconds to wait for a TCP (and TLS) connection to an upstream (502 after).
    pub upstream_connect_timeout_seconds: u64,
    /// A streamed body (either way) with no data for this long is cut.
    pub stream_idle_timeout_seconds: u64,
    /// A client gets this long to send its request headers.
    pub header_read_timeout_seconds: u64,
    /// A request body credgate buffers (`/oauth/*`, `/api/admin/*`, proxied
    /// bodies kept for replay) must arrive within this (408 after).
    pub body_read_timeout_seconds: u64,
    /// Largest request head accepted (HTTP/1.1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Connections served at once on this listener; more wait in the backlog.
    pub max_connections: usize,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed when checking a
    /// client's `allowedIps`; otherwise the peer address counts.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Extra CA certificates (PEM) trusted for upstreams and OAuth providers,
    /// besides the system roots.
    pub upstream_ca_file: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_PROXY_LISTEN.parse().expect("valid default"),
            public_url: format!("http://{DEFAULT_PROXY_LISTEN}"),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_replay_body_bytes: DEFAULT_MAX_REPLAY_BODY_BYTES,
            upstream_timeout_seconds: 60,
            upstream_connect_timeout_seconds: 10,
            stream_idle_timeout_seconds: 300,
            header_read_timeout_seconds: 30,
            body_read_timeout_seconds: DEFAULT_BODY_READ_TIMEOUT_SECONDS,
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            trusted_proxies: Vec::new(),
            upstream_ca_file: None,
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpsConfig {
    pub listen: SocketAddr,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_OPS_LISTEN.parse().expect("valid default"),
            tls_cert: None,
            tls_key: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlg {
    EdDSA,
    ES256,
    RS256,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OAuthConfig {
    /// Defaults to `proxy.public_url`.
    pub issuer: Option<String>,
    pub default_token_minutes: u64,
    pub max_token_minutes: u64,
    pub max_static_key_days: u64,
    pub signing_alg: SigningAlg,
    /// Failed client authentications allowed per client id per minute.
    pub max_failures_per_client: u32,
    /// Failed client authentications allowed per source address per minute.
    pub max_failures_per_address: u32,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            default_token_minutes: DEFAULT_TOKEN_MINUTES,
            max_token_minutes: MAX_TOKEN_MINUTES,
            max_static_key_days: MAX_STATIC_KEY_DAYS,
            signing_alg: SigningAlg::EdDSA,
            max_failures_per_client: 10,
            max_failures_per_address: 50,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Embedded,
    Vault,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub backend: StoreBackend,
    /// Embedded store file.
    pub path: PathBuf,
    /// Embedded store master key file, used when `CREDGATE_MASTER_KEY` is unset;
    /// created with mode 0600 on first start. Default: `<path>.key`.
    pub master_key_file: Option<PathBuf>,
    pub sync_interval_seconds: u64,
    pub vault: VaultConfig,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::Embedded,
            path: PathBuf::from(DEFAULT_STORE_PATH),
            master_key_file: None,
            sync_interval_seconds: DEFAULT_SYNC_INTERVAL_SECONDS,
            vault: VaultConfig::default(),
        }
    }
}

impl StoreConfig {
    pub fn master_key_path(&self) -> PathBuf {
        self.master_key_file.clone().unwrap_or_else(|| {
            let mut p = self.path.clone().into_os_string();
            p.push(".key");
            PathBuf::from(p)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VaultAuth {
    Token,
    Approle,
    Kubernetes,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    pub address: String,
    pub namespace: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub kv_mount: String,
    pub transit_mount: String,
    pub auth: VaultAuth,
    pub approle_mount: String,
    pub role_id_file: Option<PathBuf>,
    pub secret_id_file: Option<PathBuf>,
    pub kubernetes_mount: String,
    pub role: Option<String>,
    pub jwt_file: PathBuf,
    pub timeout_ms: u64,
    pub max_retries: u32,
}

impl Default for VaultConfig {
    fn default() -> Self {
        Self {
            address: "http://127.0.0.1:8200".into(),
            namespace: None,
            ca_cert: None,
            kv_mount: "secret".into(),
            transit_mount: "transit".into(),
            auth: VaultAuth::Token,
            approle_mount: "approle".into(),
            role_id_file: None,
            secret_id_file: None,
            kubernetes_mount: "kubernetes".into(),
            role: None,
            jwt_file: PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token"),
            timeout_ms: 5000,
            max_retries: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RefreshConfig {
    pub before_seconds: u64,
    pub interval_seconds: u64,
    pub concurrency: usize,
    /// Upstream 401s refresh a credential at most once per this many seconds.
    pub min_interval_seconds: u64,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            before_seconds: 300,
            interval_seconds: 30,
            concurrency: 8,
            min_interval_seconds: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 50,
            burst: 100,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub default: RateLimit,
    pub tenants: BTreeMap<String, RateLimit>,
    pub clients: BTreeMap<String, RateLimit>,
    /// Where the buckets live (docs/scaling.md).
    pub backend: RateLimitBackend,
    pub redis: crate::ratelimit::shared::RedisConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitBackend {
    /// Each replica limits alone.
    #[default]
    Local,
    /// Redis or Valkey, shared by every replica.
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// `-` is stdout, anything else a file appended to.
    pub path: String,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { path: "-".into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Pretty,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub tenant_label: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    pub drain_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_seconds: DEFAULT_DRAIN_SECONDS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    #[default]
    ClientSecretPost,
    ClientSecretBasic,
}

/// How credgate gets an integration's upstream token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum IntegrationGrant {
    /// Tenants' tokens are stored through the admin API and refreshed with
    /// their refresh tokens.
    #[default]
    RefreshToken,
    /// credgate obtains the token itself with the integration's own client
    /// credentials (one token for every tenant), renewing it before expiry.
    /// A credential stored for a tenant still takes precedence.
    ClientCredentials,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntegrationConfig {
    #[serde(default)]
    pub grant: IntegrationGrant,
    /// Scope requested with the client_credentials grant.
    pub scope: Option<String>,
    pub token_url: Option<String>,
    pub authorize_url: Option<String>,
    pub client_id: Option<String>,
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// Environment variable holding the OAuth app secret; default
    /// `<INTEGRATION>_CLIENT_SECRET`.
    pub client_secret_env: Option<String>,
    /// Shown to callers in `INTEGRATION_NOT_CONNECTED` errors when credgate
    /// cannot mint a connect link itself (no `authorize_url`).
    pub connect_url: Option<String>,
    /// Scopes requested when a tenant connects (docs/connect.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// RFC 7009 endpoint: a disconnect revokes the token there first.
    pub revocation_url: Option<String>,
    /// When set, the connect callback's `iss` must equal it (RFC 9207).
    pub issuer: Option<String>,
    /// Extra authorization request parameters (`access_type`, `prompt`, …).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub authorize_params: BTreeMap<String, String>,
}

impl IntegrationConfig {
    pub fn client_secret_env(&self, integration: &str) -> String {
        self.client_secret_env.clone().unwrap_or_else(|| {
            format!(
                "{}_CLIENT_SECRET",
                integration.to_ascii_uppercase().replace('-', "_")
            )
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InjectMode {
    Bearer,
    Basic,
}

/// How the upstream credential is presented: `"bearer"`, `"basic"` or
/// `{ header = "X-API-Key" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Inject {
    Mode(InjectMode),
    Header { header: String },
}

impl Default for Inject {
    fn default() -> Self {
        Inject::Mode(InjectMode::Bearer)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub integration: String,
    pub path_prefix: Option<String>,
    pub host: Option<String>,
    pub upstream: String,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default)]
    pub required_scopes: Vec<String>,
    #[serde(default)]
    pub inject: Inject,
    /// MCP tools that need more scopes: tool glob → scopes (docs/policy.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tool_scopes: BTreeMap<String, Vec<String>>,
    /// `[[routes.deny]]`: CEL rules refusing `tools/call`s (docs/policy.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<crate::mcp::DenyRuleConfig>,
}

impl RouteConfig {
    /// The route's resource URL (RFC 9728, and the audience of tokens requested
    /// for it): `public_url` + `path_prefix`, or `public_url` alone for `/` and
    /// for host routes.
    pub fn resource_url(&self, public_url: &str) -> String {
        match self.path_prefix.as_deref() {
            Some("/") | None => public_url.to_owned(),
            Some(p) => format!("{public_url}{p}"),
        }
    }

    /// The URL of the route's RFC 9728 document.
    pub fn resource_metadata_url(&self, public_url: &str) -> String {
        match self.path_prefix.as_deref() {
            Some("/") | None => format!("{public_url}/.well-known/oauth-protected-resource"),
            Some(p) => format!("{public_url}/.well-known/oauth-protected-resource{p}"),
        }
    }
}

impl Config {
    /// Reads the file, applies environment overrides, validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::from_toml_with_env(&text, std::env::vars())?;
        config.resolve_paths(path.parent().unwrap_or(Path::new("")));
        Ok(config)
    }

    /// Makes every relative file path absolute against `base` (the config file's
    /// folder), so that where credgate is started from does not matter: started from
    /// another folder it must not create a new empty store and master key.
    pub fn resolve_paths(&mut self, base: &Path) {
        let base = std::path::absolute(base).unwrap_or_else(|_| base.to_owned());
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.store.path);
        let optional = [
            &mut self.store.master_key_file,
            &mut self.store.vault.ca_cert,
            &mut self.store.vault.role_id_file,
            &mut self.store.vault.secret_id_file,
            &mut self.proxy.tls_cert,
            &mut self.proxy.tls_key,
            &mut self.proxy.upstream_ca_file,
            &mut self.ops.tls_cert,
            &mut self.ops.tls_key,
        ];
        for p in optional.into_iter().flatten() {
            fix(p);
        }
        if self.audit.path != "-" && Path::new(&self.audit.path).is_relative() {
            self.audit.path = base.join(&self.audit.path).display().to_string();
        }
    }

    /// Parses TOML, applies `CREDGATE_<SECTION>__<KEY>` and `VAULT_*` from `env`,
    /// and validates.
    pub fn from_toml_with_env(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table: toml::Table =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        // The file alone first, so that its own mistakes are reported as the file's
        // (with the line, from the text).
        if let Err(e) = deserialize(table.clone()) {
            return Err(match toml::from_str::<Config>(text) {
                Err(spanned) => {
                    let ConfigError::Parse(short) = e else {
                        return Err(e);
                    };
                    let route = short.split(':').next().filter(|p| p.starts_with("routes["));
                    let hint = short.find(" (a listen address").map_or("", |i| &short[i..]);
                    let spanned = spanned.to_string();
                    ConfigError::Parse(match route {
                        Some(r) => format!("{r}: {}{hint}", spanned.trim_end()),
                        None => format!("{}{hint}", spanned.trim_end()),
                    })
                }
                Ok(_) => e,
            });
        }
        let (mut overrides, mut vault_env) = (Vec::new(), Vec::new());
        let (mut redis_url, mut otlp_endpoint) = (None, None);
        for (key, value) in env {
            if key.starts_with("CREDGATE_") {
                overrides.push((key, value));
            } else if key.starts_with("VAULT_") {
                vault_env.push((key, value));
            } else if key == "REDIS_URL" {
                redis_url = Some(value);
            } else if key == "OTEL_EXPORTER_OTLP_ENDPOINT" {
                otlp_endpoint = Some(value);
            }
        }
        if !overrides.is_empty() {
            overrides.sort();
            let defaults = match toml::Value::try_from(Config::default()) {
                Ok(toml::Value::Table(t)) => t,
                _ => toml::Table::new(),
            };
            env::apply_overrides(&mut table, &defaults, &overrides)?;
        }
        let mut config = deserialize(table).map_err(|e| match e {
            ConfigError::Parse(m) => {
                ConfigError::Env(format!("override (CREDGATE_<SECTION>__<KEY>): {m}"))
            }
            other => other,
        })?;
        config.apply_vault_env(vault_env)?;
        // The standard variables fill in what the file leaves unset; empty
        // counts as unset (as OpenTelemetry's own variables do).
        let (redis, tracing) = (&mut config.rate_limit.redis, &mut config.tracing);
        let set = |v: &String| !v.is_empty();
        redis.url = redis.url.take().or(redis_url.filter(set).map(Into::into));
        tracing.otlp_endpoint = tracing.otlp_endpoint.take().or(otlp_endpoint.filter(set));
        config.validate()?;
        Ok(config)
    }

    fn apply_vault_env(&mut self, vars: Vec<(String, String)>) -> Result<(), ConfigError> {
        let v = &mut self.store.vault;
        for (key, value) in vars {
            let bad = |what: &str| ConfigError::Invalid(format!("{key} must be {what}"));
            match key.as_str() {
                "VAULT_ADDR" => v.address = value,
                "VAULT_NAMESPACE" => v.namespace = Some(value),
                "VAULT_CACERT" => v.ca_cert = Some(value.into()),
                "VAULT_TIMEOUT" => v.timeout_ms = value.parse().map_err(|_| bad("milliseconds"))?,
                "VAULT_MAX_RETRIES" => v.max_retries = value.parse().map_err(|_| bad("a count"))?,
                "VAULT_KV_ENGINE" => v.kv_mount = value,
                "VAULT_TRANSIT_ENGINE" => v.transit_mount = value,
                _ => {}
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        check_log_filter(&self.log.level)
            .map_err(|e| ConfigError::Invalid(format!("log.level = {:?}: {e}", self.log.level)))?;
        for url in [Some(&self.proxy.public_url), self.oauth.issuer.as_ref()]
            .into_iter()
            .flatten()
        {
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.ends_with('/') {
                return invalid(format!(
                    "`{url}` must be an http(s) URL without a trailing slash"
                ));
            }
        }
        if self.oauth.default_token_minutes == 0
            || self.oauth.default_token_minutes > self.oauth.max_token_minutes
        {
            return invalid("oauth.default_token_minutes must be 1..=max_token_minutes".into());
        }
        let p = &self.proxy;
        if p.upstream_timeout_seconds == 0
            || p.upstream_connect_timeout_seconds == 0
            || p.stream_idle_timeout_seconds == 0
            || p.header_read_timeout_seconds == 0
            || p.body_read_timeout_seconds == 0
            || p.max_connections == 0
        {
            return invalid("proxy timeouts and max_connections must be at least 1".into());
        }
        if p.max_header_bytes < 8192 {
            return invalid("proxy.max_header_bytes must be at least 8192".into());
        }
        if self.store.sync_interval_seconds == 0 {
            return invalid("store.sync_interval_seconds must be at least 1".into());
        }
        if self.proxy.tls_cert.is_some() != self.proxy.tls_key.is_some()
            || self.ops.tls_cert.is_some() != self.ops.tls_key.is_some()
        {
            return invalid("tls_cert and tls_key go together".into());
        }
        for (id, i) in &self.integrations {
            ids::validate(id).map_err(|e| ConfigError::Invalid(format!("integration: {e}")))?;
            reserved_integration(id, &format!("integrations.{id}"))?;
            if i.grant == IntegrationGrant::ClientCredentials
                && (i.token_url.is_none() || i.client_id.is_none())
            {
                return invalid(format!(
                    "integrations.{id}: grant = \"client_credentials\" needs token_url and client_id"
                ));
            }
            crate::connect::validate_integration(id, i).map_err(ConfigError::Invalid)?;
        }
        for id in self.rate_limit.tenants.keys() {
            ids::validate(id).map_err(|e| ConfigError::Invalid(format!("rate_limit: {e}")))?;
        }
        for limit in std::iter::once(&self.rate_limit.default)
            .chain(self.rate_limit.tenants.values())
            .chain(self.rate_limit.clients.values())
        {
            if limit.per_second == 0 || limit.burst == 0 {
                return invalid("rate limits need per_second and burst of at least 1".into());
            }
        }
        if self.rate_limit.backend == RateLimitBackend::Redis {
            self.rate_limit
                .redis
                .validate()
                .map_err(ConfigError::Invalid)?;
        }
        self.tracing.validate().map_err(ConfigError::Invalid)?;
        let mut seen = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let at = format!("routes[{i}]");
            ids::validate(&r.integration)
                .map_err(|e| ConfigError::Invalid(format!("{at}: {e}")))?;
            reserved_integration(&r.integration, &at)?;
            match (&r.path_prefix, &r.host) {
                (Some(p), None) => {
                    if !p.starts_with('/') || (p.len() > 1 && p.ends_with('/')) {
                        return invalid(format!(
                            "{at}: path_prefix must start with / and not end with /"
                        ));
                    }
                    if p.starts_with("/oauth")
                        || p.starts_with("/.well-known")
                        || p.starts_with("/api/admin")
                        || crate::connect::is_own_path(p)
                    {
                        return invalid(format!("{at}: path_prefix `{p}` is reserved"));
                    }
                }
                (None, Some(_)) => {}
                _ => return invalid(format!("{at}: give exactly one of path_prefix or host")),
            }
            if !seen.insert((r.path_prefix.clone(), r.host.clone())) {
                return invalid(format!("{at}: duplicate route"));
            }
            let uri: http::Uri = r
                .upstream
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("{at}: upstream: {e}")))?;
            if uri.scheme_str() != Some("http") && uri.scheme_str() != Some("https") {
                return invalid(format!("{at}: upstream must be an http(s) URL"));
            }
            if let Inject::Header { header } = &r.inject {
                http::HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| ConfigError::Invalid(format!("{at}: bad header `{header}`")))?;
            }
            crate::mcp::validate_route(r)
                .map_err(|e| ConfigError::Invalid(format!("{at}: {e}")))?;
        }
        Ok(())
    }

    pub fn issuer(&self) -> &str {
        self.oauth
            .issuer
            .as_deref()
            .unwrap_or(&self.proxy.public_url)
    }

    /// The effective configuration as TOML. Nothing secret is in `Config`
    /// (secrets come from the environment), so this is safe to print.
    /// Defaults that are derived from other keys are written out.
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.oauth.issuer = Some(self.issuer().to_owned());
        if self.store.backend == StoreBackend::Embedded {
            shown.store.master_key_file = Some(self.store.master_key_path());
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }
}

/// A log filter (`log.level`, `RUST_LOG`) must parse, and every directive without a
/// target must be a level: a lone word such as `verbose` would be read as a target
/// name and silence every log line, errors included.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map_err(|e| e.to_string())?;
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let level = matches!(
            d.to_ascii_lowercase().as_str(),
            "off" | "error" | "warn" | "info" | "debug" | "trace"
        );
        if !(level || d.contains('=') || d.contains('[') || d.contains("::") || d == "credgate") {
            return Err(format!(
                "`{d}` is not a log level: use error, warn, info, debug or trace, or \
                 directives such as \"info,credgate=debug\""
            ));
        }
    }
    Ok(())
}

/// Integration names that are values of the metrics' `route` label for credgate's own
/// endpoints; an integration of that name would be indistinguishable in the metrics.
pub const RESERVED_INTEGRATIONS: &[&str] = &["admin", "oauth", "none", "connect"];

fn reserved_integration(id: &str, at: &str) -> Result<(), ConfigError> {
    if RESERVED_INTEGRATIONS.contains(&id) {
        return Err(ConfigError::Invalid(format!(
            "{at}: the integration name `{id}` is reserved (credgate's own metrics label \
             value); choose another name"
        )));
    }
    Ok(())
}

/// The table as a `Config`, with an error that says where: the route's index for a
/// `[[routes]]` entry, and a hint for listen addresses given as host names.
fn deserialize(table: toml::Table) -> Result<Config, ConfigError> {
    let routes = table.get("routes").cloned();
    toml::Value::Table(table).try_into::<Config>().map_err(|e| {
        let mut msg = e.message().trim().to_owned();
        if let Some(toml::Value::Array(routes)) = routes {
            for (i, r) in routes.into_iter().enumerate() {
                if let Err(e) = r.try_into::<RouteConfig>() {
                    msg = format!("routes[{i}]: {}", e.message().trim());
                    break;
                }
            }
        }
        if msg.contains("socket address") {
            msg.push_str(
                " (a listen address is IP:port such as 127.0.0.1:9090; \
                 host names such as localhost are not accepted)",
            );
        }
        ConfigError::Parse(msg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = Config::from_toml_with_env("", env(&[])).unwrap();
        assert_eq!(c.proxy.listen.to_string(), DEFAULT_PROXY_LISTEN);
        assert_eq!(c.store.backend, StoreBackend::Embedded);
        assert_eq!(c.issuer(), "http://127.0.0.1:8080");
    }

    #[test]
    fn unknown_key_is_named() {
        let err = Config::from_toml_with_env("[proxy]\nlisten_port = 1\n", env(&[])).unwrap_err();
        assert!(err.to_string().contains("listen_port"), "{err}");
        let err = Config::from_toml_with_env("[nope]\n", env(&[])).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn env_overrides_nested_keys_with_types() {
        let c = Config::from_toml_with_env(
            "",
            env(&[
                ("CREDGATE_PROXY__LISTEN", "127.0.0.1:1234"),
                ("CREDGATE_RATE_LIMIT__DEFAULT__PER_SECOND", "7"),
                ("CREDGATE_METRICS__TENANT_LABEL", "true"),
                ("CREDGATE_ADMIN_TOKEN", "not-a-config-key"),
                ("VAULT_ADDR", "http://127.0.0.1:8300"),
                ("VAULT_TIMEOUT", "250"),
            ]),
        )
        .unwrap();
        assert_eq!(c.proxy.listen.port(), 1234);
        assert_eq!(c.rate_limit.default.per_second, 7);
        assert!(c.metrics.tenant_label);
        assert_eq!(c.store.vault.address, "http://127.0.0.1:8300");
        assert_eq!(c.store.vault.timeout_ms, 250);
    }

    #[test]
    fn env_override_of_unknown_key_is_an_error() {
        let err =
            Config::from_toml_with_env("", env(&[("CREDGATE_PROXY__BOGUS", "1")])).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn inject_forms_parse() {
        let c = Config::from_toml_with_env(
            r#"
            [[routes]]
            integration = "a"
            path_prefix = "/a"
            upstream = "http://127.0.0.1:1"
            [[routes]]
            integration = "b"
            path_prefix = "/b"
            upstream = "http://127.0.0.1:1"
            inject = "basic"
            [[routes]]
            integration = "c"
            path_prefix = "/c"
            upstream = "http://127.0.0.1:1"
            inject = { header = "X-API-Key" }
            "#,
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.routes[0].inject, Inject::Mode(InjectMode::Bearer));
        assert_eq!(c.routes[1].inject, Inject::Mode(InjectMode::Basic));
        assert_eq!(
            c.routes[2].inject,
            Inject::Header {
                header: "X-API-Key".into()
            }
        );
    }

    #[test]
    fn bad_identifiers_and_reserved_prefixes_are_rejected() {
        for route in [
            r#"integration = "Bad"
path_prefix = "/a""#,
            r#"integration = "a"
path_prefix = "/oauth""#,
            r#"integration = "a"
path_prefix = "/a/""#,
            r#"integration = "a""#,
        ] {
            let text = format!("[[routes]]\n{route}\nupstream = \"http://127.0.0.1:1\"\n");
            assert!(
                Config::from_toml_with_env(&text, env(&[])).is_err(),
                "{route}"
            );
        }
    }

    #[test]
    fn a_log_level_that_is_no_level_is_refused() {
        for bad in [
            "verbose",
            "info,credgate=verbose",
            "credgate=[",
            "loud,debug",
        ] {
            let text = format!("[log]\nlevel = {bad:?}\n");
            let err = Config::from_toml_with_env(&text, env(&[])).unwrap_err();
            assert!(err.to_string().contains("log.level"), "{bad}: {err}");
        }
        for good in [
            "info",
            "info,credgate=debug",
            "warn,credgate::proxy=trace",
            "credgate",
        ] {
            let text = format!("[log]\nlevel = {good:?}\n");
            Config::from_toml_with_env(&text, env(&[])).unwrap();
        }
    }

    #[test]
    fn reserved_integration_names_are_refused() {
        for name in RESERVED_INTEGRATIONS {
            let text = format!(
                "[[routes]]\nintegration = \"{name}\"\npath_prefix = \"/x\"\nupstream = \"http://127.0.0.1:1\"\n"
            );
            let err = Config::from_toml_with_env(&text, env(&[])).unwrap_err();
            assert!(err.to_string().contains("reserved"), "{name}: {err}");
        }
    }

    #[test]
    fn connect_keys_are_validated() {
        let base = r#"[integrations.gh]
token_url = "https://p/token"
client_id = "c"
"#;
        let ok = format!(
            "{base}authorize_url = \"https://p/auth\"\nscopes = [\"repo\", \"read:user\"]\nrevocation_url = \"https://p/revoke\"\nissuer = \"https://p\"\nauthorize_params = {{ prompt = \"consent\" }}\n"
        );
        let c = Config::from_toml_with_env(&ok, env(&[])).unwrap();
        let gh = &c.integrations["gh"];
        assert_eq!(gh.scopes, ["repo", "read:user"]);
        assert_eq!(gh.authorize_params["prompt"], "consent");
        for (bad, why) in [
            ("authorize_url = \"ftp://p/auth\"", "http(s) URL"),
            ("revocation_url = \"p/revoke\"", "http(s) URL"),
            ("issuer = \"p\"", "http(s) URL"),
            ("connect_url = \"javascript:alert(1)\"", "http(s) URL"),
            ("scopes = [\"a b\"]", "not a scope token"),
            ("authorize_params = { state = \"x\" }", "set by credgate"),
            (
                "authorize_params = { redirect_uri = \"x\" }",
                "set by credgate",
            ),
            ("unknown_key = 1", "unknown field"),
        ] {
            let text = format!("{base}{bad}\n");
            let err = Config::from_toml_with_env(&text, env(&[])).unwrap_err();
            assert!(err.to_string().contains(why), "{bad}: {err}");
        }
        let no_token_url =
            "[integrations.gh]\nauthorize_url = \"https://p/auth\"\nclient_id = \"c\"\n";
        let err = Config::from_toml_with_env(no_token_url, env(&[])).unwrap_err();
        assert!(err.to_string().contains("needs token_url"), "{err}");
        let callback = "[integrations.callback]\nauthorize_url = \"https://p/auth\"\ntoken_url = \"https://p/t\"\nclient_id = \"c\"\n";
        assert!(Config::from_toml_with_env(callback, env(&[])).is_err());
        assert!(Config::from_toml_with_env("[integrations.connect]\n", env(&[])).is_err());
        for prefix in ["/connect", "/settings", "/connect/x"] {
            let text = format!(
                "[[routes]]\nintegration = \"a\"\npath_prefix = \"{prefix}\"\nupstream = \"http://127.0.0.1:1\"\n"
            );
            let err = Config::from_toml_with_env(&text, env(&[])).unwrap_err();
            assert!(err.to_string().contains("reserved"), "{prefix}: {err}");
        }
    }

    #[test]
    fn route_errors_name_the_index_and_addresses_get_a_hint() {
        let text = "[[routes]]\nintegration = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\n[[routes]]\nintegration = \"b\"\npath_prefix = \"/b\"\n";
        let err = Config::from_toml_with_env(text, env(&[])).unwrap_err();
        assert!(err.to_string().contains("routes[1]"), "{err}");
        let err = Config::from_toml_with_env("[ops]\nlisten = \"localhost:9090\"\n", env(&[]))
            .unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:9090"), "{err}");
    }

    #[test]
    fn relative_paths_are_resolved_against_the_config_folder() {
        let mut c = Config::from_toml_with_env(
            "[store]\npath = \"data/x.store\"\n[audit]\npath = \"a.log\"\n",
            env(&[]),
        )
        .unwrap();
        c.resolve_paths(Path::new("/etc/credgate"));
        assert_eq!(c.store.path, Path::new("/etc/credgate/data/x.store"));
        assert_eq!(c.audit.path, "/etc/credgate/a.log");
        assert_eq!(
            c.store.master_key_path(),
            Path::new("/etc/credgate/data/x.store.key")
        );
    }

    #[test]
    fn check_config_output_shows_derived_defaults() {
        let c = Config::from_toml_with_env("", env(&[])).unwrap();
        let out = c.to_redacted_toml();
        assert!(out.contains("issuer = \"http://127.0.0.1:8080\""), "{out}");
        assert!(out.contains("master_key_file = "), "{out}");
        Config::from_toml_with_env(&out, env(&[])).expect("the output is a valid config");
    }

    #[test]
    fn secret_env_name_follows_integration() {
        let i = IntegrationConfig {
            grant: IntegrationGrant::default(),
            scope: None,
            token_url: None,
            authorize_url: None,
            client_id: None,
            auth_method: ClientAuthMethod::default(),
            client_secret_env: None,
            connect_url: None,
            scopes: Vec::new(),
            revocation_url: None,
            issuer: None,
            authorize_params: BTreeMap::new(),
        };
        assert_eq!(i.client_secret_env("my-app"), "MY_APP_CLIENT_SECRET");
    }
}
