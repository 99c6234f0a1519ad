//! The log replayed into a compact index: where the latest version of each
//! record sits in the file (its contents stay on disk and are read on
//! demand), the unwrapped data keys, and how far into which file the replay
//! has got.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufWriter, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;

use super::crypto::{self, KeyBytes};
use super::log::{self, Entry, Loc, LogFile, io_err};
use super::sibling;
use crate::store::{Cas, Record, StoreError};

/// The log replayed into an index, and how far it has been read.
pub(super) struct State {
    pub(super) log: Arc<LogFile>,
    pub(super) generation: u64,
    /// End of the last applied frame.
    pub(super) offset: u64,
    pub(super) key_check: String,
    /// Path → the frame of its current version.
    pub(super) records: BTreeMap<Box<str>, Slot>,
    pub(super) keys: HashMap<Box<str>, DataKey>,
    /// Bytes of the frames compaction would keep.
    pub(super) live_bytes: u64,
}

/// Where a record's current version is, and which version it is (for
/// check-and-set without reading the file).
#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) loc: Loc,
    pub(super) version: u64,
}

pub(super) struct DataKey {
    pub(super) key: KeyBytes,
    /// The `Key` entry that holds it wrapped (copied by compaction).
    pub(super) loc: Loc,
}

/// What the index keeps of one entry: no record contents.
pub(super) enum Op {
    Header {
        format: u32,
        generation: u64,
        key_check: String,
    },
    Put {
        path: Box<str>,
        version: u64,
    },
    Delete {
        path: Box<str>,
    },
    Key {
        keyring: Box<str>,
        wrapped: String,
    },
}

impl Op {
    pub(super) fn of(entry: Entry) -> Self {
        match entry {
            Entry::Header {
                format,
                generation,
                key_check,
            } => Op::Header {
                format,
                generation,
                key_check,
            },
            Entry::Put { path, version, .. } => Op::Put {
                path: path.into(),
                version,
            },
            Entry::Delete { path } => Op::Delete { path: path.into() },
            Entry::Key { keyring, wrapped } => Op::Key {
                keyring: keyring.into(),
                wrapped,
            },
        }
    }
}

