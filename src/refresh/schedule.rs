//! Scheduled refresh (README.md, "Scheduled refresh"): a tick every
//! `refresh.interval_seconds` (a `tokio::time::interval`) refreshes the credentials with `autoRefresh`
//! that expire within `refresh.before_seconds`.
//!
//! A tick costs what is due, not what is stored: credentials sit in an
//! in-memory index ordered by the time their refresh is due. The index is
//! filled by one scan of the store at start, kept current by this process's
//! own writes and refreshes, and rescanned every [`RESCAN_EVERY`] to pick up
//! other replicas' writes (a missed entry only means another replica, or the
//! expiry path, refreshes it).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Trigger;
use crate::credentials::{Credentials, record_path};
use crate::error::ProxyError;
use crate::store::{INTERNAL_PREFIX, Store, StoreError};

/// Full rescans of the store, for writes made by other replicas.
pub const RESCAN_EVERY: Duration = Duration::from_secs(600);
/// Backoff after a failed refresh: doubling from this, capped at [`MAX_BACKOFF`].
const FIRST_BACKOFF_SECS: f64 = 30.0;
const MAX_BACKOFF_SECS: f64 = 3600.0;

type Key = (Arc<str>, Arc<str>);

/// Credentials ordered by when their refresh is due (unix seconds).
#[derive(Default)]
pub struct DueIndex {
    inner: Mutex<Index>,
}

#[derive(Default)]
struct Index {
    by_time: BTreeSet<(i64, Key)>,
    by_key: HashMap<Key, i64>,
    failures: HashMap<Key, u32>,
}

impl DueIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records (or, with `due` None, forgets) when a credential needs refreshing.
    pub fn set(&self, tenant: &str, integration: &str, due: Option<i64>) {
        let key: Key = (tenant.into(), integration.into());
        let mut ix = self.lock();
        if let Some(old) = ix.by_key.remove(&key) {
            ix.by_time.remove(&(old, key.clone()));
        }
        if let Some(due) = due {
            ix.by_time.insert((due, key.clone()));
            ix.by_key.insert(key, due);
        }
    }

    /// Notes a credential written with this expiry and autoRefresh flag.
    pub fn note(
        &self,
        tenant: &str,
        integration: &str,
        expires_at: Option<OffsetDateTime>,
        auto_refresh: bool,
        before_secs: i64,
    ) {
        let due = expires_at
            .filter(|_| auto_refresh)
            .map(|e| e.unix_timestamp() - before_secs);
        self.set(tenant, integration, due);
        self.lock()
            .failures
            .remove(&(tenant.into(), integration.into()));
    }

    /// Removes and returns every entry due at `now`.
    fn take_due(&self, now: i64) -> Vec<Key> {
        let mut ix = self.lock();
        let rest = ix
            .by_time
            .split_off(&(now + 1, (Arc::from(""), Arc::from(""))));
        let due = std::mem::replace(&mut ix.by_time, rest);
        due.into_iter()
            .map(|(_, k)| {
                ix.by_key.remove(&k);
                k
            })
            .collect()
    }

    /// Schedules a retry with exponential backoff and ±50 % jitter.
    fn backoff(&self, key: &Key, now: i64, jitter: f64) {
        let attempts = {
            let mut ix = self.lock();
            let n = ix.failures.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        let delay = backoff_secs(attempts, jitter);
        self.set(&key.0, &key.1, Some(now + delay as i64));
    }

    pub fn len(&self) -> usize {
        self.lock().by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Delay before retry number `attempts` (1-based); `jitter` in [0, 1).
pub fn backoff_secs(attempts: u32, jitter: f64) -> f64 {
    let base = (FIRST_BACKOFF_SECS * 2f64.powi(attempts.saturating_sub(1).min(20) as i32))
        .min(MAX_BACKOFF_SECS);
    base * (0.5 + jitter)
}

fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() % 10_000) as f64 / 10_000.0
}

/// Reads every credential record's expiry into the index (no decryption).
pub async fn scan(
    store: &dyn Store,
    index: &DueIndex,
    before_secs: i64,
) -> Result<usize, StoreError> {
    let mut n = 0;
    for tenant in store.list("").await? {
        let Some(tenant) = tenant.strip_suffix('/') else {
            continue;
        };
        if tenant.starts_with('_') || tenant == INTERNAL_PREFIX {
            continue;
        }
        for integration in store.list(tenant).await? {
            if integration.ends_with('/') {
                continue;
            }
            let Some(r) = store.read(&record_path(tenant, &integration)).await? else {
                continue;
            };
            let expires_at = r
                .data
                .get("expiresAt")
                .and_then(Value::as_str)
                .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok());
            let auto = r.metadata.get("autoRefresh").map(String::as_str) == Some("true")
                && r.metadata.get("status").map(String::as_str) != Some("reauthorization_required");
            index.note(tenant, &integration, expires_at, auto, before_secs);
            n += 1;
        }
    }
    Ok(n)
}

