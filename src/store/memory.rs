//! An in-memory [`Store`] for tests: the same versions, check-and-set,
//! one-level list and path rules as the real backends, held to the same
//! contract (tests/store/contract.rs). Compiled only for tests: the crate's
//! own (`cfg(test)`) and the integration tests, through the `testing` feature
//! that the dev-dependencies turn on. Never a backend: its ciphertexts are
//! the plaintext in base64 with a MAC under a fixed key, which binds them to
//! their keyring and context but hides nothing.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::{Cas, Plaintext, Record, Store, StoreError};

/// What every ciphertext starts with.
const PREFIX: &str = "sealed:v1:";

/// Bytes of random nonce ahead of the plaintext.
const NONCE_LEN: usize = 16;

/// The fixed MAC key (this store protects nothing).
const MAC_KEY: &[u8] = b"credgate in-memory test store";

#[derive(Default)]
pub struct MemStore {
    records: Mutex<BTreeMap<String, Record>>,
    /// Number of reads, to prove the hot path does none.
    pub reads: AtomicUsize,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }
}

fn mac_key() -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, MAC_KEY)
}

/// What the MAC covers: keyring, context, nonce and plaintext.
fn mac_input(keyring: &str, context: &str, sealed: &[u8]) -> Vec<u8> {
    let mut input = Vec::new();
    for part in [keyring.as_bytes(), context.as_bytes()] {
        input.extend_from_slice(&(part.len() as u64).to_be_bytes());
        input.extend_from_slice(part);
    }
    input.extend_from_slice(sealed);
    input
}

/// Refuses what the real backends refuse: empty path segments.
fn validate_path(path: &str) -> Result<(), StoreError> {
    if path.split('/').any(str::is_empty) {
        return Err(StoreError::Refused(format!("invalid store path {path:?}")));
    }
    Ok(())
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
        validate_path(path)?;
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
        let prefix = prefix.trim_end_matches('/');
        let lead = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let mut names: Vec<String> = records
            .keys()
            .filter_map(|k| k.strip_prefix(&lead))
            .map(|rest| match rest.split_once('/') {
                Some((dir, _)) => format!("{dir}/"),
                None => rest.to_owned(),
            })
            .collect();
        names.sort();
        names.dedup();
        Ok(names)
    }

    async fn encrypt(
        &self,
        keyring: &str,
        context: &str,
        plaintexts: &[&[u8]],
    ) -> Result<Vec<String>, StoreError> {
        if keyring.is_empty() {
            return Err(StoreError::Refused("empty keyring name".into()));
        }
        Ok(plaintexts
            .iter()
            .map(|p| {
                // A random nonce: the same plaintext twice seals differently.
                let mut sealed = uuid::Uuid::new_v4().as_bytes().to_vec(); // NONCE_LEN bytes
                sealed.extend_from_slice(p);
                let tag = ring::hmac::sign(&mac_key(), &mac_input(keyring, context, &sealed));
                format!(
                    "{PREFIX}{}:{}",
                    STANDARD.encode(&sealed),
                    STANDARD.encode(tag.as_ref())
                )
            })
            .collect())
    }

    async fn decrypt(
        &self,
        keyring: &str,
        context: &str,
        ciphertexts: &[&str],
    ) -> Result<Vec<Plaintext>, StoreError> {
        let key = mac_key();
        ciphertexts
            .iter()
            .map(|c| {
                let (sealed, mac) = c
                    .strip_prefix(PREFIX)
                    .and_then(|rest| rest.split_once(':'))
                    .ok_or(StoreError::Decrypt)?;
                let sealed = STANDARD.decode(sealed).map_err(|_| StoreError::Decrypt)?;
                let mac = STANDARD.decode(mac).map_err(|_| StoreError::Decrypt)?;
                ring::hmac::verify(&key, &mac_input(keyring, context, &sealed), &mac)
                    .map_err(|_| StoreError::Decrypt)?;
                let plain = sealed.get(NONCE_LEN..).ok_or(StoreError::Decrypt)?;
                Ok(Zeroizing::new(plain.to_vec()))
            })
            .collect()
    }

    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
