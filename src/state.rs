//! `AppState`: the handles every request needs, built once and passed
//! explicitly (no globals).

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::Response;
use secrecy::ExposeSecret;

use crate::audit::Audit;
use crate::config::{Config, RateLimitConfig};
use crate::credentials::Credentials;
use crate::http::Body;
use crate::metrics::Metrics;
use crate::oauth::Authority;
use crate::ratelimit::RateLimits;
use crate::refresh::Refresher;
use crate::routes::Routes;
use crate::secrets::Secrets;
use crate::store::{self, Store, StoreError};
use crate::{tls, upstream};
use arc_swap::ArcSwap;

/// What SIGHUP reloads without dropping connections: routes, the headers
/// they inject into, rate limits and request body limits. (Integrations live
/// in the refresher.)
pub struct Live {
    pub routes: Routes,
    /// `proxy.max_body_bytes`.
    pub max_body_bytes: u64,
    /// `proxy.max_replay_body_bytes`.
    pub max_replay_body_bytes: u64,
    rate_limit_config: RateLimitConfig,
    pub rate_limits: Arc<RateLimits>,
}

impl Live {
    fn new(config: &Config, previous: Option<&Live>, metrics: &Metrics) -> Result<Self, String> {
        let routes = Routes::from_config(config);
        // Unchanged limits keep their buckets: a reload is no free burst.
        let rate_limits = match previous {
            Some(p) if p.rate_limit_config == config.rate_limit => p.rate_limits.clone(),
            _ => Arc::new(RateLimits::with_backend(
                &config.rate_limit,
                metrics.rate_limit_backend_errors_total.clone(),
            )?),
        };
        Ok(Live {
            routes,
            max_body_bytes: config.proxy.max_body_bytes,
            max_replay_body_bytes: config.proxy.max_replay_body_bytes,
            rate_limit_config: config.rate_limit.clone(),
            rate_limits,
        })
    }
}

pub struct AppState {
    /// The configuration credgate started with; reloadable parts are in `live`.
    pub config: Arc<Config>,
    pub live: ArcSwap<Live>,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    pub audit: Arc<Audit>,
    pub authority: Arc<Authority>,
    pub credentials: Arc<Credentials>,
    pub upstream: upstream::Client,
    /// Connect links, the connect flow and the settings page.
    pub connect: crate::connect::Connect,
}

/// The shortest bootstrap admin token accepted at start-up.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("audit log: {0}")]
    Audit(#[from] std::io::Error),
    #[error("{0}")]
    Config(String),
    #[error(
        "{} must be at least {MIN_ADMIN_TOKEN_LEN} characters (e.g. `openssl rand -hex 32`)",
        crate::config::ENV_ADMIN_TOKEN
    )]
    AdminTokenTooShort,
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Refresh(#[from] crate::refresh::SetupError),
    #[error(transparent)]
    Connect(#[from] crate::connect::SetupError),
}

impl AppState {
    /// Opens the store and builds every component.
    pub async fn build(config: Config, secrets: Arc<Secrets>) -> Result<Self, StartError> {
        let store = store::open(&config.store, &secrets).await?;
        Self::with_store(config, store, secrets).await
    }

    pub async fn with_store(
        config: Config,
        store: Arc<dyn Store>,
        secrets: Arc<Secrets>,
    ) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::with_tenant_label(config.metrics.tenant_label));
        metrics.preregister(config.routes.iter().map(|r| r.integration.as_str()));
        metrics.preregister_refresh(
            config
                .routes
                .iter()
                .map(|r| r.integration.as_str())
                .chain(config.integrations.keys().map(String::as_str)),
        );
        metrics.preregister_store(store.backend());
        let store: Arc<dyn Store> = Arc::new(store::Instrumented::new(store, &metrics));
        // An empty variable counts as unset; a short token is refused before
        // anything else is opened.
        let admin_token = secrets
            .admin_token()
            .filter(|t| !t.expose_secret().is_empty());
        if admin_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().chars().count() < MIN_ADMIN_TOKEN_LEN)
        {
            return Err(StartError::AdminTokenTooShort);
        }
        let audit = Arc::new(Audit::open(&config.audit.path)?);
        let mut authority =
            Authority::new(&config, store.clone(), metrics.clone(), audit.clone()).await?;
        authority.set_admin_token(admin_token);
        let authority = Arc::new(authority);
        let tls_client = tls::client_config(config.proxy.upstream_ca_file.as_deref())?;
        let refresher = Refresher::new(
            &config,
            secrets.clone(),
            tls_client.clone(),
            store.clone(),
            metrics.clone(),
            audit.clone(),
        )?;
        let credentials = Arc::new(Credentials::new(
            store.clone(),
            Arc::new(refresher),
            Duration::from_secs(config.store.sync_interval_seconds),
            &metrics,
        ));
        let connect = crate::connect::Connect::new(&config, secrets, tls_client.clone())?;
        Ok(AppState {
            connect,
            live: ArcSwap::from_pointee(
                Live::new(&config, None, &metrics).map_err(StartError::Config)?,
            ),
            upstream: upstream::Client::new(&config.proxy, tls_client.clone()),
            config: Arc::new(config),
            store,
            metrics,
            audit,
            authority,
            credentials,
        })
    }

    /// Applies a new, already validated config: routes, rate limits,
    /// integrations and `[refresh]` timings take effect for the next request;
    /// in-flight requests and open streams keep what they started with.
    /// Returns every changed key that needs a restart (not applied; see
    /// [`crate::reload`]). `log_level_live`: whether the caller applies
    /// `log.level` (it cannot when `RUST_LOG` is set).
    pub fn reload(
        &self,
        new: &Config,
        log_level_live: bool,
    ) -> Result<Vec<String>, crate::reload::ReloadError> {
        let live = Live::new(new, Some(&self.live.load()), &self.metrics)
            .map_err(crate::reload::ReloadError::Routes)?;
        self.credentials.refresher().reload_providers(new)?;
        self.connect.reload(new);
        self.live.store(Arc::new(live));
        self.authority.reload_routes(new);
        Ok(crate::reload::needs_restart(
            &self.config,
            new,
            log_level_live,
        ))
    }

    /// Whether `token` is the bootstrap admin token (digests compared in
    /// constant time).
    pub fn is_admin_token(&self, token: &str) -> bool {
        self.authority.is_admin_token(token)
    }

    /// Records the request metrics for a finished request.
    pub fn finish(&self, route: &str, started: Instant, resp: Response<Body>) -> Response<Body> {
        self.finish_for(route, None, started, resp)
    }

    /// [`AppState::finish`] for a request whose tenant is known (counted
    /// only with `metrics.tenant_label`).
    pub fn finish_for(
        &self,
        route: &str,
        tenant: Option<&str>,
        started: Instant,
        resp: Response<Body>,
    ) -> Response<Body> {
        tracing::Span::current().record("route", route);
        let m = &self.metrics;
        m.count_request(route, resp.status().as_str(), tenant);
        m.http_request_duration_seconds
            .with_label_values(&[route])
            .observe(started.elapsed().as_secs_f64());
        resp
    }
}
