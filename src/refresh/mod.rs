//! Refreshing upstream credentials (README.md, "Scheduled refresh"): at most
//! one refresh per credential at a time in this process (a per-key lock) and
//! across replicas (a lease record written with check-and-set, [`lease`]),
//! the provider call ([`provider`]), and the write that keeps a rotated
//! refresh token.
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
//! provider answers are capped at 64 KiB ([`provider_http`]) and an access
//! token must be a valid header value.

pub mod lease;
pub mod pending;
mod provider;
pub mod provider_http;
pub mod schedule;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use secrecy::ExposeSecret;
use time::OffsetDateTime;

use crate::audit::{Audit, AuditEvent, AuditKind};
use crate::config::{Config, IntegrationGrant};
use crate::credentials::{self, Credential, Status, Stored, usable_at};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::secrets::Secrets;
use crate::store::{Cas, Store, StoreError};
use provider::{Provider, providers_of};

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

/// Why the refresher cannot take a (re)loaded config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("integrations.{integration}.token_url: {message}")]
    TokenUrl {
        integration: String,
        message: String,
    },
    #[error("http client: {0}")]
    HttpClient(#[source] reqwest::Error),
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

type Key = (String, String);

pub struct Refresher {
    store: Arc<dyn Store>,
    /// Client secrets, for providers (re)loaded from the config.
    secrets: Arc<Secrets>,
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
        secrets: Arc<Secrets>,
        tls: rustls::ClientConfig,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        audit: Arc<Audit>,
    ) -> Result<Self, SetupError> {
        let providers = ArcSwap::from_pointee(providers_of(config, &secrets)?);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            // RFC 6749 token endpoints do not redirect; following one could leak the secret.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(PROVIDER_TIMEOUT)
            .build()
            .map_err(SetupError::HttpClient)?;
        Ok(Refresher {
            store,
            secrets,
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
    pub fn reload_providers(&self, config: &Config) -> Result<(), SetupError> {
        self.providers
            .store(Arc::new(providers_of(config, &self.secrets)?));
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
            match lease::acquire(self.store.as_ref(), tenant, integration, &self.instance).await? {
                Some(lease_version) => {
                    // Read again under the lease: another replica may have
                    // refreshed between our read and the lease, and the
                    // refresh token we read is then consumed.
                    let current = self.load_current(tenant, integration).await;
                    let current = match current {
                        Ok(Some(c)) if c.version == stored.version => c,
                        Ok(_) => {
                            lease::release(self.store.as_ref(), tenant, integration, lease_version)
                                .await;
                            seen = Some(stored.version);
                            continue;
                        }
                        Err(e) => {
                            lease::release(self.store.as_ref(), tenant, integration, lease_version)
                                .await;
                            return Err(e.into());
                        }
                    };
                    let result = self
                        .refresh_held(tenant, integration, current, trigger)
                        .await;
                    lease::release(self.store.as_ref(), tenant, integration, lease_version).await;
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
        let outcome = match self.providers.load().get(integration) {
            Some(p) => p.refresh(&self.http, &stored.credential).await,
            None => Err(RefreshError::Reauthorization),
        };
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
        let result = match self.providers.load().get(integration) {
            Some(p) => p.client_credentials(&self.http).await,
            None => Err(RefreshError::Reauthorization),
        };
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
}
