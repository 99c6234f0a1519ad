//! The in-memory credential cache the hot path reads, above `refresh`.
//!
//! A cache hit costs one map lookup and never touches the store. A miss, or an
//! entry older than `store.sync_interval_seconds` (so other replicas' writes
//! show up), reloads through the cache's per-key compute, so concurrent misses
//! cost one store read. If the reload fails but the cached credential is still
//! valid, it keeps being served (degraded mode); an expired one never is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::HeaderValue;
use moka::ops::compute::{CompResult, Op};
use prometheus::IntCounter;
use secrecy::ExposeSecret;
use time::OffsetDateTime;

use super::record::{Status, Stored, usable_at};
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::refresh::{RefreshError, Refresher, Trigger};
use crate::store::{Store, StoreError};

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
                    return Ok::<_, ProxyError>(Op::Nop);
                }
                match self.load_usable(tenant, integration, now).await {
                    Ok(Some(s)) => Ok(Op::Put(Arc::new(Cached::new(&s)?))),
                    Ok(None) => Ok(Op::Remove),
                    Err(Failure::Store(e)) => match existing {
                        Some(c) if c.usable(now) => {
                            tracing::warn!(error = %e, "store reload failed; serving cached credential");
                            Ok(Op::Nop)
                        }
                        _ => Err(e.into()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Credential;
    use secrecy::SecretString;

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
