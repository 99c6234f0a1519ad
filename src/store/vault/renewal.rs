//! The background task that keeps the Vault token alive: renews it before
//! it expires, or logs in again (AppRole, Kubernetes).
//!
//! When to act is a pure function of the token's lease ([`plan`]), so it is
//! tested without a clock; the task only sleeps and carries the plan out.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;

use super::auth::Lease;
use super::client::Conn;
use super::failure::Failure;

/// Renew (or log in again) once this share of the TTL has passed.
const RENEW_AT_NUMERATOR: u32 = 2;
const RENEW_AT_DENOMINATOR: u32 = 3;
/// Never plan sooner than this after obtaining a token.
const MIN_RENEW_DELAY: Duration = Duration::from_millis(500);
/// Longest wait between failed renewal or login attempts.
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(30);

/// What the renewal task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// `auth/token/renew-self`.
    Renew,
    /// A fresh login (AppRole, Kubernetes).
    Login,
    /// `auth/token/lookup-self`, to learn a given token's TTL.
    Lookup,
    /// Nothing ever: the token does not expire, or cannot be replaced.
    Done,
}

/// The delay after obtaining a token with `ttl` before renewing it.
pub(super) fn renew_delay(ttl: Duration) -> Duration {
    (ttl * RENEW_AT_NUMERATOR / RENEW_AT_DENOMINATOR).max(MIN_RENEW_DELAY)
}

/// What to do about the token, and how long from `now` to wait first.
pub(super) fn plan(lease: &Lease, can_login: bool, now: Instant) -> (Action, Duration) {
    if !lease.known {
        return if can_login {
            (Action::Login, Duration::ZERO)
        } else {
            (Action::Lookup, Duration::ZERO)
        };
    }
    if lease.ttl.is_zero() {
        return (Action::Done, Duration::ZERO);
    }
    let due = (lease.obtained + renew_delay(lease.ttl)).saturating_duration_since(now);
    match (lease.renewable, can_login) {
        (true, _) => (Action::Renew, due),
        (false, true) => (Action::Login, due),
        (false, false) => (Action::Done, Duration::ZERO),
    }
}

/// The wait after `failures` failed attempts in a row: 1 s, doubling, capped.
pub(super) fn failure_delay(failures: u32) -> Duration {
    Duration::from_secs(1)
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_FAILURE_DELAY)
}

/// Keeps the token alive until the store is dropped.
pub(super) async fn keep_alive(conn: Weak<Conn>) {
    let mut failures: u32 = 0;
    loop {
        let (action, wait, generation) = {
            let Some(conn) = conn.upgrade() else { return };
            let session = conn.current();
            let (action, wait) = plan(&session.lease(), conn.auth.can_login(), Instant::now());
            (action, wait, session.generation)
        };
        if action == Action::Done {
            tracing::debug!("vault token needs no renewal");
            return;
        }
        let wait = if failures == 0 {
            wait
        } else {
            failure_delay(failures)
        };
        tokio::time::sleep(wait).await;
        let Some(conn) = conn.upgrade() else { return };
        match act(&conn, action, generation).await {
            Ok(()) => failures = 0,
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(
                    action = ?action,
                    method = conn.auth.name(),
                    error = %e.message(),
                    "vault token maintenance failed; will retry"
                );
            }
        }
    }
}

async fn act(conn: &Conn, action: Action, generation: u64) -> Result<(), Failure> {
    if conn.current().generation != generation {
        return Ok(()); // a re-login happened meanwhile: plan again
    }
    match action {
        Action::Done => Ok(()),
        Action::Login => conn.relogin(generation).await.map(drop),
        Action::Lookup => {
            let lease = lookup(conn).await?;
            if !lease.renewable && !lease.ttl.is_zero() {
                tracing::warn!(
                    ttl_secs = lease.ttl.as_secs(),
                    "the vault token is not renewable; credgate stops working when it expires"
                );
            }
            Ok(())
        }
        Action::Renew => match renew(conn).await {
            Ok(lease) => {
                conn.stats.renewals.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(ttl_secs = lease.ttl.as_secs(), "renewed the vault token");
                if lease.near_max_ttl() {
                    if conn.auth.can_login() {
                        return conn.relogin(generation).await.map(drop);
                    }
                    tracing::warn!(
                        ttl_secs = lease.ttl.as_secs(),
                        "the vault token is near its max TTL and cannot be replaced"
                    );
                }
                Ok(())
            }
            Err(e) if conn.auth.can_login() => {
                tracing::info!(error = %e.message(), "token renewal failed; logging in again");
                conn.relogin(generation).await.map(drop)
            }
            Err(e) => Err(e),
        },
    }
}

