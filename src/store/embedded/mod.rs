//! The embedded store (the default backend): one append-only log file holding
//! versioned records and per-keyring data keys, shared safely by several
//! credgate processes. Memory holds only an index (path → where the current
//! version's frame sits in the log, and its version) and the unwrapped data
//! keys; a read takes the frame from the file (`pread`, through the page
//! cache) and checks its CRC again.
//!
//! Like Vault KV v2 + Transit, record `data` and `metadata` are stored as
//! given: callers put [`Store::encrypt`] ciphertexts in the secret fields and
//! leave the rest (expiry, scopes, metadata) readable. Data keys are stored
//! wrapped (AES-256-GCM) by the master key; ciphertexts are
//! `credgate:v1:` + base64(nonce ‖ AES-256-GCM ciphertext ‖ tag), with the
//! `context` (the record path) as associated data.
//!
//! Durability and sharing (`log.rs` has the frame format, `state.rs` the
//! replay into the index, `crypto.rs` the keys):
//! - every write is one framed entry, appended and `sync_data`ed before it is
//!   acknowledged; a crash mid-append leaves a torn tail that replay ignores
//!   and the next writer cuts off, so the store holds the old or the new state;
//! - writers hold an exclusive lock on `<path>.lock`, catch up on entries
//!   other processes appended, check CAS against that, append, then unlock;
//!   reads catch up first too (a `stat`, plus the new tail if any), so another
//!   process's acknowledged write is visible at once;
//! - when the log is well over the live data, a writer compacts it: the live
//!   frames, copied as they are, to `<path>.compact`, fsync, rename over the
//!   log, fsync the directory. The new file's header carries a higher
//!   generation; other processes notice the new inode and reload it (a read
//!   racing with that still has the old file open, whose frames never change).

mod crypto;
mod log;
mod state;
#[cfg(test)]
mod tests;

use secrecy::SecretString;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use super::{Cas, Plaintext, Record, Store, StoreError};
use crate::config::StoreConfig;
use crypto::KeyBytes;
use log::{Entry, FileId, Loc, LogFile, io_err};
use state::{Op, State};

/// Compact only once the log is at least this big...
const COMPACT_MIN_BYTES: u64 = 1 << 20;
/// ...and more than this many times the live data.
const COMPACT_RATIO: u64 = 2;

/// The embedded, file-backed [`Store`].
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

struct Inner {
    path: PathBuf,
    master: KeyBytes,
    /// Authenticates every log entry (derived from `master`).
    mac: ring::hmac::Key,
    /// The `<path>.lock` file; the mutex serializes this process's writers,
    /// the OS lock on the file serializes processes.
    writer: Mutex<File>,
    /// The replayed index; held only briefly, never across file I/O.
    state: Mutex<State>,
    compact_min_bytes: u64,
}

/// Where a caught-up state stands in its file.
struct Synced {
    log: Arc<LogFile>,
    /// End of the valid frames (= the state's offset).
    end: u64,
    /// File length; more than `end` when a torn tail is present.
    len: u64,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store at `config.path` with the master
    /// key `env_key` (`CREDGATE_MASTER_KEY`) when set, else the key file.
    pub fn open(config: &StoreConfig, env_key: Option<&SecretString>) -> Result<Self, StoreError> {
        let master = crypto::load_master_key(config, env_key)?;
        Self::open_inner(config, master, COMPACT_MIN_BYTES)
    }

    /// Opens the store with a given master key (tests, tools).
    pub fn open_with_master_key(config: &StoreConfig, key: [u8; 32]) -> Result<Self, StoreError> {
        Self::open_inner(config, Zeroizing::new(key), COMPACT_MIN_BYTES)
    }

