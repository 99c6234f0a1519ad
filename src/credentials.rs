//! Upstream credentials: the §7 record layout, and the in-memory cache the
//! hot path reads.
//!
//! A cache hit costs one map lookup and never touches the store. A miss, or an
//! entry older than `store.sync_interval_seconds` (so other replicas' writes
//! show up), reloads through the cache's per-key compute, so concurrent misses
//! cost one store read. If the reload fails but the cached credential is still
//! valid, it keeps being served (degraded mode); an expired one never is.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderValue;
use moka::ops::compute::{CompResult, Op};
use prometheus::IntCounter;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::refresh::{RefreshError, Refresher, Trigger};
use crate::store::{Cas, Record, Store, StoreError};

/// A credential this close to expiry is treated as expired: it could lapse
/// before the upstream sees it.
pub const EXPIRY_SKEW_SECS: i64 = 10;

/// Retry-After for STORE_UNAVAILABLE.
const STORE_RETRY_AFTER_SECS: u64 = 5;

/// `tokenType` of a stored API key (injected as is, never refreshed).
pub const API_KEY_TYPE: &str = "api_key";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    ReauthorizationRequired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::ReauthorizationRequired => "reauthorization_required",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "reauthorization_required" => Status::ReauthorizationRequired,
            _ => Status::Active,
        }
    }
}

/// A decrypted upstream credential. `Debug` never shows the secrets.
#[derive(Debug, Clone)]
pub struct Credential {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub expires_at: Option<OffsetDateTime>,
    pub scopes: Vec<String>,
    pub token_type: String,
    pub created_by: String,
    pub auto_refresh: bool,
    pub refresh_count: u64,
    pub status: Status,
}

/// A credential as read from the store, with its version.
#[derive(Debug, Clone)]
pub struct Stored {
    pub credential: Credential,
    pub version: u64,
    pub updated_at: String,
}

/// Store path of a credential; both ids must be validated already.
pub fn record_path(tenant: &str, integration: &str) -> String {
    format!("{tenant}/{integration}")
}

