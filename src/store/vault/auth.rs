//! Vault authentication: the configured method, logins, and the background
//! task that renews the token before it expires (or logs in again).
//!
//! When to act is a pure function of the token's lease ([`plan`]), so it is
//! tested without a clock; the task only sleeps and carries the plan out.

use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use vaultrs::client::VaultClient;
use zeroize::Zeroizing;

use super::client::{Conn, Failure};
use crate::config::{VaultAuth, VaultConfig};
use crate::store::StoreError;

/// Renew (or log in again) once this share of the TTL has passed.
const RENEW_AT_NUMERATOR: u32 = 2;
const RENEW_AT_DENOMINATOR: u32 = 3;
/// Never plan sooner than this after obtaining a token.
const MIN_RENEW_DELAY: Duration = Duration::from_millis(500);
/// Longest wait between failed renewal or login attempts.
const MAX_FAILURE_DELAY: Duration = Duration::from_secs(30);

/// How credgate authenticates to Vault.
pub(super) enum Auth {
    /// A given token (`VAULT_TOKEN`); renewed, never replaced.
    Token,
    AppRole {
        mount: String,
        role_id_file: PathBuf,
        secret_id_file: PathBuf,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
}

impl Auth {
    pub(super) fn from_config(c: &VaultConfig) -> Result<Self, StoreError> {
        let missing = |what: &str| {
            StoreError::Refused(format!("vault auth {:?} needs {what}", c.auth).to_lowercase())
        };
        Ok(match c.auth {
            VaultAuth::Token => Auth::Token,
            VaultAuth::Approle => Auth::AppRole {
                mount: c.approle_mount.clone(),
                role_id_file: c
                    .role_id_file
                    .clone()
                    .ok_or_else(|| missing("role_id_file"))?,
                secret_id_file: c
                    .secret_id_file
                    .clone()
                    .ok_or_else(|| missing("secret_id_file"))?,
            },
            VaultAuth::Kubernetes => Auth::Kubernetes {
                mount: c.kubernetes_mount.clone(),
                role: c.role.clone().ok_or_else(|| missing("role"))?,
                jwt_file: c.jwt_file.clone(),
            },
        })
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            Auth::Token => "token",
            Auth::AppRole { .. } => "approle",
            Auth::Kubernetes { .. } => "kubernetes",
        }
    }

    pub(super) fn can_login(&self) -> bool {
        !matches!(self, Auth::Token)
    }

    /// One login with the `base` (token-less) client. Credential files are
    /// read every time: agents rotate secret ids and projected JWTs.
    pub(super) async fn login(
        &self,
        base: &VaultClient,
        timeout_ms: u64,
    ) -> Result<(String, Lease), Failure> {
        let vault = |e| Failure::from_vaultrs(e, timeout_ms);
        let info = match self {
            Auth::Token => return Err(Failure::Local("token auth cannot log in".into())),
            Auth::AppRole {
                mount,
                role_id_file,
                secret_id_file,
            } => {
                let role_id = read_secret_file(role_id_file).await?;
                let secret_id = read_secret_file(secret_id_file).await?;
                vaultrs::auth::approle::login(base, mount, &role_id, &secret_id)
                    .await
                    .map_err(vault)?
            }
            Auth::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = read_secret_file(jwt_file).await?;
                vaultrs::auth::kubernetes::login(base, mount, role, &jwt)
                    .await
                    .map_err(vault)?
            }
        };
        let ttl = Duration::from_secs(info.lease_duration);
        Ok((info.client_token, Lease::issued(ttl, info.renewable)))
    }
}

async fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, Failure> {
    let text = Zeroizing::new(
        tokio::fs::read_to_string(path)
            .await
            .map_err(|e| Failure::Local(format!("cannot read {}: {e}", path.display())))?,
    );
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Failure::Local(format!("{} is empty", path.display())));
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

/// What Vault told us about the current token.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    /// False until a login or lookup succeeded.
    pub(super) known: bool,
    /// Time to live from `obtained`; zero = never expires (e.g. root).
    pub(super) ttl: Duration,
    pub(super) renewable: bool,
    pub(super) obtained: Instant,
    /// The TTL at issue: a renewal granting far less means the token's max
    /// TTL is near, so a fresh login is due.
    pub(super) issued_ttl: Duration,
}

impl Lease {
    pub(super) fn unknown() -> Self {
        Lease {
            known: false,
            ttl: Duration::ZERO,
            renewable: false,
            obtained: Instant::now(),
            issued_ttl: Duration::ZERO,
        }
    }

    pub(super) fn issued(ttl: Duration, renewable: bool) -> Self {
        Lease {
            known: true,
            ttl,
            renewable,
            obtained: Instant::now(),
            issued_ttl: ttl,
        }
    }

    fn renewed(self, ttl: Duration) -> Self {
        Lease {
            ttl,
            obtained: Instant::now(),
            ..self
        }
    }

    /// Whether a renewal granted so little that renewing again is futile.
    fn near_max_ttl(&self) -> bool {
        self.ttl < self.issued_ttl / 3
    }
}

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

/// Counters for tests and logs.
#[derive(Debug, Default)]
pub(super) struct Stats {
    pub(super) logins: AtomicU64,
    pub(super) renewals: AtomicU64,
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

    #[test]
    fn a_short_renewal_means_the_max_ttl_is_near() {
        let l = Lease::issued(Duration::from_secs(3600), true);
        assert!(!l.renewed(Duration::from_secs(3600)).near_max_ttl());
        assert!(!l.renewed(Duration::from_secs(1300)).near_max_ttl());
        assert!(l.renewed(Duration::from_secs(1100)).near_max_ttl());
    }
}
