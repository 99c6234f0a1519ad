//! The store: versioned records with check-and-set, plus per-keyring
//! encryption. Shaped after Vault KV v2 + Transit so both backends are thin:
//! `embedded` (the default, one local file) and `vault`.
//!
//! Paths are `/`-separated, e.g. `tenant-1/github` or `_credgate/clients/abc`.
//! Callers validate identifiers before building paths (see [`crate::ids`]).

pub mod embedded;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod memory;
pub mod vault;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use crate::config::{StoreBackend, StoreConfig};

/// Prefix of credgate's own records; no tenant id can start with `_`.
pub const INTERNAL_PREFIX: &str = "_credgate";

/// Keyring (Transit key name) for credgate's own secrets, e.g. signing keys.
pub const INTERNAL_KEYRING: &str = "_credgate";

/// Check-and-set condition for a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Write whatever is there (used only where losing a race is harmless).
    Any,
    /// Write only if the record does not exist (Vault `cas: 0`).
    Absent,
    /// Write only if the current version is this one.
    Version(u64),
}

/// One version of a record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Starts at 1 and grows by one per write (Vault KV v2 versions).
    pub version: u64,
    pub data: Map<String, Value>,
    /// Small string pairs (Vault `custom_metadata`).
    pub metadata: BTreeMap<String, String>,
    /// When this version was written (RFC 3339).
    pub updated_at: String,
}

/// Decrypted bytes, wiped on drop.
pub type Plaintext = Zeroizing<Vec<u8>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Check-and-set lost: someone else wrote first. Re-read and retry.
    #[error("check-and-set conflict")]
    Conflict,
    /// The backend cannot be reached or refuses service (retriable).
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A ciphertext did not decrypt: wrong key, wrong context, tampering.
    #[error("decryption failed")]
    Decrypt,
    /// Local I/O failed (disk full, read-only file system).
    #[error("store i/o error: {0}")]
    Io(String),
    /// Stored data is not what credgate wrote.
    #[error("store data corrupt: {0}")]
    Corrupt(String),
    /// The store refused the operation (permissions, bad request).
    #[error("store refused: {0}")]
    Refused(String),
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Label for metrics and `/readyz` (`embedded` or `vault`).
    fn backend(&self) -> &'static str;

    /// The current version of a record, `None` if absent or deleted.
    async fn read(&self, path: &str) -> Result<Option<Record>, StoreError>;

    /// Writes a new version if `cas` holds; returns the new version.
    async fn write(
        &self,
        path: &str,
        data: Map<String, Value>,
        metadata: BTreeMap<String, String>,
        cas: Cas,
    ) -> Result<u64, StoreError>;

    /// Removes a record and all its versions. Absent is not an error.
    async fn delete(&self, path: &str) -> Result<(), StoreError>;

    /// Names directly below `prefix` (no trailing `/` on `prefix`), like a
    /// Vault LIST: leaves as `name`, folders as `name/`. Sorted. Empty if none.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;

    /// Encrypts each plaintext under `keyring` (a tenant id, or
    /// [`INTERNAL_KEYRING`]), bound to `context` (the record path): a
    /// ciphertext only decrypts with the same keyring and context. The keyring's
    /// key is created on first use. One round trip for the whole batch.
    async fn encrypt(
        &self,
        keyring: &str,
        context: &str,
        plaintexts: &[&[u8]],
    ) -> Result<Vec<String>, StoreError>;

    /// Decrypts ciphertexts made by [`Store::encrypt`] with the same keyring
    /// and context. One round trip for the whole batch.
    async fn decrypt(
        &self,
        keyring: &str,
        context: &str,
        ciphertexts: &[&str],
    ) -> Result<Vec<Plaintext>, StoreError>;

    /// Whether the backend answers (for `/readyz`).
    async fn health(&self) -> Result<(), StoreError>;

    /// Re-encrypts a tenant's credential records under the newest version of
    /// its key (after a key rotation). Returns how many records changed.
    /// Backends without key versions have nothing to do.
    async fn rewrap_tenant(&self, tenant: &str) -> Result<usize, StoreError> {
        let _ = tenant;
        Err(StoreError::Refused(format!(
            "the {} store has no key versions to rewrap",
            self.backend()
        )))
    }
}

