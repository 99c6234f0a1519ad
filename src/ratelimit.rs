//! Per-tenant (and optional per-client) token buckets (docs/configuration.md), checked after
//! authentication and before the store is touched.
//!
//! Tenants without an override share one keyed limiter whose idle entries are
//! evicted by [`RateLimits::evict_idle`], so memory follows active tenants.
//! Tenants and clients with configured limits get their own limiter each
//! (bounded by the config).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::{RateLimit, RateLimitConfig};
use crate::error::ProxyError;

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
}

impl RateLimits<DefaultClock> {
    pub fn new(config: &RateLimitConfig) -> Self {
        Self::with_clock(config, DefaultClock::default())
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
