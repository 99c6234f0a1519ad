//! Refreshed pairs the store would not take: kept in memory, served in place
//! of the stored record, and written in the background until the write lands
//! or someone else's write supersedes them.
//!
//! After a refresh-token rotation the provider has consumed the old refresh
//! token: the new pair is the only way to refresh again. If the store write
//! fails (store down, repeated check-and-set conflicts), dropping the pair
//! would turn the next refresh into `invalid_grant`. So the pair stays here
//! for as long as the process lives, unless the stored record stops holding
//! the refresh token this pair replaced (an admin stored another credential,
//! or deleted it): then the stored record is the truth and the pair goes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::credentials::{self, Credential, Stored};
use crate::store::{Cas, Store};

const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

type Key = (String, String);

#[derive(Clone)]
struct Pending {
    fresh: Credential,
    /// The refresh token the store still holds, which `fresh` replaced.
    replaced: Option<SecretString>,
    generation: u64,
}

fn same(a: Option<&SecretString>, b: Option<&SecretString>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if a.expose_secret() == b.expose_secret())
}

/// The unpersisted pairs, by (tenant, integration).
#[derive(Default)]
pub struct Unpersisted {
    map: Arc<Mutex<HashMap<Key, Pending>>>,
    generation: AtomicU64,
}

impl Unpersisted {
    fn lock(
        map: &Mutex<HashMap<Key, Pending>>,
    ) -> std::sync::MutexGuard<'_, HashMap<Key, Pending>> {
        map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The record credgate should act on: the kept pair when `stored` still
    /// holds the refresh token that pair replaced, else `stored` itself.
    pub fn overlay(&self, tenant: &str, integration: &str, stored: Stored) -> Stored {
        let map = Self::lock(&self.map);
        if map.is_empty() {
            return stored;
        }
        match map.get(&(tenant.to_owned(), integration.to_owned())) {
            Some(p)
                if same(
                    stored.credential.refresh_token.as_ref(),
                    p.replaced.as_ref(),
                ) =>
            {
                Stored {
                    credential: p.fresh.clone(),
                    version: stored.version,
                    updated_at: stored.updated_at,
                }
            }
            _ => stored,
        }
    }

    /// The pair was written: nothing to keep any more.
    pub fn clear(&self, tenant: &str, integration: &str) {
        let mut map = Self::lock(&self.map);
        if !map.is_empty() {
            map.remove(&(tenant.to_owned(), integration.to_owned()));
        }
    }

    /// Keeps `fresh`, which replaced `base` (as credgate saw it), and starts
    /// writing it in the background.
    pub fn keep(
        &self,
        store: Arc<dyn Store>,
        tenant: &str,
        integration: &str,
        base: &Stored,
        fresh: Credential,
    ) {
        let key = (tenant.to_owned(), integration.to_owned());
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        {
            let mut map = Self::lock(&self.map);
            // `base` may itself be a kept pair (overlaid): the store still
            // holds what that one replaced.
            let replaced = match map.get(&key) {
                Some(p)
                    if same(
                        p.fresh.refresh_token.as_ref(),
                        base.credential.refresh_token.as_ref(),
                    ) =>
                {
                    p.replaced.clone()
                }
                _ => base.credential.refresh_token.clone(),
            };
            map.insert(
                key.clone(),
                Pending {
                    fresh,
                    replaced,
                    generation,
                },
            );
        }
        tokio::spawn(write_until_landed(self.map.clone(), store, key, generation));
    }
}