/// Whether a credential expiring at `expires_at` may still be injected at `now`.
pub fn usable_at(expires_at: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    expires_at.is_none_or(|e| (e - now).whole_seconds() > EXPIRY_SKEW_SECS)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A credential record's fields that are not secret: what the admin API
/// shows, readable without decrypting anything.
#[derive(Debug, Clone)]
pub struct Summary {
    pub expires_at: Option<OffsetDateTime>,
    pub scopes: Vec<String>,
    pub token_type: String,
    pub created_by: String,
    pub auto_refresh: bool,
    pub refresh_count: u64,
    pub status: Status,
    pub has_refresh_token: bool,
    pub version: u64,
    pub updated_at: String,
}

impl Summary {
    /// Parses the plain fields of a §7 record.
    fn from_record(record: &Record, path: &str) -> Result<Self, StoreError> {
        let text = |k: &str| record.data.get(k).and_then(Value::as_str);
        let meta = |k: &str| record.metadata.get(k).map(String::as_str);
        let expires_at = match text("expiresAt") {
            Some(s) => Some(
                OffsetDateTime::parse(s, &Rfc3339)
                    .map_err(|_| StoreError::Corrupt(format!("{path}: expiresAt")))?,
            ),
            None => None,
        };
        Ok(Summary {
            expires_at,
            scopes: record
                .data
                .get("scopes")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            token_type: text("tokenType").unwrap_or("Bearer").to_owned(),
            created_by: meta("createdBy").unwrap_or("").to_owned(),
            auto_refresh: meta("autoRefresh") == Some("true"),
            refresh_count: meta("refreshCount")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            status: Status::parse(meta("status").unwrap_or("active")),
            has_refresh_token: text("refreshToken").is_some(),
            version: record.version,
            updated_at: record.updated_at.clone(),
        })
    }

    /// The summary of a credential about to be (or just) written.
    pub fn of(c: &Credential, version: u64, updated_at: String) -> Self {
        Summary {
            expires_at: c.expires_at,
            scopes: c.scopes.clone(),
            token_type: c.token_type.clone(),
            created_by: c.created_by.clone(),
            auto_refresh: c.auto_refresh,
            refresh_count: c.refresh_count,
            status: c.status,
            has_refresh_token: c.refresh_token.is_some(),
            version,
            updated_at,
        }
    }

    /// Metadata for `GET /api/admin/credentials/…` — never a secret.
    pub fn to_json(&self, tenant: &str, integration: &str, now: OffsetDateTime) -> Value {
        let status = match self.status {
            Status::Active if !usable_at(self.expires_at, now) => "expired",
            other => other.as_str(),
        };
        json!({
            "tenant": tenant,
            "integration": integration,
            "expiresAt": self.expires_at.map(rfc3339),
            "scopes": self.scopes,
            "tokenType": self.token_type,
            "version": self.version,
            "refreshCount": self.refresh_count,
            "updatedAt": self.updated_at,
            "autoRefresh": self.auto_refresh,
            "hasRefreshToken": self.has_refresh_token,
            "status": status,
        })
    }
}

/// Reads a credential's plain fields only: one store read, no decryption.
pub async fn load_summary(
    store: &dyn Store,
    tenant: &str,
    integration: &str,
) -> Result<Option<Summary>, StoreError> {
    let path = record_path(tenant, integration);
    match store.read(&path).await? {
        Some(record) => Summary::from_record(&record, &path).map(Some),
        None => Ok(None),
    }
}

/// Reads and decrypts one credential (one store read, one batch decrypt).
pub async fn load(
    store: &dyn Store,
    tenant: &str,
    integration: &str,
) -> Result<Option<Stored>, StoreError> {
    let path = record_path(tenant, integration);
    let Some(record) = store.read(&path).await? else {
        return Ok(None);
    };
    let summary = Summary::from_record(&record, &path)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("{path}: {what}"));
    let text = |k: &str| record.data.get(k).and_then(Value::as_str);
    let access = text("accessToken").ok_or_else(|| corrupt("no accessToken"))?;
    let mut ciphertexts = vec![access];
    if let Some(r) = text("refreshToken") {
        ciphertexts.push(r);
    }
    let mut plain = store
        .decrypt(tenant, &path, &ciphertexts)
        .await?
        .into_iter()
        .map(|p| String::from_utf8(p.to_vec()).map(SecretString::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| corrupt("token is not UTF-8"))?;
    let refresh_token = (plain.len() > 1).then(|| plain.remove(1));
    let access_token = plain.remove(0);
    let credential = Credential {
        access_token,
        refresh_token,
        expires_at: summary.expires_at,
        scopes: summary.scopes,
        token_type: summary.token_type,
        created_by: summary.created_by,
        auto_refresh: summary.auto_refresh,
        refresh_count: summary.refresh_count,
        status: summary.status,
    };
    Ok(Some(Stored {
        credential,
        version: summary.version,
        updated_at: summary.updated_at,
    }))
}

/// Encrypts and writes a credential with check-and-set; returns the version.
pub async fn save(
    store: &dyn Store,
    tenant: &str,
    integration: &str,
    c: &Credential,
    cas: Cas,
) -> Result<u64, StoreError> {
    let path = record_path(tenant, integration);
    let mut secrets: Vec<&[u8]> = vec![c.access_token.expose_secret().as_bytes()];
    if let Some(r) = &c.refresh_token {
        secrets.push(r.expose_secret().as_bytes());
    }
    let mut ct = store.encrypt(tenant, &path, &secrets).await?;
    if ct.len() != secrets.len() {
        return Err(StoreError::Corrupt("encrypt returned a short batch".into()));
    }
    let mut data = Map::new();
    if ct.len() > 1 {
        data.insert("refreshToken".into(), Value::String(ct.remove(1)));
    }
    data.insert("accessToken".into(), Value::String(ct.remove(0)));
    if let Some(e) = c.expires_at {
        data.insert("expiresAt".into(), Value::String(rfc3339(e)));
    }
    data.insert("scopes".into(), json!(c.scopes));
    data.insert("tokenType".into(), Value::String(c.token_type.clone()));
    data.insert("integration".into(), Value::String(integration.to_owned()));
    let metadata = BTreeMap::from([
        ("createdBy".to_owned(), c.created_by.clone()),
        ("integration".to_owned(), integration.to_owned()),
        ("autoRefresh".to_owned(), c.auto_refresh.to_string()),
        ("refreshCount".to_owned(), c.refresh_count.to_string()),
        ("status".to_owned(), c.status.as_str().to_owned()),
    ]);
    store.write(&path, data, metadata, cas).await
}

/// What the hot path injects: header values built once per load.
pub struct Cached {
    /// `Bearer <token>`.
    pub bearer: HeaderValue,
    /// `Basic base64(<token>)`, or `Basic base64(<token>:)` when the token has
    /// no `:` (an API key used as the user name, as Stripe-style APIs expect).
    pub basic: HeaderValue,
    /// The token alone, for `inject = { header = … }`.
    pub raw: HeaderValue,
    pub expires_at: Option<OffsetDateTime>,
    pub version: u64,
    pub status: Status,
    pub has_refresh_token: bool,
    loaded_at: Instant,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cached")
            .field("expires_at", &self.expires_at)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Cached {
    fn new(s: &Stored) -> Result<Self, StoreError> {
        let token = s.credential.access_token.expose_secret();
        let sensitive = |v: String| {
            HeaderValue::try_from(v)
                .map(|mut h| {
                    h.set_sensitive(true);
                    h
                })
                .map_err(|_| StoreError::Corrupt("credential is not a valid header value".into()))
        };
        let userpass = if token.contains(':') {
            token.to_owned()
        } else {
            format!("{token}:")
        };
        Ok(Cached {
            bearer: sensitive(format!("Bearer {token}"))?,
            basic: sensitive(format!("Basic {}", B64.encode(userpass)))?,
            raw: sensitive(token.to_owned())?,
            expires_at: s.credential.expires_at,
            version: s.version,
            status: s.credential.status,
            has_refresh_token: s.credential.refresh_token.is_some(),
            loaded_at: Instant::now(),
        })
    }

    fn usable(&self, now: OffsetDateTime) -> bool {
        self.status == Status::Active && usable_at(self.expires_at, now)
    }
}

type Key = (Arc<str>, Arc<str>);

/// The credential cache in front of the store.
pub struct Credentials {
    store: Arc<dyn Store>,
    refresher: Arc<Refresher>,
    cache: moka::future::Cache<Key, Arc<Cached>>,
    max_age: Duration,
    hit: IntCounter,
    miss: IntCounter,
    stale: IntCounter,
}

impl Credentials {
    pub fn new(
        store: Arc<dyn Store>,
        refresher: Arc<Refresher>,
        sync_interval: Duration,
        metrics: &Metrics,
    ) -> Self {
        let c = &metrics.credential_cache_requests_total;
        Credentials {
            store,
            refresher,
            // Idle entries go after an hour so memory follows active tenants.
            cache: moka::future::Cache::builder()
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            max_age: sync_interval,
            hit: c.with_label_values(&["hit"]),
            miss: c.with_label_values(&["miss"]),
            stale: c.with_label_values(&["stale"]),
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn refresher(&self) -> &Arc<Refresher> {
        &self.refresher
    }

    /// The injectable credential for a tenant and integration.
    pub async fn get(
        &self,
        tenant: &Arc<str>,
        integration: &Arc<str>,
    ) -> Result<Arc<Cached>, ProxyError> {
        let key = (tenant.clone(), integration.clone());
        let now = OffsetDateTime::now_utc();
        match self.cache.get(&key).await {
            Some(c) if c.loaded_at.elapsed() < self.max_age && c.usable(now) => {
                self.hit.inc();
                crate::telemetry::attribute("credgate.credential.source", "cache");
                return Ok(c);
            }
            Some(_) => self.stale.inc(),
            None => self.miss.inc(),
        }
        crate::telemetry::attribute("credgate.credential.source", "store");
        // Boxed: the hit path's future stays small (it is moved with every
        // proxied request), the reload's is large.
        Box::pin(self.reload(key, tenant, integration, now)).await
    }

    /// Loads (or refreshes) a credential into the cache, one caller at a time.
    async fn reload(
        &self,
        key: Key,
        tenant: &Arc<str>,
        integration: &Arc<str>,
        now: OffsetDateTime,
    ) -> Result<Arc<Cached>, ProxyError> {
        let max_age = self.max_age;
        let result = self
            .cache
            .entry(key)
            .and_try_compute_with(|existing| async move {
                // A concurrent caller may have reloaded it while we waited.
                let existing = existing.map(|e| e.into_value());
                if existing
                    .as_ref()
                    .is_some_and(|c| c.loaded_at.elapsed() < max_age && c.usable(now))
                {
                    return Ok(Op::Nop);
                }
                match self.load_usable(tenant, integration, now).await {
                    Ok(Some(s)) => Ok(Op::Put(Arc::new(Cached::new(&s).map_err(|e| store_error(&e))?))),
                    Ok(None) => Ok(Op::Remove),
                    Err(Failure::Store(e)) => match existing {
                        Some(c) if c.usable(now) => {
                            tracing::warn!(error = %e, "store reload failed; serving cached credential");
                            Ok(Op::Nop)
                        }
                        _ => Err(store_error(&e)),
                    },
                    Err(Failure::Refresh(e)) => Err(e.into()),
                }
            })
            .await;
        let cached = match result? {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                e.into_value()
            }
            CompResult::Removed(_) | CompResult::StillNone(_) => {
                return Err(ProxyError::IntegrationNotConnected { connect_url: None });
            }
        };
        if cached.status == Status::ReauthorizationRequired {
            return Err(ProxyError::ReauthorizationRequired { connect_url: None });
        }
        if !usable_at(cached.expires_at, now) {
            return Err(ProxyError::ReauthorizationRequired { connect_url: None });
        }
        Ok(cached)
    }

    /// Reads the credential; an expired one is refreshed before it is
    /// returned, so an expired credential never reaches the cache.
    async fn load_usable(
        &self,
        tenant: &str,
        integration: &str,
        now: OffsetDateTime,
    ) -> Result<Option<Stored>, Failure> {
        let Some(s) = self
            .refresher
            .load_current(tenant, integration)
            .await
            .map_err(Failure::Store)?
        else {
            if self.refresher.mints_tokens(integration) {
                return self
                    .refresher
                    .minted_token(integration, None, Trigger::Expired)
                    .await
                    .map(Some)
                    .map_err(Failure::Refresh);
            }
            return Ok(None);
        };
        let c = &s.credential;
        if c.status == Status::ReauthorizationRequired {
            return Err(Failure::Refresh(RefreshError::Reauthorization));
        }
        if usable_at(c.expires_at, now) {
            return Ok(Some(s));
        }
        if c.refresh_token.is_none() {
            return Err(Failure::Refresh(RefreshError::Reauthorization));
        }
        let refresh =
            self.refresher
                .refresh(tenant, integration, Some(s.version), Trigger::Expired);
        crate::telemetry::in_span("credential refresh", refresh)
            .await
            .map(Some)
            .map_err(Failure::Refresh)
    }

    /// After the upstream refused credential version `used`: refresh once
    /// (coalesced with every other caller that saw the same version) and
    /// return the newer credential. `None` when an upstream 401 already
    /// refreshed this credential within `refresh.min_interval_seconds`: the
    /// caller then gets the upstream's 401.
    pub async fn refresh_after_unauthorized(
        &self,
        tenant: &Arc<str>,
        integration: &Arc<str>,
        used: u64,
    ) -> Result<Option<Arc<Cached>>, ProxyError> {
        match self
            .refresh_inner(tenant, integration, Some(used), Trigger::Unauthorized)
            .await
        {
            Ok(c) => Ok(Some(c)),
            Err(RefreshError::Throttled) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Refreshes now (admin request); `seen` None always calls the provider.
    pub async fn refresh(
        &self,
        tenant: &Arc<str>,
        integration: &Arc<str>,
        seen: Option<u64>,
        trigger: Trigger,
    ) -> Result<Arc<Cached>, ProxyError> {
        self.refresh_inner(tenant, integration, seen, trigger)
            .await
            .map_err(ProxyError::from)
    }

    async fn refresh_inner(
        &self,
        tenant: &Arc<str>,
        integration: &Arc<str>,
        seen: Option<u64>,
        trigger: Trigger,
    ) -> Result<Arc<Cached>, RefreshError> {
        let now = OffsetDateTime::now_utc();
        let refresher = &self.refresher;
        let result = self
            .cache
            .entry((tenant.clone(), integration.clone()))
            .and_try_compute_with(|existing| async move {
                if let (Some(e), Some(seen)) = (&existing, seen) {
                    let c = e.value();
                    if c.version > seen && c.usable(now) {
                        return Ok(Op::Nop);
                    }
                }
                let refresh = refresher.refresh(tenant, integration, seen, trigger);
                let s = crate::telemetry::in_span("credential refresh", refresh).await?;
                Ok::<_, RefreshError>(Op::Put(Arc::new(Cached::new(&s)?)))
            })
            .await?;
        match result {
            CompResult::Inserted(e) | CompResult::ReplacedWith(e) | CompResult::Unchanged(e) => {
                Ok(e.into_value())
            }
            CompResult::Removed(_) | CompResult::StillNone(_) => Err(RefreshError::NotConnected),
        }
    }

    /// Drops a cached credential after it was written or deleted here.
    pub async fn invalidate(&self, tenant: &str, integration: &str) {
        let key: Key = (tenant.into(), integration.into());
        self.cache.invalidate(&key).await;
    }
}

enum Failure {
    Store(StoreError),
    Refresh(RefreshError),
}

/// Maps a store failure on the credential path to what the caller sees.
pub fn store_error(e: &StoreError) -> ProxyError {
    match e {
        StoreError::Unavailable(_) | StoreError::Io(_) => {
            tracing::warn!(error = %e, "credential store unavailable");
            ProxyError::StoreUnavailable {
                retry_after_secs: STORE_RETRY_AFTER_SECS,
            }
        }
        StoreError::Conflict => ProxyError::Conflict("concurrent update; retry".into()),
        StoreError::Decrypt | StoreError::Corrupt(_) | StoreError::Refused(_) => {
            tracing::error!(error = %e, "credential record unusable");
            ProxyError::Internal
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn expiry_math_uses_skew() {
        let now = datetime!(2026-01-01 0:00 UTC);
        assert!(usable_at(None, now));
        assert!(usable_at(Some(now + time::Duration::seconds(60)), now));
        assert!(!usable_at(
            Some(now + time::Duration::seconds(EXPIRY_SKEW_SECS)),
            now
        ));
        assert!(!usable_at(Some(now - time::Duration::seconds(1)), now));
    }

    #[test]
    fn header_values_are_sensitive_and_formatted() {
        let s = Stored {
            credential: Credential {
                access_token: SecretString::from("tok123"),
                refresh_token: None,
                expires_at: None,
                scopes: vec![],
                token_type: "Bearer".into(),
                created_by: "t".into(),
                auto_refresh: false,
                refresh_count: 0,
                status: Status::Active,
            },
            version: 1,
            updated_at: String::new(),
        };
        let c = Cached::new(&s).unwrap();
        assert_eq!(c.bearer, "Bearer tok123");
        assert!(c.bearer.is_sensitive());
        assert_eq!(c.basic, format!("Basic {}", B64.encode("tok123:")));
        assert_eq!(c.raw, "tok123");
        assert!(!format!("{c:?}").contains("tok123"));
        assert!(!format!("{:?}", s.credential).contains("tok123"));
    }

    #[test]
    fn header_injection_in_a_token_is_refused() {
        let s = Stored {
            credential: Credential {
                access_token: SecretString::from("a\r\nX-Evil: 1"),
                refresh_token: None,
                expires_at: None,
                scopes: vec![],
                token_type: "Bearer".into(),
                created_by: String::new(),
                auto_refresh: false,
                refresh_count: 0,
                status: Status::Active,
            },
            version: 1,
            updated_at: String::new(),
        };
        assert!(Cached::new(&s).is_err());
    }
}
