//! Per-tenant (and optional per-client) token buckets (docs/configuration.md), checked after
//! authentication and before the store is touched.
//!
//! Tenants without an override share one keyed limiter whose idle entries are
//! evicted by [`RateLimits::evict_idle`], so memory follows active tenants.
//! Tenants and clients with configured limits get their own limiter each
//! (bounded by the config).
//!
//! With `rate_limit.backend = "redis"` the buckets live in Redis or Valkey,
//! shared by every replica ([`shared`], docs/scaling.md); the in-process
//! buckets are then only the fallback while the backend cannot answer.

pub mod shared;

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use prometheus::IntCounter;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{RateLimit, RateLimitBackend, RateLimitConfig};
use crate::error::ProxyError;
use shared::{OnError, Shared, Verdict};

type Keyed<C> =
    RateLimiter<Arc<str>, DashMapStateStore<Arc<str>>, C, NoOpMiddleware<<C as Clock>::Instant>>;
type Direct<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

fn quota(l: &RateLimit) -> Quota {
    // Validated ≥ 1 by Config::validate.
    let per_second = NonZeroU32::new(l.per_second).unwrap_or(NonZeroU32::MIN);
    let burst = NonZeroU32::new(l.burst).unwrap_or(NonZeroU32::MIN);
    Quota::per_second(per_second).allow_burst(burst)
}

pub struct RateLimits<C: Clock + Clone = DefaultClock> {
    clock: C,
    default: RateLimit,
    tenants: Keyed<C>,
    tenant_overrides: HashMap<Box<str>, (Direct<C>, RateLimit)>,
    clients: HashMap<Box<str>, (Direct<C>, RateLimit)>,
    /// Set with `backend = "redis"`.
    shared: Option<Shared>,
}

impl RateLimits<DefaultClock> {
    /// In-process buckets only, whatever `backend` says.
    pub fn new(config: &RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
    }

    /// The configured backend; `errors` counts checks the shared backend
    /// could not answer. Needs a Tokio runtime for the Redis client.
    pub fn with_backend(config: &RateLimitConfig, errors: IntCounter) -> Result<Self, String> {
        let mut limits = Self::new(config);
        if config.backend == RateLimitBackend::Redis {
            limits.shared = Some(Shared::new(&config.redis, errors)?);
        }
        Ok(limits)
    }
}

impl<C: Clock + Clone> RateLimits<C> {
    pub fn with_clock(config: &RateLimitConfig, clock: C) -> Self {
        let direct = |l: &RateLimit| (RateLimiter::direct_with_clock(quota(l), clock.clone()), *l);
        RateLimits {
            default: config.default,
            tenants: RateLimiter::dashmap_with_clock(quota(&config.default), clock.clone()),
            tenant_overrides: config
                .tenants
                .iter()
                .map(|(t, l)| (t.as_str().into(), direct(l)))
                .collect(),
            clients: config
                .clients
                .iter()
                .map(|(c, l)| (c.as_str().into(), direct(l)))
                .collect(),
            clock,
            shared: None,
        }
    }

    /// Takes one token for the tenant (and the client, if it has a limit),
    /// from the shared backend when there is one.
    pub async fn acquire(&self, tenant: &Arc<str>, client_id: &str) -> Result<(), ProxyError> {
        match &self.shared {
            None => self.check(tenant, client_id),
            // Boxed: only this mode pays for the round trip's future.
            Some(shared) => Box::pin(self.acquire_shared(shared, tenant, client_id)).await,
        }
    }

    async fn acquire_shared(
        &self,
        shared: &Shared,
        tenant: &Arc<str>,
        client_id: &str,
    ) -> Result<(), ProxyError> {
        let tenant_limit = self
            .tenant_overrides
            .get(&**tenant)
            .map_or(&self.default, |(_, l)| l);
        let client_limit = self.clients.get(client_id).map(|(_, l)| l);
        let verdict = shared
            .check((tenant, tenant_limit), client_limit.map(|l| (client_id, l)))
            .await;
        match verdict {
            Some(Verdict::Allowed) => Ok(()),
            Some(Verdict::Refused { index, wait }) => {
                let limit = match (index, client_limit) {
                    (1, Some(l)) => l,
                    _ => tenant_limit,
                };
                Err(self.refused(limit, wait))
            }
            None => match shared.on_error {
                OnError::Local => self.check(tenant, client_id),
                OnError::Deny => Err(ProxyError::RateLimitUnavailable {
                    retry_after_secs: shared::COOL_DOWN.as_secs().max(1),
                }),
            },
        }
    }

