//! Test doubles for the oauth module: an in-memory [`Store`] with the same
//! version and check-and-set semantics as the real backends, and a ready
//! [`Authority`] on it (two routes: `/github` needing `mcp`, `/slack`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::audit::Audit;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::oauth::Authority;
use crate::store::{Cas, Plaintext, Record, Store, StoreError};

#[derive(Default)]
pub(crate) struct MemStore {
    records: Mutex<BTreeMap<String, Record>>,
    /// Number of reads, to prove the hot path does none.
    pub(crate) reads: AtomicUsize,
}

impl MemStore {
    pub(crate) fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn read(&self, path: &str) -> Result<Option<Record>, StoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(self.records.lock().unwrap().get(path).cloned())
    }

    async fn write(
        &self,
        path: &str,
        data: Map<String, Value>,
        metadata: BTreeMap<String, String>,
        cas: Cas,
    ) -> Result<u64, StoreError> {
        // Yield so concurrent callers in tests really interleave.
        tokio::task::yield_now().await;
        let mut records = self.records.lock().unwrap();
        let current = records.get(path).map(|r| r.version);
        match (cas, current) {
            (Cas::Absent, Some(_)) => return Err(StoreError::Conflict),
            (Cas::Version(v), c) if c != Some(v) => return Err(StoreError::Conflict),
            _ => {}
        }
        let version = current.unwrap_or(0) + 1;
        records.insert(
            path.to_owned(),
            Record {
                version,
                data,
                metadata,
                updated_at: "2026-01-01T00:00:00Z".into(),
            },
        );
        Ok(version)
    }

    async fn delete(&self, path: &str) -> Result<(), StoreError> {
        self.records.lock().unwrap().remove(path);
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let records = self.records.lock().unwrap();
        let lead = format!("{prefix}/");
        let mut names: Vec<String> = records
            .keys()
            .filter_map(|k| k.strip_prefix(&lead))
            .map(|rest| match rest.split_once('/') {
                Some((dir, _)) => format!("{dir}/"),
                None => rest.to_owned(),
            })
            .collect();
        names.dedup();
        Ok(names)
    }

    async fn encrypt(
        &self,
        keyring: &str,
        context: &str,
        plaintexts: &[&[u8]],
    ) -> Result<Vec<String>, StoreError> {
        Ok(plaintexts
            .iter()
            .map(|p| format!("sealed:{keyring}:{context}:{}", STANDARD.encode(p)))
            .collect())
    }

    async fn decrypt(
        &self,
        keyring: &str,
        context: &str,
        ciphertexts: &[&str],
    ) -> Result<Vec<Plaintext>, StoreError> {
        let lead = format!("sealed:{keyring}:{context}:");
        ciphertexts
            .iter()
            .map(|c| {
                let b = c.strip_prefix(&lead).ok_or(StoreError::Decrypt)?;
                Ok(Zeroizing::new(
                    STANDARD.decode(b).map_err(|_| StoreError::Decrypt)?,
                ))
            })
            .collect()
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

pub(crate) const PUBLIC: &str = "http://127.0.0.1:8080";
pub(crate) const GITHUB: &str = "http://127.0.0.1:8080/github";

pub(crate) fn config(extra: &str) -> Config {
    let text = format!(
        r#"
        [oauth]
        max_failures_per_client = 3
        max_failures_per_address = 5
        {extra}
        [[routes]]
        integration = "github"
        path_prefix = "/github"
        upstream = "http://127.0.0.1:1"
        required_scopes = ["mcp"]
        [[routes]]
        integration = "slack"
        path_prefix = "/slack"
        upstream = "http://127.0.0.1:1"
        "#
    );
    Config::from_toml_with_env(&text, Vec::new()).unwrap()
}

pub(crate) async fn authority_on(store: Arc<MemStore>, extra: &str) -> Authority {
    Authority::new(
        &config(extra),
        store,
        Arc::new(Metrics::new()),
        Arc::new(Audit::discard()),
    )
    .await
    .unwrap()
}

pub(crate) async fn authority() -> (Authority, Arc<MemStore>) {
    let store = Arc::new(MemStore::new());
    (authority_on(store.clone(), "").await, store)
}
