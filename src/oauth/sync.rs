//! Keeping replicas in step (and [`Authority::sync_loop`]): every change to clients, keys or revocations
//! bumps one marker record, `_credgate/oauth-changes`. Each sync tick reads
//! only that record; when its version moved, the registry, the key set and
//! the revocations are reloaded. A full reload also runs every
//! [`FULL_RELOAD_EVERY`] ticks, in case a replica died between its write and
//! its announcement. Steady state: one small read per interval, whatever the
//! number of clients.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Authority, jwt, keys};
use crate::store::{Store, StoreError};

pub(crate) const CHANGES_PATH: &str = "_credgate/oauth-changes";

/// Ticks between unconditional full reloads.
pub(crate) const FULL_RELOAD_EVERY: u64 = 12;

/// The change marker, and the version of it this replica has caught up with.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    seen: AtomicU64,
}

impl Changes {
    /// Tells other replicas something changed. Best effort: the write that
    /// matters already happened, and the periodic full reload covers a lost
    /// announcement.
    pub(crate) async fn announce(&self, store: &dyn Store) {
        let mut data = Map::new();
        let at = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        data.insert("changedAt".into(), json!(at));
        match crate::store::overwrite(store, CHANGES_PATH, data).await {
            // Our own change is already in memory: no need to reload for it,
            // unless someone else's change slipped in between.
            Ok(v) => {
                let _ = self
                    .seen
                    .compare_exchange(v - 1, v, Ordering::AcqRel, Ordering::Acquire);
            }
            Err(e) => tracing::warn!(error = %e, "cannot announce an oauth change"),
        }
    }

    /// Makes the next [`Changes::moved`] report a change (a reload failed).
    pub(crate) fn forget(&self) {
        self.seen.store(u64::MAX, Ordering::Release);
    }

    /// Whether the marker moved since the last call (and remembers it).
    pub(crate) async fn moved(&self, store: &dyn Store) -> Result<bool, StoreError> {
        let version = store.read(CHANGES_PATH).await?.map_or(0, |r| r.version);
        Ok(self.seen.swap(version, Ordering::AcqRel) != version)
    }
}

impl Authority {
    /// Background job: every `store.sync_interval_seconds`, picks up other
    /// replicas' changes to clients, keys and revocations. Returns when
    /// `shutdown` turns true or its sender is dropped.
    pub async fn sync_loop(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.sync_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        let mut last_early = Instant::now() - Duration::from_secs(60);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let full = tokio::select! {
                _ = tick.tick() => {
                    ticks += 1;
                    ticks.is_multiple_of(FULL_RELOAD_EVERY)
                }
                _ = self.sync_now.notified() => {
                    if last_early.elapsed() < Duration::from_secs(1) {
                        continue;
                    }
                    last_early = Instant::now();
                    false
                }
                r = shutdown.changed() => {
                    if r.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if let Err(e) = self.sync_once(full).await {
                tracing::warn!(error = %e, "oauth sync failed; retrying next interval");
            }
        }
    }

    /// One sync step: reload when the change marker moved (or `full`).
    pub(crate) async fn sync_once(&self, full: bool) -> Result<(), StoreError> {
        let moved = self.changes.moved(&*self.store).await?;
        if !(moved || full) {
            return Ok(());
        }
        let result = async {
            self.clients.reload().await?;
            if let Some(next) =
                keys::reload(&*self.store, &self.keys(), keys::Retention::of(&self.oauth)).await?
            {
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
            }
            self.revocations.reload(&*self.store, jwt::unix_now()).await
        }
        .await;
        if result.is_err() {
            // Retry the whole reload next tick.
            self.changes.forget();
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::testing::MemStore;

    #[tokio::test]
    async fn own_announcements_do_not_trigger_reloads_but_others_do() {
        let store = MemStore::new();
        let (a, b) = (Changes::default(), Changes::default());
        assert!(!a.moved(&store).await.unwrap());
        a.announce(&store).await;
        assert!(!a.moved(&store).await.unwrap());
        b.announce(&store).await;
        assert!(a.moved(&store).await.unwrap());
        assert!(!a.moved(&store).await.unwrap());
    }
}
