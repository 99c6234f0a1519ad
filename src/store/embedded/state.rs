//! The log replayed into memory: records, unwrapped data keys, and how far
//! into which file the replay has got.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::crypto::{self, KeyBytes};
use super::log::{self, Entry, Frame, LogFile, io_err};
use super::sibling;
use crate::store::{Cas, Record, StoreError};

/// The log replayed into memory, and how far it has been read.
pub(super) struct State {
    pub(super) log: Arc<LogFile>,
    pub(super) generation: u64,
    /// End of the last applied frame.
    pub(super) offset: u64,
    pub(super) key_check: String,
    pub(super) records: BTreeMap<String, Live>,
    pub(super) keys: HashMap<String, DataKey>,
    /// Bytes of the frames compaction would keep.
    pub(super) live_bytes: u64,
}

pub(super) struct Live {
    pub(super) record: Record,
    pub(super) frame_len: u64,
}

pub(super) struct DataKey {
    pub(super) key: KeyBytes,
    pub(super) wrapped: String,
}

/// Under the store lock: writes the header into a new (or torn-at-birth)
/// file, drops a stale compaction file, then replays the log.
pub(super) fn init_and_load(path: &Path, master: &KeyBytes) -> Result<State, StoreError> {
    let log = LogFile::open(path)?;
    let len = file_len(&log, path)?;
    let (frames, _) = log::parse(&log.read_from(path, 0, len)?, 0)?;
    if frames.is_empty() {
        let header = log::encode(&Entry::Header {
            format: log::FORMAT,
            generation: 1,
            key_check: crypto::key_check(master)?,
        })?;
        log.append(path, 0, len, &header)?;
        log::sync_dir(path)?;
    }
    let _ = fs::remove_file(sibling(path, ".compact"));
    load(path, master)
}

/// Replays the whole file at `path`.
pub(super) fn load(path: &Path, master: &KeyBytes) -> Result<State, StoreError> {
    let log = LogFile::open(path)?;
    let len = file_len(&log, path)?;
    let (frames, _) = log::parse(&log.read_from(path, 0, len)?, 0)?;
    let mut frames = frames.into_iter();
    let Some(Frame {
        entry:
            Entry::Header {
                format,
                generation,
                key_check,
            },
        end,
        ..
    }) = frames.next()
    else {
        return Err(StoreError::Corrupt(
            "store file does not start with a header".into(),
        ));
    };
    if format != log::FORMAT {
        return Err(StoreError::Corrupt(format!(
            "unsupported store format {format}"
        )));
    }
    crypto::verify_key_check(master, &key_check)?;
    let mut state = State {
        log: Arc::new(log),
        generation,
        offset: end,
        key_check,
        records: BTreeMap::new(),
        keys: HashMap::new(),
        live_bytes: end,
    };
    for frame in frames {
        state.apply(frame, master)?;
    }
    Ok(state)
}

fn file_len(log: &LogFile, path: &Path) -> Result<u64, StoreError> {
    Ok(log
        .file
        .metadata()
        .map_err(|e| io_err("cannot stat", path, e))?
        .len())
}

impl State {
    /// Applies one frame that starts at `self.offset`.
    pub(super) fn apply(&mut self, frame: Frame, master: &KeyBytes) -> Result<(), StoreError> {
        debug_assert_eq!(frame.start, self.offset);
        let len = frame.end - frame.start;
        match frame.entry {
            Entry::Header { .. } => {
                return Err(StoreError::Corrupt(format!(
                    "header entry in the middle of the log at byte {}",
                    frame.start
                )));
            }
            Entry::Put {
                path,
                version,
                data,
                metadata,
                updated_at,
            } => {
                let record = Record {
                    version,
                    data,
                    metadata,
                    updated_at,
                };
                let live = Live {
                    record,
                    frame_len: len,
                };
                self.live_bytes += len;
                if let Some(old) = self.records.insert(path, live) {
                    self.live_bytes -= old.frame_len;
                }
            }
            Entry::Delete { path } => {
                if let Some(old) = self.records.remove(&path) {
                    self.live_bytes -= old.frame_len;
                }
            }
            Entry::Key { keyring, wrapped } => {
                if self.keys.contains_key(&keyring) {
                    // Writers check under the lock, so this is not ours; the
                    // first key is the one ciphertexts were made with.
                    tracing::warn!(keyring, "ignoring a second data key for a keyring");
                } else {
                    let key = crypto::unwrap_data_key(master, &keyring, &wrapped)?;
                    self.live_bytes += len;
                    self.keys.insert(keyring, DataKey { key, wrapped });
                }
            }
        }
        self.offset = frame.end;
        Ok(())
    }

    /// Whether `cas` holds; the version the write would create.
    pub(super) fn next_version(&self, path: &str, cas: Cas) -> Result<u64, StoreError> {
        let current = self.records.get(path).map(|l| l.record.version);
        let ok = match cas {
            Cas::Any => true,
            // Version 0 is Vault's spelling of "absent".
            Cas::Absent | Cas::Version(0) => current.is_none(),
            Cas::Version(n) => current == Some(n),
        };
        if ok {
            Ok(current.unwrap_or(0) + 1)
        } else {
            Err(StoreError::Conflict)
        }
    }

    /// The entries of a compacted log: a header one generation on, the data
    /// keys, then the current version of each record.
    pub(super) fn compacted(&self) -> (Entry, Vec<Entry>) {
        let header = Entry::Header {
            format: log::FORMAT,
            generation: self.generation + 1,
            key_check: self.key_check.clone(),
        };
        let keys = self.keys.iter().map(|(keyring, k)| Entry::Key {
            keyring: keyring.clone(),
            wrapped: k.wrapped.clone(),
        });
        let records = self.records.iter().map(|(path, l)| Entry::Put {
            path: path.clone(),
            version: l.record.version,
            data: l.record.data.clone(),
            metadata: l.record.metadata.clone(),
            updated_at: l.record.updated_at.clone(),
        });
        (header, keys.chain(records).collect())
    }
}
