//! Refreshing upstream credentials (README.md, "Scheduled refresh"): the provider call, at most one
//! refresh per credential at a time in this process (a per-key lock) and
//! across replicas (a lease record written with check-and-set), and the write
//! that keeps a rotated refresh token.
//!
//! What a crash can lose: if credgate dies after the provider answered and
//! before the store write, the provider has already rotated the refresh
//! token and the new pair exists only in the dead process. The lease then
//! expires, the next refresh presents the old (consumed) refresh token, the
//! provider answers `invalid_grant`, and the credential is marked
//! `reauthorization_required`: never a silent failure, never an old token
//! injected. The window is one store write long.
//!
//! If the process lives but the store refuses that write (store down,
//! repeated check-and-set conflicts), the new pair is kept in memory,
//! served, counted (`credgate_credential_persist_failures_total`), audited
//! (`refresh-persist-failed`) and written in the background (see [`pending`]).
//!
//! Upstream 401s refresh a credential at most once per
//! `refresh.min_interval_seconds` (the caller then gets the upstream's 401);
//! provider answers are capped at 64 KiB and an access token must be a valid
//! header value ([`provider_http`]).

pub mod pending;
pub mod provider_http;
pub mod schedule;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{
    AuthType, ClientId, ClientSecret, EndpointNotSet, EndpointSet, RefreshToken, RequestTokenError,
    Scope, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::audit::{Audit, AuditEvent, AuditKind};
use crate::config::{ClientAuthMethod, Config, IntegrationGrant};
use crate::credentials::{self, Credential, Status, Stored, usable_at};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::refresh::provider_http::LimitedClient;
use crate::store::{Cas, INTERNAL_PREFIX, Store, StoreError};

/// How long a refresh lease holds before another replica may take over.
const LEASE_TTL_SECS: i64 = 30;
/// How long a replica that lost the lease waits for the winner's write.
const LEASE_WAIT: Duration = Duration::from_secs(10);
const LEASE_POLL: Duration = Duration::from_millis(200);
/// Retry-After for CREDENTIAL_REFRESH_FAILED.
pub const RETRY_AFTER_SECS: u64 = 30;
/// Provider calls are bounded.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(15);

/// What started a refresh (the `trigger` label).
#[derive(Debug, Clone, Copy)]
pub enum Trigger {
    Unauthorized,
    Expired,
    Scheduled,
    Admin,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Unauthorized => "upstream_401",
            Trigger::Expired => "expired",
            Trigger::Scheduled => "scheduled",
            Trigger::Admin => "admin",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// No refresh possible: no refresh token, no provider, or `invalid_grant`.
    #[error("reauthorization required")]
    Reauthorization,
    /// The provider failed in a way that may pass (5xx, timeout, connect).
    #[error("provider failed: {0}")]
    Provider(String),
    #[error("credential not connected")]
    NotConnected,
    /// An upstream 401 asked for a refresh within `refresh.min_interval_seconds`
    /// of the last one it caused: the caller gets the upstream's 401.
    #[error("refresh after upstream 401 throttled")]
    Throttled,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RefreshError {
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            RefreshError::Reauthorization | RefreshError::NotConnected
        )
    }
}

impl From<RefreshError> for ProxyError {
    fn from(e: RefreshError) -> Self {
        match e {
            RefreshError::Reauthorization => {
                ProxyError::ReauthorizationRequired { connect_url: None }
            }
            RefreshError::Provider(_) => ProxyError::CredentialRefreshFailed {
                retry_after_secs: RETRY_AFTER_SECS,
            },
            RefreshError::NotConnected => ProxyError::IntegrationNotConnected { connect_url: None },
            // Handled where upstream 401s are; should it surface, it is retriable.
            RefreshError::Throttled => ProxyError::CredentialRefreshFailed {
                retry_after_secs: RETRY_AFTER_SECS,
            },
            RefreshError::Store(e) => e.into(),
        }
    }
}

/// An integration's OAuth app, for the refresh_token grant.
struct Provider {
    grant: IntegrationGrant,
    scopes: Vec<Scope>,
    token_url: TokenUrl,
    client_id: ClientId,
    client_secret: Option<SecretString>,
    auth: AuthType,
}