    /// Takes one token for the tenant (and the client, if it has a limit).
    pub fn check(&self, tenant: &Arc<str>, client_id: &str) -> Result<(), ProxyError> {
        if let Some((limiter, limit)) = self.clients.get(client_id) {
            limiter
                .check()
                .map_err(|n| self.refused(limit, n.wait_time_from(self.clock.now())))?;
        }
        match self.tenant_overrides.get(&**tenant) {
            Some((limiter, limit)) => limiter
                .check()
                .map_err(|n| self.refused(limit, n.wait_time_from(self.clock.now()))),
            None => self
                .tenants
                .check_key(tenant)
                .map_err(|n| self.refused(&self.default, n.wait_time_from(self.clock.now()))),
        }
    }

    fn refused(&self, limit: &RateLimit, wait: Duration) -> ProxyError {
        let reset_at = OffsetDateTime::now_utc() + wait;
        ProxyError::RateLimited {
            limit: limit.burst,
            remaining: 0,
            reset_after_secs: wait.as_secs_f64().ceil() as u64,
            reset_at: reset_at.format(&Rfc3339).unwrap_or_default(),
        }
    }

    /// Forgets tenants whose buckets are full again (they would behave the
    /// same as new ones), bounding memory by the active set.
    pub fn evict_idle(&self) {
        self.tenants.retain_recent();
        self.tenants.shrink_to_fit();
    }

    /// Tenants with limiter state held.
    pub fn tracked_tenants(&self) -> usize {
        self.tenants.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;
    use std::collections::BTreeMap;

    fn config() -> RateLimitConfig {
        RateLimitConfig {
            default: RateLimit {
                per_second: 1,
                burst: 3,
            },
            tenants: BTreeMap::from([(
                "big".to_owned(),
                RateLimit {
                    per_second: 10,
                    burst: 10,
                },
            )]),
            clients: BTreeMap::from([(
                "slow-client".to_owned(),
                RateLimit {
                    per_second: 1,
                    burst: 1,
                },
            )]),
            ..Default::default()
        }
    }

    #[test]
    fn burst_then_refuse_then_refill() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimits::with_clock(&config(), clock.clone());
        let t: Arc<str> = "t1".into();
        for _ in 0..3 {
            rl.check(&t, "c").unwrap();
        }
        match rl.check(&t, "c").unwrap_err() {
            ProxyError::RateLimited {
                limit,
                remaining,
                reset_after_secs,
                ..
            } => {
                assert_eq!((limit, remaining, reset_after_secs), (3, 0, 1));
            }
            e => panic!("unexpected {e:?}"),
        }
        clock.advance(Duration::from_secs(1));
        rl.check(&t, "c").unwrap();
        assert!(rl.check(&t, "c").is_err());
    }

    #[test]
    fn tenants_are_isolated_and_overrides_apply() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimits::with_clock(&config(), clock);
        let (a, b, big): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "big".into());
        for _ in 0..3 {
            rl.check(&a, "c").unwrap();
        }
        assert!(rl.check(&a, "c").is_err());
        rl.check(&b, "c").unwrap();
        for _ in 0..10 {
            rl.check(&big, "c").unwrap();
        }
        assert!(rl.check(&big, "c").is_err());
    }

    #[test]
    fn client_limit_applies_before_tenant() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimits::with_clock(&config(), clock);
        let t: Arc<str> = "t".into();
        rl.check(&t, "slow-client").unwrap();
        assert!(rl.check(&t, "slow-client").is_err());
        rl.check(&t, "other").unwrap();
    }

    #[test]
    fn idle_tenants_are_evicted() {
        let clock = FakeRelativeClock::default();
        let rl = RateLimits::with_clock(&config(), clock.clone());
        for i in 0..1000 {
            let t: Arc<str> = format!("t{i}").into();
            rl.check(&t, "c").unwrap();
        }
        assert_eq!(rl.tracked_tenants(), 1000);
        clock.advance(Duration::from_secs(10));
        rl.evict_idle();
        assert_eq!(rl.tracked_tenants(), 0);
    }
}