/// Retries the write with backoff until it lands, is superseded, or a newer
/// pair (another generation) took over.
async fn write_until_landed(
    map: Arc<Mutex<HashMap<Key, Pending>>>,
    store: Arc<dyn Store>,
    key: Key,
    generation: u64,
) {
    let (tenant, integration) = (key.0.as_str(), key.1.as_str());
    let mut delay = RETRY_FIRST;
    loop {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(RETRY_MAX);
        let Some(p) = Unpersisted::lock(&map)
            .get(&key)
            .filter(|p| p.generation == generation)
            .cloned()
        else {
            return;
        };
        let outcome = match credentials::load(store.as_ref(), tenant, integration).await {
            Err(e) => {
                tracing::debug!(tenant, integration, error = %e, "refreshed credential still not persisted");
                continue;
            }
            Ok(Some(rec)) if same(rec.credential.refresh_token.as_ref(), p.replaced.as_ref()) => {
                match credentials::save(
                    store.as_ref(),
                    tenant,
                    integration,
                    &p.fresh,
                    Cas::Version(rec.version),
                )
                .await
                {
                    Ok(_) => "persisted",
                    Err(e) => {
                        tracing::debug!(tenant, integration, error = %e, "refreshed credential still not persisted");
                        continue;
                    }
                }
            }
            Ok(_) => "superseded by another write",
        };
        let mut m = Unpersisted::lock(&map);
        if m.get(&key).is_some_and(|p| p.generation == generation) {
            m.remove(&key);
        }
        tracing::info!(
            tenant,
            integration,
            outcome,
            "kept refreshed credential settled"
        );
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Credential writes fail while `down` is set: the store outage that
    /// follows a provider's answer.
    type Outage = crate::refresh::tests::CredentialWritesFail;

    use crate::refresh::tests::pair;

    async fn current(store: &Arc<Outage>, kept: &Unpersisted) -> (String, String) {
        let s = credentials::load(store.as_ref(), "t1", "gh")
            .await
            .unwrap()
            .unwrap();
        let s = kept.overlay("t1", "gh", s);
        let c = s.credential;
        (
            c.access_token.expose_secret().to_owned(),
            c.refresh_token.unwrap().expose_secret().to_owned(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_pair_is_served_then_written_once_the_store_is_back() {
        let store = Arc::new(Outage::default());
        let v1 = credentials::save(store.as_ref(), "t1", "gh", &pair("a0", "r0"), Cas::Absent)
            .await
            .unwrap();
        let base = credentials::load(store.as_ref(), "t1", "gh")
            .await
            .unwrap()
            .unwrap();
        let kept = Unpersisted::default();
        store.down.store(true, Ordering::SeqCst);
        kept.keep(store.clone(), "t1", "gh", &base, pair("a1", "r1"));
        assert_eq!(current(&store, &kept).await, ("a1".into(), "r1".into()));
        // Still down after several retries: still served, nothing lost.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(current(&store, &kept).await, ("a1".into(), "r1".into()));
        store.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(RETRY_MAX + Duration::from_secs(1)).await;
        let stored = credentials::load(store.as_ref(), "t1", "gh")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.credential.refresh_token.unwrap().expose_secret(),
            "r1"
        );
        assert_eq!(stored.version, v1 + 1);
        assert!(
            Unpersisted::lock(&kept.map).is_empty(),
            "landed, so forgotten"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_admin_write_supersedes_a_kept_pair() {
        let store = Arc::new(Outage::default());
        credentials::save(store.as_ref(), "t1", "gh", &pair("a0", "r0"), Cas::Absent)
            .await
            .unwrap();
        let base = credentials::load(store.as_ref(), "t1", "gh")
            .await
            .unwrap()
            .unwrap();
        let kept = Unpersisted::default();
        store.down.store(true, Ordering::SeqCst);
        kept.keep(store.clone(), "t1", "gh", &base, pair("a1", "r1"));
        // An admin stores another credential (through a replica whose store works).
        store.down.store(false, Ordering::SeqCst);
        credentials::save(store.as_ref(), "t1", "gh", &pair("adm", "radm"), Cas::Any)
            .await
            .unwrap();
        assert_eq!(current(&store, &kept).await, ("adm".into(), "radm".into()));
        tokio::time::sleep(RETRY_MAX + Duration::from_secs(1)).await;
        assert_eq!(current(&store, &kept).await, ("adm".into(), "radm".into()));
        assert!(
            Unpersisted::lock(&kept.map).is_empty(),
            "superseded, so forgotten"
        );
    }
}
