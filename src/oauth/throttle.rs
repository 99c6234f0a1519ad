//! Throttling of failed client authentication at `/oauth/token` (docs/http-api.md).
//!
//! Design — an attacker must not be able to lock a legitimate client out:
//!
//! - **Per source address** (IPv4 address, IPv6 /64): once an address has
//!   `max_failures_per_address` failures in its window, every further token
//!   request from it is refused with 429 *before* credentials are checked. This sheds
//!   load, and an attacker can only lock out its own address.
//! - **Per client id**: failures against a *registered* client id are counted
//!   too (unknown ids are not, so the map stays bounded by the number of
//!   clients). Past `max_failures_per_client`, a request with the *wrong*
//!   credentials gets 429 instead of 401, but a request with the *right* credentials still
//!   succeeds: holding the secret proves legitimacy, so hammering a victim's
//!   client id cannot deny it tokens. Secrets carry 256 random bits, so letting
//!   the check run does not make guessing feasible.
//!
//! Windows are fixed, one minute from the first failure. Time is passed in
//! (`now`), so tests never sleep.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Length of a counting window.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

/// Beyond this many tracked keys, expired windows are swept; if the map is
/// still full, new keys are not tracked (fail open rather than grow without
/// bound under an address-spraying attack).
const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
}

/// Failure counters for one kind of key.
#[derive(Debug)]
struct Counter<K> {
    limit: u32,
    windows: Mutex<HashMap<K, Window>>,
}

impl<K: Eq + Hash + Clone> Counter<K> {
    fn new(limit: u32) -> Self {
        Counter {
            limit,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Seconds until the key may try again, once it used up its `limit`.
    fn blocked_for(&self, key: &K, now: Instant) -> Option<u64> {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.get(key)?;
        let end = w.start + WINDOW;
        (w.failures >= self.limit && now < end).then(|| ceil_secs(end - now))
    }

    /// Counts one failure; returns the wait if the key is now over its limit.
    fn fail(&self, key: &K, now: Instant) -> Option<u64> {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= MAX_TRACKED && !windows.contains_key(key) {
            windows.retain(|_, w| now < w.start + WINDOW);
            if windows.len() >= MAX_TRACKED {
                return None;
            }
        }
        let w = windows.entry(key.clone()).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now >= w.start + WINDOW {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
        let end = w.start + WINDOW;
        // `limit` failures are allowed in a window; the next one is throttled.
        (w.failures > self.limit).then(|| ceil_secs(end - now))
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// The address key: IPv6 callers are grouped by /64, since one host usually
/// owns a whole /64 and could otherwise rotate addresses freely.
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let mut seg = v6.segments();
            seg[4..].fill(0);
            IpAddr::from(seg)
        }
        IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().expect("checked")),
        v4 => v4,
    }
}

/// Client-authentication failure throttle (see the module doc for the design).
#[derive(Debug)]
pub(crate) struct Throttle {
    by_address: Counter<IpAddr>,
    by_client: Counter<String>,
}

impl Throttle {
    pub(crate) fn new(max_failures_per_client: u32, max_failures_per_address: u32) -> Self {
        Throttle {
            by_address: Counter::new(max_failures_per_address.max(1)),
            by_client: Counter::new(max_failures_per_client.max(1)),
        }
    }

    /// Checked before credentials: `Some(retry_after)` refuses the request.
    pub(crate) fn address_blocked(&self, ip: IpAddr, now: Instant) -> Option<u64> {
        self.by_address.blocked_for(&address_key(ip), now)
    }

    /// Records a failed authentication. `known_client` is the client id when
    /// it names a registered client. Returns `Some(retry_after)` when the
    /// caller should get 429 rather than 401.
    pub(crate) fn record_failure(
        &self,
        ip: IpAddr,
        known_client: Option<&str>,
        now: Instant,
    ) -> Option<u64> {
        let by_addr = self.by_address.fail(&address_key(ip), now);
        let by_client = known_client.and_then(|id| self.by_client.fail(&id.to_owned(), now));
        by_addr.max(by_client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn address_is_blocked_after_limit_until_window_ends() {
        let t = Throttle::new(10, 3);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..2 {
            assert_eq!(t.record_failure(a, None, t0), None);
            assert_eq!(t.address_blocked(a, t0), None);
        }
        assert_eq!(t.record_failure(a, None, t0), None);
        assert_eq!(t.address_blocked(a, t0 + Duration::from_secs(20)), Some(40));
        assert_eq!(t.address_blocked(ip("192.0.2.2"), t0), None);
        assert_eq!(t.address_blocked(a, t0 + WINDOW), None);
        // A new window starts counting from zero.
        assert_eq!(t.record_failure(a, None, t0 + WINDOW), None);
        assert_eq!(t.address_blocked(a, t0 + WINDOW), None);
    }

    #[test]
    fn client_bucket_turns_401_into_429_but_never_blocks_up_front() {
        let t = Throttle::new(2, 1000);
        let t0 = Instant::now();
        let attacker = ip("198.51.100.7");
        assert_eq!(t.record_failure(attacker, Some("cg-victim"), t0), None);
        assert_eq!(t.record_failure(attacker, Some("cg-victim"), t0), None);
        assert_eq!(
            t.record_failure(attacker, Some("cg-victim"), t0 + Duration::from_millis(500)),
            Some(60)
        );
        // The legitimate client's address is not blocked: its correct secret
        // is still checked (and succeeds) — see the module doc.
        assert_eq!(t.address_blocked(ip("203.0.113.9"), t0), None);
        // A wrong guess from anywhere for that client id gets 429.
        assert!(
            t.record_failure(ip("203.0.113.9"), Some("cg-victim"), t0)
                .is_some()
        );
    }

    #[test]
    fn unknown_client_ids_are_not_tracked() {
        let t = Throttle::new(1, 1000);
        let t0 = Instant::now();
        assert_eq!(t.record_failure(ip("192.0.2.1"), None, t0), None);
        assert_eq!(t.by_client.windows.lock().unwrap().len(), 0);
    }

    #[test]
    fn ipv6_is_grouped_by_64() {
        let t = Throttle::new(10, 1);
        let t0 = Instant::now();
        t.record_failure(ip("2001:db8:1:2::1"), None, t0);
        assert!(t.address_blocked(ip("2001:db8:1:2:ffff::9"), t0).is_some());
        assert!(t.address_blocked(ip("2001:db8:1:3::1"), t0).is_none());
        t.record_failure(ip("::ffff:192.0.2.5"), None, t0);
        assert!(t.address_blocked(ip("192.0.2.5"), t0).is_some());
    }
}