/// One tick: refresh what is due, at most `concurrency` at a time.
pub async fn tick(credentials: &Arc<Credentials>, concurrency: usize) -> usize {
    let index = credentials.refresher().due();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let due = index.take_due(now);
    let count = due.len();
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for key in due {
        let credentials = credentials.clone();
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let result = credentials
                .refresh(&key.0, &key.1, None, Trigger::Scheduled)
                .await;
            (key, result)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let Ok((key, result)) = joined else { continue };
        match result {
            // The refresher re-noted the new expiry on success.
            Ok(_) => {}
            Err(
                e @ (ProxyError::ReauthorizationRequired { .. }
                | ProxyError::IntegrationNotConnected { .. }),
            ) => {
                tracing::info!(tenant = %key.0, integration = %key.1, "scheduled refresh stopped: {e}");
                index.set(&key.0, &key.1, None);
            }
            Err(_) => index.backoff(&key, now, jitter()),
        }
    }
    count
}

/// The first scan of the store, before the ticks start; a failure is logged
/// and retried at the next rescan.
pub async fn load(credentials: &Credentials, before_secs: i64) {
    let store = credentials.store().clone();
    match scan(store.as_ref(), credentials.refresher().due(), before_secs).await {
        Ok(n) => tracing::info!(credentials = n, "refresh schedule loaded"),
        Err(e) => {
            tracing::warn!(error = %e, "refresh schedule scan failed; retrying at the next rescan")
        }
    }
}

/// Ticks every `interval` (the first one `interval` from now) and rescans
/// the store every [`RESCAN_EVERY`]; runs until dropped. A slow tick delays
/// the next rather than overlapping it.
pub async fn run(credentials: Arc<Credentials>, interval: Duration) {
    let interval = interval.max(Duration::from_secs(1));
    let ticks_per_rescan = (RESCAN_EVERY.as_secs() / interval.as_secs()).max(1);
    let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticks = 0u64;
    loop {
        timer.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(ticks_per_rescan) {
            let store = credentials.store().clone();
            if let Err(e) = scan(
                store.as_ref(),
                credentials.refresher().due(),
                // Live: a SIGHUP may have changed it.
                credentials.refresher().before_secs(),
            )
            .await
            {
                tracing::warn!(error = %e, "refresh schedule rescan failed");
            }
        }
        // `refresh.concurrency` as last (re)loaded.
        let n = tick(&credentials, credentials.refresher().concurrency()).await;
        if n > 0 {
            tracing::debug!(refreshed = n, "refresh tick");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_in_order_and_once() {
        let ix = DueIndex::default();
        ix.set("a", "gh", Some(100));
        ix.set("b", "gh", Some(50));
        ix.set("c", "gh", Some(200));
        ix.set("a", "gh", Some(150)); // moved
        let due = ix.take_due(150);
        let names: Vec<&str> = due.iter().map(|k| &*k.0).collect();
        assert_eq!(names, ["b", "a"]);
        assert!(ix.take_due(150).is_empty());
        assert_eq!(ix.len(), 1);
    }

    #[test]
    fn note_respects_auto_refresh() {
        let ix = DueIndex::default();
        let exp = OffsetDateTime::from_unix_timestamp(1000).unwrap();
        ix.note("t", "i", Some(exp), false, 300);
        assert!(ix.is_empty());
        ix.note("t", "i", Some(exp), true, 300);
        assert_eq!(ix.take_due(699).len(), 0);
        assert_eq!(ix.take_due(700).len(), 1);
        ix.note("t", "i", None, true, 300);
        assert!(ix.is_empty());
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps() {
        assert_eq!(backoff_secs(1, 0.5), 30.0);
        assert_eq!(backoff_secs(2, 0.5), 60.0);
        assert_eq!(backoff_secs(3, 0.0), 60.0);
        assert_eq!(backoff_secs(30, 0.5), 3600.0);
        assert!(backoff_secs(30, 0.999) < 5400.0);
    }

    #[test]
    fn backoff_reschedules_after_now() {
        let ix = DueIndex::default();
        let key: Key = ("t".into(), "i".into());
        ix.backoff(&key, 1000, 0.5);
        assert!(ix.take_due(1029).is_empty());
        assert_eq!(ix.take_due(1030).len(), 1);
        ix.backoff(&key, 1000, 0.5);
        assert!(ix.take_due(1059).is_empty());
    }
}