/// How many check-and-set conflicts [`overwrite`] rides out.
const OVERWRITE_ATTEMPTS: usize = 5;

/// Writes `data` over whatever is at `path`, still with check-and-set (KV
/// mounts with `cas_required` refuse any other write): reads the version,
/// writes on it, and starts again on a conflict. For records where the last
/// writer may win (revocations, the change marker).
pub async fn overwrite(
    store: &dyn Store,
    path: &str,
    data: Map<String, Value>,
) -> Result<u64, StoreError> {
    let mut attempt = 0;
    loop {
        let cas = match store.read(path).await? {
            Some(r) => Cas::Version(r.version),
            None => Cas::Absent,
        };
        match store.write(path, data.clone(), BTreeMap::new(), cas).await {
            Err(StoreError::Conflict) if attempt + 1 < OVERWRITE_ATTEMPTS => attempt += 1,
            other => return other,
        }
    }
}

/// Opens the configured backend with its secret from `secrets` (the master
/// key, or the Vault token).
pub async fn open(
    config: &StoreConfig,
    secrets: &crate::secrets::Secrets,
) -> Result<Arc<dyn Store>, StoreError> {
    match config.backend {
        StoreBackend::Embedded => Ok(Arc::new(embedded::EmbeddedStore::open(
            config,
            secrets.master_key(),
        )?)),
        StoreBackend::Vault => Ok(Arc::new(
            vault::VaultStore::open(&config.vault, secrets.vault_token()).await?,
        )),
    }
}

/// Wraps a backend to count and time every call
/// (`credgate_store_requests_total`, `credgate_store_request_duration_seconds`).
pub struct Instrumented {
    inner: Arc<dyn Store>,
    requests: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
}

impl Instrumented {
    pub fn new(inner: Arc<dyn Store>, metrics: &crate::metrics::Metrics) -> Self {
        Instrumented {
            inner,
            requests: metrics.store_requests_total.clone(),
            duration: metrics.store_request_duration_seconds.clone(),
        }
    }

    async fn observe<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let started = std::time::Instant::now();
        let result = fut.await;
        let backend = self.inner.backend();
        let outcome = match &result {
            Ok(_) => "ok",
            Err(StoreError::Conflict) => "conflict",
            Err(StoreError::Unavailable(_)) => "unavailable",
            Err(_) => "error",
        };
        self.requests
            .with_label_values(&[backend, op, outcome])
            .inc();
        self.duration
            .with_label_values(&[backend, op])
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

#[async_trait]
impl Store for Instrumented {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn read(&self, path: &str) -> Result<Option<Record>, StoreError> {
        self.observe("read", self.inner.read(path)).await
    }

    async fn write(
        &self,
        path: &str,
        data: Map<String, Value>,
        metadata: BTreeMap<String, String>,
        cas: Cas,
    ) -> Result<u64, StoreError> {
        self.observe("write", self.inner.write(path, data, metadata, cas))
            .await
    }

    async fn delete(&self, path: &str) -> Result<(), StoreError> {
        self.observe("delete", self.inner.delete(path)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.observe("list", self.inner.list(prefix)).await
    }

    async fn encrypt(
        &self,
        keyring: &str,
        context: &str,
        plaintexts: &[&[u8]],
    ) -> Result<Vec<String>, StoreError> {
        self.observe("encrypt", self.inner.encrypt(keyring, context, plaintexts))
            .await
    }

    async fn decrypt(
        &self,
        keyring: &str,
        context: &str,
        ciphertexts: &[&str],
    ) -> Result<Vec<Plaintext>, StoreError> {
        self.observe("decrypt", self.inner.decrypt(keyring, context, ciphertexts))
            .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.observe("health", self.inner.health()).await
    }

    async fn rewrap_tenant(&self, tenant: &str) -> Result<usize, StoreError> {
        self.observe("rewrap", self.inner.rewrap_tenant(tenant))
            .await
    }
}