type Key = (String, String);

type TokenClient =
    BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

impl Provider {
    /// A client for the provider's token endpoint, authenticating as configured.
    fn client(&self) -> TokenClient {
        let client = BasicClient::new(self.client_id.clone())
            .set_token_uri(self.token_url.clone())
            .set_auth_type(self.auth.clone());
        match &self.client_secret {
            Some(s) => client.set_client_secret(ClientSecret::new(s.expose_secret().to_owned())),
            None => client,
        }
    }
}

/// Sorts a token endpoint failure: `invalid_grant` is final, the rest may pass.
fn classify<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, oauth2::basic::BasicErrorResponse>,
) -> RefreshError {
    match e {
        RequestTokenError::ServerResponse(r)
            if *r.error() == BasicErrorResponseType::InvalidGrant =>
        {
            RefreshError::Reauthorization
        }
        RequestTokenError::ServerResponse(r) => {
            RefreshError::Provider(format!("provider answered {}", r.error()))
        }
        RequestTokenError::Request(e) => RefreshError::Provider(format!("request: {e}")),
        RequestTokenError::Parse(_, _) => {
            RefreshError::Provider("unparseable provider answer".into())
        }
        RequestTokenError::Other(e) => RefreshError::Provider(e),
    }
}

/// A provider's access token, if credgate can inject it: RFC 6750 token
/// characters only (visible ASCII and space, RFC 6749 VSCHAR). Anything else
/// would make every later request fail, so it is a refresh failure instead.
fn injectable(token: &str) -> Result<SecretString, RefreshError> {
    if token.is_empty() || !token.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(RefreshError::Provider(
            "provider access token is not a valid header value".into(),
        ));
    }
    Ok(SecretString::from(token.to_owned()))
}

/// The OAuth apps of the configured integrations that can refresh.
fn providers_of(config: &Config) -> Result<BTreeMap<String, Provider>, String> {
    let mut providers = BTreeMap::new();
    for (id, i) in &config.integrations {
        let (Some(url), Some(client_id)) = (&i.token_url, &i.client_id) else {
            continue;
        };
        let token_url =
            TokenUrl::new(url.clone()).map_err(|e| format!("integrations.{id}.token_url: {e}"))?;
        let client_secret = std::env::var(i.client_secret_env(id))
            .ok()
            .map(SecretString::from);
        providers.insert(
            id.clone(),
            Provider {
                grant: i.grant,
                scopes: i
                    .scope
                    .as_deref()
                    .unwrap_or("")
                    .split_whitespace()
                    .map(|s| Scope::new(s.to_owned()))
                    .collect(),
                token_url,
                client_id: ClientId::new(client_id.clone()),
                client_secret,
                auth: match i.auth_method {
                    ClientAuthMethod::ClientSecretPost => AuthType::RequestBody,
                    ClientAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
                },
            },
        );
    }
    Ok(providers)
}

pub struct Refresher {
    store: Arc<dyn Store>,
    http: reqwest::Client,
    /// Swapped whole on reload.
    providers: ArcSwap<BTreeMap<String, Provider>>,
    locks: Mutex<HashMap<Key, Weak<tokio::sync::Mutex<()>>>>,
    /// Names this process in lease records.
    instance: String,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
    due: schedule::DueIndex,
    before_secs: AtomicI64,
    /// `refresh.min_interval_seconds`, and when an upstream 401 last caused a
    /// refresh of each credential (`""` as tenant: a minted token).
    min_interval_secs: AtomicU64,
    /// `refresh.concurrency`: scheduled refreshes at once.
    concurrency: AtomicU64,
    after_unauthorized: Mutex<HashMap<Key, tokio::time::Instant>>,
    /// Integration-wide tokens of `grant = "client_credentials"` integrations,
    /// with the time to renew each.
    minted: Mutex<HashMap<String, (Stored, OffsetDateTime)>>,
    minted_version: AtomicU64,
    /// Refreshed pairs the store did not take yet.
    unpersisted: pending::Unpersisted,
}