    fn open_inner(
        config: &StoreConfig,
        master: KeyBytes,
        compact_min_bytes: u64,
    ) -> Result<Self, StoreError> {
        let path = config.path.clone();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| io_err("cannot create directory", dir, e))?;
        }
        let private = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(p)
                .map_err(|e| io_err("cannot open", p, e))
        };
        let lock_path = sibling(&path, ".lock");
        let lock = private(&lock_path)?;
        drop(private(&path)?);

        lock.lock()
            .map_err(|e| io_err("cannot lock", &lock_path, e))?;
        let mac = crypto::record_mac_key(&master);
        let state = state::init_and_load(&path, &master, &mac);
        if let Err(e) = lock.unlock() {
            tracing::warn!(error = %e, "cannot unlock the store lock file");
        }
        let state = state?;
        tracing::debug!(
            path = %path.display(),
            records = state.records.len(),
            generation = state.generation,
            "opened the embedded store"
        );
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                master,
                mac,
                writer: Mutex::new(lock),
                state: Mutex::new(state),
                compact_min_bytes,
            }),
        })
    }

    /// Runs blocking file work off the async workers.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Brings the state up to what is on disk: the new tail of the same file,
    /// or a full reload if the file was replaced (compaction) or shrank.
    fn refresh(&self) -> Result<Synced, StoreError> {
        loop {
            let (log, offset) = {
                let s = self.state();
                (Arc::clone(&s.log), s.offset)
            };
            let meta =
                fs::metadata(&self.path).map_err(|e| io_err("cannot stat", &self.path, e))?;
            let len = meta.len();
            if FileId::of(&meta) != log.id || len < offset {
                let fresh = state::load(&self.path, &self.master, &self.mac)?;
                self.install(&log, fresh);
                continue;
            }
            if len == offset {
                return Ok(Synced {
                    log,
                    end: offset,
                    len,
                });
            }
            let ops = state::read_ops(&log, &self.path, offset, len, &self.mac)?;
            let mut s = self.state();
            if !Arc::ptr_eq(&s.log, &log) {
                continue; // reloaded meanwhile: look again
            }
            for (at, op) in ops {
                // Another thread may have applied some of these already.
                if at.at >= s.offset {
                    s.apply(at, op, &self.master)?;
                }
            }
            return Ok(Synced {
                log,
                end: s.offset,
                len,
            });
        }
    }

    /// Replaces the state read from `stale` with `fresh`, unless another
    /// thread has already moved on to something at least as new.
    fn install(&self, stale: &Arc<LogFile>, fresh: State) {
        let mut s = self.state();
        let newer = if Arc::ptr_eq(&s.log, stale) {
            true
        } else if s.log.id == fresh.log.id {
            fresh.offset > s.offset
        } else {
            fresh.generation > s.generation
        };
        if newer {
            *s = fresh;
        }
    }

    /// Runs `f` holding this process's writer mutex and the cross-process
    /// file lock, on a caught-up state.
    fn locked<T>(&self, f: impl FnOnce(&Synced) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let lock = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let lock_path = sibling(&self.path, ".lock");
        lock.lock()
            .map_err(|e| io_err("cannot lock", &lock_path, e))?;
        let result = self.refresh().and_then(|synced| f(&synced));
        if let Err(e) = lock.unlock() {
            tracing::warn!(error = %e, "cannot unlock the store lock file");
        }
        result
    }

    /// Appends `entry` after the caught-up state (cutting a torn tail), syncs,
    /// and applies it. Call only inside [`Inner::locked`].
    fn append(&self, synced: &Synced, entry: Entry) -> Result<(), StoreError> {
        let bytes = log::encode(&entry, &self.mac)?;
        let op = Op::of(entry);
        synced
            .log
            .append(&self.path, synced.end, synced.len, &bytes)?;
        let mut s = self.state();
        // A concurrent reader in this process may have applied it already.
        if Arc::ptr_eq(&s.log, &synced.log) && s.offset == synced.end {
            let at = Loc {
                at: synced.end,
                // encode() refuses payloads over MAX_PAYLOAD: this fits.
                len: u32::try_from(bytes.len()).unwrap_or(u32::MAX),
            };
            s.apply(at, op, &self.master)?;
        }
        Ok(())
    }

    /// The index says where; the record itself comes from the file the
    /// index was built from (still readable through its handle if another
    /// process has compacted meanwhile).
    fn read(&self, path: &str) -> Result<Option<Record>, StoreError> {
        self.refresh()?;
        let (log, slot) = {
            let s = self.state();
            match s.records.get(path) {
                Some(slot) => (Arc::clone(&s.log), *slot),
                None => return Ok(None),
            }
        };
        state::read_record(&log, &self.path, path, slot, &self.mac).map(Some)
    }

    fn write(
        &self,
        path: &str,
        data: Map<String, Value>,
        metadata: BTreeMap<String, String>,
        cas: Cas,
    ) -> Result<u64, StoreError> {
        validate_path(path)?;
        let version = self.locked(|synced| {
            let version = self.state().next_version(path, cas)?;
            let entry = Entry::Put {
                path: path.to_owned(),
                version,
                data,
                metadata,
                updated_at: now_rfc3339(),
            };
            self.append(synced, entry)?;
            self.maybe_compact();
            Ok(version)
        })?;
        Ok(version)
    }

    fn delete(&self, path: &str) -> Result<(), StoreError> {
        self.locked(|synced| {
            if !self.state().records.contains_key(path) {
                return Ok(());
            }
            self.append(
                synced,
                Entry::Delete {
                    path: path.to_owned(),
                },
            )?;
            self.maybe_compact();
            Ok(())
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.refresh()?;
        let prefix = prefix.trim_end_matches('/');
        let dir = if prefix.is_empty() {
            String::new()
        } else {
            format!("{prefix}/")
        };
        let s = self.state();
        let names: BTreeSet<&str> = s
            .records
            .range::<str, _>((Bound::Included(dir.as_str()), Bound::Unbounded))
            .map_while(|(path, _)| path.strip_prefix(&dir))
            .map(|rest| match rest.find('/') {
                Some(i) => &rest[..=i],
                None => rest,
            })
            .collect();
        Ok(names.into_iter().map(str::to_owned).collect())
    }

    fn cached_key(&self, keyring: &str) -> Option<KeyBytes> {
        self.state().keys.get(keyring).map(|k| k.key.clone())
    }

    /// The keyring's data key, created (check-and-set under the lock) if no
    /// process has made one yet.
    fn key_for_encrypt(&self, keyring: &str) -> Result<KeyBytes, StoreError> {
        self.locked(|synced| {
            if let Some(key) = self.cached_key(keyring) {
                return Ok(key); // another process won the race: use theirs
            }
            let key = crypto::new_data_key()?;
            let wrapped = crypto::wrap_data_key(&self.master, keyring, &key)?;
            let entry = Entry::Key {
                keyring: keyring.to_owned(),
                wrapped,
            };
            self.append(synced, entry)?;
            Ok(key)
        })
    }

    /// The keyring's data key, after catching up; `Decrypt` if none exists.
    fn key_for_decrypt(&self, keyring: &str) -> Result<KeyBytes, StoreError> {
        self.refresh()?;
        self.cached_key(keyring).ok_or(StoreError::Decrypt)
    }

    fn health(&self) -> Result<(), StoreError> {
        self.refresh()?;
        let meta = fs::metadata(&self.path).map_err(|e| io_err("cannot stat", &self.path, e))?;
        if meta.permissions().readonly() {
            return Err(StoreError::Io(format!(
                "store file {} is read-only",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn maybe_compact(&self) {
        let due = {
            let s = self.state();
            s.offset > self.compact_min_bytes && s.offset > COMPACT_RATIO * s.live_bytes
        };
        if due && let Err(e) = self.compact() {
            // The write itself is acknowledged; the old log is still whole.
            tracing::warn!(error = %e, "store compaction failed; will retry on a later write");
        }
    }

    /// Copies the live frames into a new file and renames it over the log.
    /// Call only inside [`Inner::locked`] (so the frames cannot change).
    fn compact(&self) -> Result<(), StoreError> {
        let (log, (header, frames)) = {
            let s = self.state();
            (Arc::clone(&s.log), s.compacted())
        };
        let tmp = sibling(&self.path, ".compact");
        let written = (|| {
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| io_err("cannot create", &tmp, e))?;
            let mut out = BufWriter::new(file);
            out.write_all(&log::encode(&header, &self.mac)?)
                .map_err(|e| io_err("cannot write", &tmp, e))?;
            for at in &frames {
                let (bytes, _) = log.read_frame(&self.path, *at)?;
                out.write_all(&bytes)
                    .map_err(|e| io_err("cannot write", &tmp, e))?;
            }
            let file = out
                .into_inner()
                .map_err(|e| io_err("cannot write", &tmp, e.into_error()))?;
            file.sync_all()
                .map_err(|e| io_err("cannot sync", &tmp, e))?;
            fs::rename(&tmp, &self.path).map_err(|e| io_err("cannot rename", &tmp, e))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        log::sync_dir(&self.path)?;
        self.refresh()?;
        tracing::info!(path = %self.path.display(), frames = frames.len(), "compacted the store log");
        Ok(())
    }
}

/// Refuses paths that would break LIST: empty, or with empty segments.
fn validate_path(path: &str) -> Result<(), StoreError> {
    if path.split('/').any(str::is_empty) {
        return Err(StoreError::Refused(format!("invalid store path {path:?}")));
    }
    Ok(())
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

fn check_keyring(keyring: &str) -> Result<(), StoreError> {
    if keyring.is_empty() {
        return Err(StoreError::Refused("empty keyring name".into()));
    }
    Ok(())
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn read(&self, path: &str) -> Result<Option<Record>, StoreError> {
        let path = path.to_owned();
        self.blocking(move |inner| inner.read(&path)).await
    }

    async fn write(
        &self,
        path: &str,
        data: Map<String, Value>,
        metadata: BTreeMap<String, String>,
        cas: Cas,
    ) -> Result<u64, StoreError> {
        let path = path.to_owned();
        self.blocking(move |inner| inner.write(&path, data, metadata, cas))
            .await
    }

    async fn delete(&self, path: &str) -> Result<(), StoreError> {
        let path = path.to_owned();
        self.blocking(move |inner| inner.delete(&path)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.to_owned();
        self.blocking(move |inner| inner.list(&prefix)).await
    }

    async fn encrypt(
        &self,
        keyring: &str,
        context: &str,
        plaintexts: &[&[u8]],
    ) -> Result<Vec<String>, StoreError> {
        check_keyring(keyring)?;
        let key = match self.inner.cached_key(keyring) {
            Some(key) => key,
            None => {
                let keyring = keyring.to_owned();
                self.blocking(move |inner| inner.key_for_encrypt(&keyring))
                    .await?
            }
        };
        plaintexts
            .iter()
            .map(|p| crypto::seal_value(&key, context, p))
            .collect()
    }

    async fn decrypt(
        &self,
        keyring: &str,
        context: &str,
        ciphertexts: &[&str],
    ) -> Result<Vec<Plaintext>, StoreError> {
        let key = match self.inner.cached_key(keyring) {
            Some(key) => key,
            None => {
                let keyring = keyring.to_owned();
                self.blocking(move |inner| inner.key_for_decrypt(&keyring))
                    .await?
            }
        };
        ciphertexts
            .iter()
            .map(|c| crypto::open_value(&key, context, c))
            .collect()
    }

    async fn health(&self) -> Result<(), StoreError> {
        self.blocking(Inner::health).await
    }
}