/// The ops of the valid frames of `log` from `from` to `to`, with where each
/// frame sits; the whole entry is parsed (and so checked) but only its op kept.
pub(super) fn read_ops(
    log: &LogFile,
    path: &Path,
    from: u64,
    to: u64,
    mac: &ring::hmac::Key,
) -> Result<Vec<(Loc, Op)>, StoreError> {
    let mut ops = Vec::new();
    log::scan(log, path, from, to, |start, end, payload| {
        ops.push((
            loc(start, end),
            Op::of(log::decode(payload, start, mac, path)?),
        ));
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(ops)
}

fn loc(start: u64, end: u64) -> Loc {
    // Frames are at most 12 + MAX_PAYLOAD bytes: the length fits.
    Loc {
        at: start,
        len: u32::try_from(end - start).unwrap_or(u32::MAX),
    }
}

/// Under the store lock: writes the header into a new (or torn-at-birth)
/// file, migrates a format-1 file, drops a stale compaction file, then
/// replays the log.
pub(super) fn init_and_load(
    path: &Path,
    master: &KeyBytes,
    mac: &ring::hmac::Key,
) -> Result<State, StoreError> {
    let log = LogFile::open(path)?;
    let len = file_len(&log, path)?;
    let mut any = false;
    log::scan(&log, path, 0, len, |_, _, _| {
        any = true;
        Ok(ControlFlow::Break(()))
    })?;
    if !any {
        let header = log::encode(
            &Entry::Header {
                format: log::FORMAT,
                generation: 1,
                key_check: crypto::key_check(master)?,
            },
            mac,
        )?;
        log.append(path, 0, len, &header)?;
        log::sync_dir(path)?;
    } else {
        migrate_legacy(path, &log, len, master, mac)?;
    }
    let _ = fs::remove_file(sibling(path, ".compact"));
    load(path, master, mac)
}

/// Rewrites a format-1 store (entries without tags, written by credgate
/// before record authentication) as format 2: every entry, in order, tagged.
/// Only after the header's key check proves the caller holds the master key
/// that made the store. Returns whether it migrated.
fn migrate_legacy(
    path: &Path,
    log: &LogFile,
    len: u64,
    master: &KeyBytes,
    mac: &ring::hmac::Key,
) -> Result<bool, StoreError> {
    let mut first = None;
    log::scan(log, path, 0, len, |_, _, payload| {
        first = Some(payload.to_vec());
        Ok(ControlFlow::Break(()))
    })?;
    let Some(first) = first else {
        return Ok(false);
    };
    if log::decode(&first, 0, mac, path).is_ok() {
        return Ok(false);
    }
    let Ok(Entry::Header {
        format: log::LEGACY_FORMAT,
        generation,
        key_check,
    }) = log::decode_legacy(&first, 0)
    else {
        return Ok(false); // not format 1: load() says what is wrong
    };
    crypto::verify_key_check(master, &key_check)?;
    let tmp = sibling(path, ".migrate");
    let write_err = |e: std::io::Error| io_err("cannot write", &tmp, e);
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| io_err("cannot create", &tmp, e))?;
    let mut out = BufWriter::new(file);
    let header = Entry::Header {
        format: log::FORMAT,
        generation: generation + 1,
        key_check,
    };
    out.write_all(&log::encode(&header, mac)?)
        .map_err(write_err)?;
    let mut entries = 0u64;
    let copied = log::scan(log, path, 0, len, |start, _, payload| {
        if start == 0 {
            return Ok(ControlFlow::Continue(()));
        }
        let entry = log::decode_legacy(payload, start)?;
        if matches!(entry, Entry::Header { .. }) {
            return Err(StoreError::Corrupt(format!(
                "header entry in the middle of the log at byte {start}"
            )));
        }
        out.write_all(&log::encode(&entry, mac)?)
            .map_err(write_err)?;
        entries += 1;
        Ok(ControlFlow::Continue(()))
    });
    let done = copied.and_then(|_| {
        let file = out.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.sync_all()
            .map_err(|e| io_err("cannot sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| io_err("cannot rename", &tmp, e))?;
        log::sync_dir(path)
    });
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    tracing::warn!(path = %path.display(), entries,
        "migrated the store to authenticated entries (format 2); older credgate versions cannot read it");
    Ok(true)
}

/// Fails with the wrong-master-key error when `payload` (a tagged header)
/// holds a key check that `master` does not open.
fn wrong_key_check(payload: &[u8], master: &KeyBytes) -> Result<(), StoreError> {
    let json = &payload[..payload.len().saturating_sub(32)];
    match log::decode_legacy(json, 0) {
        Ok(Entry::Header { key_check, .. }) => crypto::verify_key_check(master, &key_check),
        _ => Ok(()),
    }
}

/// Replays the whole file at `path`, a chunk at a time.
pub(super) fn load(
    path: &Path,
    master: &KeyBytes,
    mac: &ring::hmac::Key,
) -> Result<State, StoreError> {
    let log = Arc::new(LogFile::open(path)?);
    let len = file_len(&log, path)?;
    let mut state: Option<State> = None;
    log::scan(&log, path, 0, len, |start, end, payload| {
        let entry = match log::decode(payload, start, mac, path) {
            Ok(entry) => entry,
            Err(e) => {
                if start == 0 {
                    // Another master key fails the tag too: say that instead.
                    wrong_key_check(payload, master)?;
                }
                return Err(e);
            }
        };
        let op = Op::of(entry);
        match &mut state {
            Some(s) => s.apply(loc(start, end), op, master)?,
            None => state = Some(State::new(Arc::clone(&log), op, end, master)?),
        }
        Ok(ControlFlow::Continue(()))
    })?;
    state.ok_or_else(|| StoreError::Corrupt("store file does not start with a header".into()))
}

fn file_len(log: &LogFile, path: &Path) -> Result<u64, StoreError> {
    Ok(log
        .file
        .metadata()
        .map_err(|e| io_err("cannot stat", path, e))?
        .len())
}

impl State {
    /// The state of a file whose first frame, ending at `end`, is `header`.
    fn new(log: Arc<LogFile>, header: Op, end: u64, master: &KeyBytes) -> Result<Self, StoreError> {
        let Op::Header {
            format,
            generation,
            key_check,
        } = header
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
        Ok(State {
            log,
            generation,
            offset: end,
            key_check,
            records: BTreeMap::new(),
            keys: HashMap::new(),
            live_bytes: end,
        })
    }

    /// Applies the op of the frame at `at`, which starts at `self.offset`.
    pub(super) fn apply(&mut self, at: Loc, op: Op, master: &KeyBytes) -> Result<(), StoreError> {
        debug_assert_eq!(at.at, self.offset);
        let len = u64::from(at.len);
        match op {
            Op::Header { .. } => {
                return Err(StoreError::Corrupt(format!(
                    "header entry in the middle of the log at byte {}",
                    at.at
                )));
            }
            Op::Put { path, version } => {
                self.live_bytes += len;
                if let Some(old) = self.records.insert(path, Slot { loc: at, version }) {
                    self.live_bytes -= u64::from(old.loc.len);
                }
            }
            Op::Delete { path } => {
                if let Some(old) = self.records.remove(&path) {
                    self.live_bytes -= u64::from(old.loc.len);
                }
            }
            Op::Key { keyring, wrapped } => {
                if self.keys.contains_key(&keyring) {
                    // Writers check under the lock, so this is not ours; the
                    // first key is the one ciphertexts were made with.
                    tracing::warn!(%keyring, "ignoring a second data key for a keyring");
                } else {
                    let key = crypto::unwrap_data_key(master, &keyring, &wrapped)?;
                    self.live_bytes += len;
                    self.keys.insert(keyring, DataKey { key, loc: at });
                }
            }
        }
        self.offset = at.end();
        Ok(())
    }

    /// Whether `cas` holds; the version the write would create.
    pub(super) fn next_version(&self, path: &str, cas: Cas) -> Result<u64, StoreError> {
        let current = self.records.get(path).map(|s| s.version);
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

    /// What a compacted log holds: a header one generation on, then the
    /// frames of the data keys and of the current version of each record, in
    /// file order (to be copied as they are).
    pub(super) fn compacted(&self) -> (Entry, Vec<Loc>) {
        let header = Entry::Header {
            format: log::FORMAT,
            generation: self.generation + 1,
            key_check: self.key_check.clone(),
        };
        let mut frames: Vec<Loc> = (self.keys.values().map(|k| k.loc))
            .chain(self.records.values().map(|s| s.loc))
            .collect();
        frames.sort_unstable_by_key(|l| l.at);
        (header, frames)
    }
}

/// Reads the record `path` from the frame `slot` points at in `log`.
pub(super) fn read_record(
    log: &LogFile,
    file: &Path,
    path: &str,
    slot: Slot,
    mac: &ring::hmac::Key,
) -> Result<Record, StoreError> {
    match log.read_entry(file, slot.loc, mac)? {
        Entry::Put {
            path: p,
            version,
            data,
            metadata,
            updated_at,
        } if p == path && version == slot.version => Ok(Record {
            version,
            data,
            metadata,
            updated_at,
        }),
        _ => Err(StoreError::Corrupt(format!(
            "the index entry of {path:?} points at another entry (byte {})",
            slot.loc.at
        ))),
    }
}