/// `auth/token/lookup-self`: records the current token's TTL. Raw, because
/// vaultrs's reply type requires fields some tokens lack (`issue_time` is
/// absent for a root token made by `operator init`).
pub(super) async fn lookup(conn: &Conn) -> Result<Lease, Failure> {
    let session = conn.current();
    let reply = conn
        .request(Method::GET, "auth/token/lookup-self", None)
        .await?;
    let data = reply.data();
    let ttl = data["ttl"]
        .as_u64()
        .ok_or_else(|| Failure::Malformed("token lookup without ttl".into()))?;
    let lease = Lease::issued(
        Duration::from_secs(ttl),
        data["renewable"].as_bool().unwrap_or(false),
    );
    session.set_lease(lease);
    Ok(lease)
}

/// `auth/token/renew-self` for the current session; updates its lease.
async fn renew(conn: &Conn) -> Result<Lease, Failure> {
    let session = conn.current();
    let reply = conn
        .request(Method::POST, "auth/token/renew-self", Some(&json!({})))
        .await?;
    let auth = &reply.body["auth"];
    let ttl = auth["lease_duration"]
        .as_u64()
        .ok_or_else(|| Failure::Malformed("token renewal without lease_duration".into()))?;
    let renewed = session.lease().renewed(Duration::from_secs(ttl));
    let lease = Lease {
        renewable: auth["renewable"].as_bool().unwrap_or(renewed.renewable),
        ..renewed
    };
    session.set_lease(lease);
    Ok(lease)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(ttl: u64, renewable: bool, at: Instant) -> Lease {
        Lease {
            obtained: at,
            ..Lease::issued(Duration::from_secs(ttl), renewable)
        }
    }

    #[test]
    fn renews_at_two_thirds_of_the_ttl() {
        let t0 = Instant::now();
        let l = lease(30, true, t0);
        assert_eq!(
            plan(&l, false, t0),
            (Action::Renew, Duration::from_secs(20))
        );
        assert_eq!(
            plan(&l, true, t0 + Duration::from_secs(5)),
            (Action::Renew, Duration::from_secs(15))
        );
        // Overdue: act at once.
        assert_eq!(
            plan(&l, false, t0 + Duration::from_secs(40)),
            (Action::Renew, Duration::ZERO)
        );
        assert_eq!(renew_delay(Duration::from_millis(300)), MIN_RENEW_DELAY);
    }

    #[test]
    fn non_renewable_tokens_are_replaced_by_login_when_possible() {
        let t0 = Instant::now();
        let l = lease(9, false, t0);
        assert_eq!(plan(&l, true, t0), (Action::Login, Duration::from_secs(6)));
        assert_eq!(plan(&l, false, t0).0, Action::Done);
    }

    #[test]
    fn root_tokens_need_nothing_and_unknown_leases_are_learned_first() {
        let t0 = Instant::now();
        assert_eq!(plan(&lease(0, false, t0), false, t0).0, Action::Done);
        assert_eq!(plan(&lease(0, true, t0), true, t0).0, Action::Done);
        assert_eq!(
            plan(&Lease::unknown(), false, t0),
            (Action::Lookup, Duration::ZERO)
        );
        assert_eq!(
            plan(&Lease::unknown(), true, t0),
            (Action::Login, Duration::ZERO)
        );
    }

    #[test]
    fn failed_attempts_back_off_up_to_a_cap() {
        assert_eq!(failure_delay(1), Duration::from_secs(1));
        assert_eq!(failure_delay(2), Duration::from_secs(2));
        assert_eq!(failure_delay(5), Duration::from_secs(16));
        assert_eq!(failure_delay(6), MAX_FAILURE_DELAY);
        assert_eq!(failure_delay(99), MAX_FAILURE_DELAY);
    }
}