impl Refresher {
    pub fn new(
        config: &Config,
        tls: rustls::ClientConfig,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        audit: Arc<Audit>,
    ) -> Result<Self, String> {
        let providers = ArcSwap::from_pointee(providers_of(config)?);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            // RFC 6749 token endpoints do not redirect; following one could leak the secret.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .build()
            .map_err(|e| format!("http client: {e}"))?;
        Ok(Refresher {
            store,
            http,
            providers,
            locks: Mutex::new(HashMap::new()),
            instance: uuid::Uuid::new_v4().to_string(),
            metrics,
            audit,
            due: schedule::DueIndex::default(),
            before_secs: AtomicI64::new(config.refresh.before_seconds as i64),
            min_interval_secs: AtomicU64::new(config.refresh.min_interval_seconds),
            concurrency: AtomicU64::new(config.refresh.concurrency as u64),
            after_unauthorized: Mutex::new(HashMap::new()),
            minted: Mutex::new(HashMap::new()),
            minted_version: AtomicU64::new(1),
            unpersisted: pending::Unpersisted::default(),
        })
    }

    /// Takes the integrations and `[refresh]` timings of a reloaded config.
    pub fn reload_providers(&self, config: &Config) -> Result<(), String> {
        self.providers.store(Arc::new(providers_of(config)?));
        self.before_secs
            .store(config.refresh.before_seconds as i64, Ordering::Relaxed);
        self.min_interval_secs
            .store(config.refresh.min_interval_seconds, Ordering::Relaxed);
        self.concurrency
            .store(config.refresh.concurrency as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Whether an upstream 401 may refresh this credential now: at most once
    /// per `refresh.min_interval_seconds`, so an upstream that refuses every
    /// token cannot turn each request into a provider call. Records the use.
    fn may_refresh_after_unauthorized(&self, tenant: &str, integration: &str) -> bool {
        let interval = Duration::from_secs(self.min_interval_secs.load(Ordering::Relaxed));
        let now = tokio::time::Instant::now();
        let mut map = self
            .after_unauthorized
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_owned(), integration.to_owned());
        if map
            .get(&key)
            .is_some_and(|t| now.duration_since(*t) < interval)
        {
            return false;
        }
        if map.len() >= 1024 {
            // Bounded: only credentials within their interval are remembered.
            map.retain(|_, t| now.duration_since(*t) < interval);
        }
        map.insert(key, now);
        true
    }

    /// `refresh.concurrency` as last (re)loaded.
    pub fn concurrency(&self) -> usize {
        self.concurrency.load(Ordering::Relaxed) as usize
    }

    /// `refresh.before_seconds` as last (re)loaded.
    pub fn before_secs(&self) -> i64 {
        self.before_secs.load(Ordering::Relaxed)
    }

    /// The credential as credgate should use it: the stored record, or a
    /// refreshed pair the store has not taken yet (see [`pending`]).
    pub async fn load_current(
        &self,
        tenant: &str,
        integration: &str,
    ) -> Result<Option<Stored>, StoreError> {
        Ok(credentials::load(self.store.as_ref(), tenant, integration)
            .await?
            .map(|s| self.unpersisted.overlay(tenant, integration, s)))
    }

    /// The scheduled-refresh index.
    pub fn due(&self) -> &schedule::DueIndex {
        &self.due
    }

    /// Whether a credential is within `refresh.before_seconds` of expiry.
    fn due_now(&self, c: &Credential, now: OffsetDateTime) -> bool {
        c.expires_at
            .is_some_and(|e| (e - now).whole_seconds() <= self.before_secs())
    }

    /// Tells the schedule about a credential just written.
    pub fn note_written(&self, tenant: &str, integration: &str, c: &Credential) {
        let auto = c.auto_refresh && c.status == Status::Active;
        self.due
            .note(tenant, integration, c.expires_at, auto, self.before_secs());
    }

    fn key_lock(&self, tenant: &str, integration: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant.to_owned(), integration.to_owned());
        if let Some(l) = locks.get(&key).and_then(Weak::upgrade) {
            return l;
        }
        locks.retain(|_, w| w.strong_count() > 0);
        let l = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key, Arc::downgrade(&l));
        l
    }

    /// Refreshes the credential, unless the store already holds a version
    /// newer than `seen_version` (someone else refreshed): then that one is
    /// returned without calling the provider.
    pub async fn refresh(
        &self,
        tenant: &str,
        integration: &str,
        seen_version: Option<u64>,
        trigger: Trigger,
    ) -> Result<Stored, RefreshError> {
        let lock = self.key_lock(tenant, integration);
        let _held = lock.lock().await;
        let mut seen = seen_version;
        let deadline = tokio::time::Instant::now() + LEASE_WAIT;
        let mut admitted = !matches!(trigger, Trigger::Unauthorized);
        loop {
            let Some(stored) = self.load_current(tenant, integration).await? else {
                if self.mints_tokens(integration) {
                    drop(_held);
                    return self.minted_token(integration, seen, trigger).await;
                }
                return Err(RefreshError::NotConnected);
            };
            let now = OffsetDateTime::now_utc();
            if seen.is_some_and(|v| stored.version > v)
                && stored.credential.status == Status::Active
                && usable_at(stored.credential.expires_at, now)
            {
                return Ok(stored);
            }
            if stored.credential.status == Status::ReauthorizationRequired {
                return Err(RefreshError::Reauthorization);
            }
            if matches!(trigger, Trigger::Scheduled) && !self.due_now(&stored.credential, now) {
                // Another replica refreshed it since this one scheduled it.
                self.note_written(tenant, integration, &stored.credential);
                return Ok(stored);
            }
            if !admitted {
                if !self.may_refresh_after_unauthorized(tenant, integration) {
                    return Err(RefreshError::Throttled);
                }
                admitted = true;
            }
            match self.acquire_lease(tenant, integration).await? {
                Some(lease_version) => {
                    // Read again under the lease: another replica may have
                    // refreshed between our read and the lease, and the
                    // refresh token we read is then consumed.
                    let current = self.load_current(tenant, integration).await;
                    let current = match current {
                        Ok(Some(c)) if c.version == stored.version => c,
                        Ok(_) => {
                            self.release_lease(tenant, integration, lease_version).await;
                            seen = Some(stored.version);
                            continue;
                        }
                        Err(e) => {
                            self.release_lease(tenant, integration, lease_version).await;
                            return Err(e.into());
                        }
                    };
                    let result = self
                        .refresh_held(tenant, integration, current, trigger)
                        .await;
                    self.release_lease(tenant, integration, lease_version).await;
                    return result;
                }
                None if tokio::time::Instant::now() < deadline => {
                    // Another replica is refreshing: wait for its write.
                    seen = Some(stored.version);
                    tokio::time::sleep(LEASE_POLL).await;
                }
                None => {
                    return Err(RefreshError::Provider(
                        "another replica holds the refresh lease".into(),
                    ));
                }
            }
        }
    }

    async fn refresh_held(
        &self,
        tenant: &str,
        integration: &str,
        stored: Stored,
        trigger: Trigger,
    ) -> Result<Stored, RefreshError> {
        let outcome = self.call_provider(integration, &stored.credential).await;
        let label = |result: &str| {
            self.metrics
                .count_refresh(integration, trigger.as_str(), result, tenant);
        };
        let audit = |kind: AuditKind, reason: Option<&str>| {
            self.audit.record(
                kind,
                AuditEvent {
                    tenant: Some(tenant),
                    integration: Some(integration),
                    actor: Some(trigger.as_str()),
                    reason,
                    ..Default::default()
                },
            );
        };
        match outcome {
            Ok(fresh) => {
                let stored = match self
                    .write_refreshed(tenant, integration, stored.clone(), fresh.clone())
                    .await
                {
                    Ok(written) => {
                        self.unpersisted.clear(tenant, integration);
                        written
                    }
                    Err(RefreshError::Store(e)) => {
                        self.keep_unpersisted(tenant, integration, trigger, &stored, fresh, &e)
                    }
                    Err(e) => return Err(e),
                };
                self.note_written(tenant, integration, &stored.credential);
                label("success");
                audit(AuditKind::RefreshSuccess, None);
                Ok(stored)
            }
            Err(RefreshError::Reauthorization) => {
                label("reauthorization_required");
                self.due.set(tenant, integration, None);
                audit(AuditKind::RefreshFailed, Some("reauthorization_required"));
                if stored.credential.refresh_token.is_some() {
                    // The provider refused the grant: record it so every
                    // replica stops trying and the admin API shows it.
                    let mut c = stored.credential.clone();
                    c.status = Status::ReauthorizationRequired;
                    let _ = credentials::save(
                        self.store.as_ref(),
                        tenant,
                        integration,
                        &c,
                        Cas::Version(stored.version),
                    )
                    .await;
                }
                Err(RefreshError::Reauthorization)
            }
            Err(e) => {
                tracing::warn!(tenant, integration, error = %e, "credential refresh failed");
                label("error");
                audit(AuditKind::RefreshRetry, Some("provider_error"));
                Err(e)
            }
        }
    }

    /// The provider answered but the store refused the write: the new pair
    /// is kept and served (the old refresh token is consumed), counted,
    /// audited, and written in the background.
    fn keep_unpersisted(
        &self,
        tenant: &str,
        integration: &str,
        trigger: Trigger,
        base: &Stored,
        fresh: Credential,
        error: &StoreError,
    ) -> Stored {
        tracing::warn!(tenant, integration, error = %error,
            "refreshed credential not persisted; kept in memory, retrying the write");
        self.metrics
            .credential_persist_failures_total
            .with_label_values(&[integration])
            .inc();
        self.audit.record(
            AuditKind::RefreshPersistFailed,
            AuditEvent {
                tenant: Some(tenant),
                integration: Some(integration),
                actor: Some(trigger.as_str()),
                reason: Some(match error {
                    StoreError::Conflict => "conflict",
                    _ => "store_unavailable",
                }),
                ..Default::default()
            },
        );
        self.unpersisted
            .keep(self.store.clone(), tenant, integration, base, fresh.clone());
        Stored {
            credential: fresh,
            version: base.version,
            updated_at: base.updated_at.clone(),
        }
    }

    /// Whether credgate obtains this integration's token itself.
    pub fn mints_tokens(&self, integration: &str) -> bool {
        self.providers
            .load()
            .get(integration)
            .is_some_and(|p| p.grant == IntegrationGrant::ClientCredentials)
    }

    /// The integration-wide token from the client_credentials grant: the one
    /// held, unless it is due for renewal (three quarters into its life) or not
    /// newer than `seen` (the upstream refused it); then a new one, fetched by
    /// one caller while the others wait for it.
    pub async fn minted_token(
        &self,
        integration: &str,
        seen: Option<u64>,
        trigger: Trigger,
    ) -> Result<Stored, RefreshError> {
        // "" is no tenant id, so this lock is the integration's own.
        let lock = self.key_lock("", integration);
        let _held = lock.lock().await;
        let now = OffsetDateTime::now_utc();
        let held = self.minted_lock().get(integration).cloned();
        if let Some((s, renew_at)) = held
            && now < renew_at
            && seen.is_none_or(|v| s.version > v)
        {
            return Ok(s);
        }
        if matches!(trigger, Trigger::Unauthorized)
            && !self.may_refresh_after_unauthorized("", integration)
        {
            return Err(RefreshError::Throttled);
        }
        let result = self.fetch_minted(integration).await;
        let outcome = if result.is_ok() { "success" } else { "error" };
        self.metrics
            .count_refresh(integration, trigger.as_str(), outcome, "");
        let (credential, lifetime) = result.inspect_err(|e| {
            tracing::warn!(integration, error = %e, "client_credentials token request failed");
            self.audit.record(
                AuditKind::RefreshRetry,
                AuditEvent {
                    integration: Some(integration),
                    actor: Some(trigger.as_str()),
                    reason: Some("provider_error"),
                    ..Default::default()
                },
            );
        })?;
        let stored = Stored {
            credential,
            version: self.minted_version.fetch_add(1, Ordering::Relaxed),
            updated_at: String::new(),
        };
        let renew_at = now + lifetime.map_or(time::Duration::minutes(5), |l| l * 3 / 4);
        self.minted_lock()
            .insert(integration.to_owned(), (stored.clone(), renew_at));
        self.audit.record(
            AuditKind::RefreshSuccess,
            AuditEvent {
                integration: Some(integration),
                actor: Some(trigger.as_str()),
                reason: Some("client_credentials"),
                ..Default::default()
            },
        );
        Ok(stored)
    }

    fn minted_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Stored, OffsetDateTime)>> {
        self.minted.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch_minted(
        &self,
        integration: &str,
    ) -> Result<(Credential, Option<time::Duration>), RefreshError> {
        let providers = self.providers.load();
        let p = providers
            .get(integration)
            .ok_or(RefreshError::Reauthorization)?;
        let resp = p
            .client()
            .exchange_client_credentials()
            .add_scopes(p.scopes.iter().cloned())
            .request_async(&LimitedClient(&self.http))
            .await
            .map_err(classify)?;
        let lifetime = resp
            .expires_in()
            .map(|d| time::Duration::seconds(d.as_secs().min(10 * 365 * 86400) as i64));
        let now = OffsetDateTime::now_utc();
        Ok((
            Credential {
                access_token: injectable(resp.access_token().secret())?,
                refresh_token: None,
                expires_at: lifetime.map(|l| now + l),
                scopes: resp
                    .scopes()
                    .map(|s| s.iter().map(|s| s.to_string()).collect())
                    .unwrap_or_default(),
                token_type: "Bearer".into(),
                created_by: "client_credentials".into(),
                auto_refresh: false,
                refresh_count: 0,
                status: Status::Active,
            },
            lifetime,
        ))
    }

    /// The refresh_token grant against the integration's provider.
    async fn call_provider(
        &self,
        integration: &str,
        c: &Credential,
    ) -> Result<Credential, RefreshError> {
        let refresh_token = c
            .refresh_token
            .as_ref()
            .ok_or(RefreshError::Reauthorization)?;
        let providers = self.providers.load();
        let p = providers
            .get(integration)
            .ok_or(RefreshError::Reauthorization)?;
        let resp = p
            .client()
            .exchange_refresh_token(&RefreshToken::new(refresh_token.expose_secret().to_owned()))
            .request_async(&LimitedClient(&self.http))
            .await
            .map_err(classify)?;
        let now = OffsetDateTime::now_utc();
        Ok(Credential {
            access_token: injectable(resp.access_token().secret())?,
            // A provider that does not rotate leaves the old refresh token valid.
            refresh_token: Some(
                resp.refresh_token()
                    .map(|r| SecretString::from(r.secret().to_owned()))
                    .unwrap_or_else(|| refresh_token.clone()),
            ),
            expires_at: resp
                .expires_in()
                .map(|d| now + time::Duration::seconds(d.as_secs().min(10 * 365 * 86400) as i64)),
            scopes: resp
                .scopes()
                .map(|s| s.iter().map(|s| s.to_string()).collect())
                .unwrap_or_else(|| c.scopes.clone()),
            token_type: "Bearer".into(),
            created_by: c.created_by.clone(),
            auto_refresh: c.auto_refresh,
            refresh_count: c.refresh_count + 1,
            status: Status::Active,
        })
    }

    /// Writes the refreshed pair. The lease makes a conflict unlikely; if an
    /// admin replaced the credential meanwhile, theirs wins.
    async fn write_refreshed(
        &self,
        tenant: &str,
        integration: &str,
        old: Stored,
        fresh: Credential,
    ) -> Result<Stored, RefreshError> {
        let mut base = old;
        for _ in 0..3 {
            match credentials::save(
                self.store.as_ref(),
                tenant,
                integration,
                &fresh,
                Cas::Version(base.version),
            )
            .await
            {
                Ok(version) => {
                    return Ok(Stored {
                        credential: fresh,
                        version,
                        updated_at: String::new(),
                    });
                }
                Err(StoreError::Conflict) => {
                    let Some(now) = self.load_current(tenant, integration).await? else {
                        return Err(RefreshError::NotConnected);
                    };
                    let same_grant = match (
                        &now.credential.refresh_token,
                        &base.credential.refresh_token,
                    ) {
                        (Some(a), Some(b)) => a.expose_secret() == b.expose_secret(),
                        _ => false,
                    };
                    if !same_grant {
                        return Ok(now);
                    }
                    base = now;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(RefreshError::Store(StoreError::Conflict))
    }

    fn lease_path(tenant: &str, integration: &str) -> String {
        format!("{INTERNAL_PREFIX}/leases/{tenant}/{integration}")
    }

    /// Takes the cross-replica refresh lease; `None` when another live holder has it.
    async fn acquire_lease(
        &self,
        tenant: &str,
        integration: &str,
    ) -> Result<Option<u64>, StoreError> {
        let path = Self::lease_path(tenant, integration);
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let current = self.store.read(&path).await?;
        let cas = match &current {
            Some(r) => {
                let until = r.data.get("expiresAt").and_then(Value::as_i64).unwrap_or(0);
                let holder = r.data.get("holder").and_then(Value::as_str).unwrap_or("");
                if until > now && holder != self.instance {
                    return Ok(None);
                }
                Cas::Version(r.version)
            }
            None => Cas::Absent,
        };
        let mut data = Map::new();
        data.insert("holder".into(), json!(self.instance));
        data.insert("expiresAt".into(), json!(now + LEASE_TTL_SECS));
        match self.store.write(&path, data, BTreeMap::new(), cas).await {
            Ok(v) => Ok(Some(v)),
            Err(StoreError::Conflict) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn release_lease(&self, tenant: &str, integration: &str, version: u64) {
        let path = Self::lease_path(tenant, integration);
        let mut data = Map::new();
        data.insert("holder".into(), json!(""));
        data.insert("expiresAt".into(), json!(0));
        // Losing this write only means the lease runs out by itself.
        if let Err(e) = self
            .store
            .write(&path, data, BTreeMap::new(), Cas::Version(version))
            .await
        {
            tracing::debug!(error = %e, "refresh lease release failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refresher(min_interval_seconds: u64) -> Refresher {
        let mut config = Config::default();
        config.refresh.min_interval_seconds = min_interval_seconds;
        Refresher::new(
            &config,
            crate::tls::client_config(None).unwrap(),
            Arc::new(crate::oauth::testing::MemStore::new()),
            Arc::new(Metrics::new()),
            Arc::new(Audit::discard()),
        )
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn upstream_401s_refresh_a_credential_once_per_interval() {
        let r = refresher(30);
        assert!(r.may_refresh_after_unauthorized("t1", "gh"));
        assert!(
            !r.may_refresh_after_unauthorized("t1", "gh"),
            "second 401 within 30 s"
        );
        // Per credential: another tenant, another integration, a minted token.
        assert!(r.may_refresh_after_unauthorized("t2", "gh"));
        assert!(r.may_refresh_after_unauthorized("t1", "other"));
        assert!(r.may_refresh_after_unauthorized("", "gh"));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!r.may_refresh_after_unauthorized("t1", "gh"));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(r.may_refresh_after_unauthorized("t1", "gh"));
        // 0 turns the limit off.
        let off = refresher(0);
        assert!(off.may_refresh_after_unauthorized("t1", "gh"));
        assert!(off.may_refresh_after_unauthorized("t1", "gh"));
    }

    #[test]
    fn only_header_safe_tokens_are_injectable() {
        assert!(injectable("gho_abc-._~+/=").is_ok());
        for bad in ["", "a\r\nX-Evil: 1", "tab\there", "caf\u{e9}", "nul\0"] {
            assert!(
                matches!(injectable(bad), Err(RefreshError::Provider(_))),
                "{bad:?} accepted"
            );
        }
    }
}
