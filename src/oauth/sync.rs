//! Keeping replicas in step: every change to clients, keys or revocations
//! bumps one marker record, `_credgate/oauth-changes`. Each sync tick reads
//! only that record; when its version moved, the registry, the key set and
//! the revocations are reloaded. A full reload also runs every
//! [`FULL_RELOAD_EVERY`] ticks, in case a replica died between its write and
//! its announcement. Steady state: one small read per interval, whatever the
//! number of clients.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::{Cas, Store, StoreError};

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
        match store
            .write(CHANGES_PATH, data, BTreeMap::new(), Cas::Any)
            .await
        {
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
