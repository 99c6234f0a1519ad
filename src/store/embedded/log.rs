//! The on-disk log: framed JSON entries, appended and fsynced one at a time.
//!
//! A frame is `"CGF1"` ‖ payload length (u32 LE) ‖ CRC-32 of (length ‖
//! payload) (u32 LE) ‖ payload (one JSON [`Entry`]). The first frame of a file
//! is always a [`Entry::Header`].
//!
//! A bad frame with no valid frame after it is a torn tail (a crash
//! mid-append, or a write still in flight): it is ignored here and cut off by
//! the next writer. A bad frame followed by a valid one is corruption.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::store::StoreError;

const MAGIC: [u8; 4] = *b"CGF1";
const FRAME_HEADER: usize = 12;
/// Larger frames are refused on write and treated as damage on read.
pub(super) const MAX_PAYLOAD: usize = 64 << 20;
/// Version of the entry format, in every header.
pub(super) const FORMAT: u32 = 1;

/// One whole operation. Only `Put` carries record contents.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum Entry {
    /// First entry of every file. `generation` grows with each compaction;
    /// `key_check` proves which master key made the store.
    Header {
        format: u32,
        generation: u64,
        key_check: String,
    },
    Put {
        path: String,
        version: u64,
        data: Map<String, Value>,
        metadata: BTreeMap<String, String>,
        updated_at: String,
    },
    Delete {
        path: String,
    },
    /// A keyring's data key, wrapped by the master key.
    Key {
        keyring: String,
        wrapped: String,
    },
}

/// An entry read back, with where its frame sits in the file.
pub(super) struct Frame {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) entry: Entry,
}

/// Frames one entry.
pub(super) fn encode(entry: &Entry) -> Result<Vec<u8>, StoreError> {
    let payload = serde_json::to_vec(entry)
        .map_err(|e| StoreError::Refused(format!("record does not serialize: {e}")))?;
    if payload.len() > MAX_PAYLOAD {
        return Err(StoreError::Refused(format!(
            "record too large ({} bytes, limit {MAX_PAYLOAD})",
            payload.len()
        )));
    }
    let len = (payload.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc(&len, &payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

fn crc(len: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
}

/// The payload of a valid frame at the start of `buf`, with the frame length.
fn frame_at(buf: &[u8]) -> Option<(&[u8], usize)> {
    if buf.len() < FRAME_HEADER || buf[..4] != MAGIC {
        return None;
    }
    let len_bytes = &buf[4..8];
    let len = u32::from_le_bytes(len_bytes.try_into().ok()?) as usize;
    let sum = u32::from_le_bytes(buf[8..12].try_into().ok()?);
    let payload = buf.get(FRAME_HEADER..FRAME_HEADER.checked_add(len)?)?;
    (len <= MAX_PAYLOAD && crc(len_bytes, payload) == sum).then_some((payload, FRAME_HEADER + len))
}

/// Parses the bytes of a file from offset `base`. Returns the frames and the
/// offset just past the last valid one (anything after it is a torn tail).
pub(super) fn parse(buf: &[u8], base: u64) -> Result<(Vec<Frame>, u64), StoreError> {
    if base == 0 && !buf.is_empty() && !MAGIC.starts_with(&buf[..buf.len().min(4)]) {
        return Err(StoreError::Corrupt("not a credgate store file".into()));
    }
    let mut frames = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let Some((payload, len)) = frame_at(&buf[at..]) else {
            let bad = base + at as u64;
            // A valid frame after the bad one means it is not a torn tail.
            if (at + 1..buf.len()).any(|i| frame_at(&buf[i..]).is_some()) {
                return Err(StoreError::Corrupt(format!(
                    "damaged entry at byte {bad} with valid entries after it"
                )));
            }
            tracing::debug!(offset = bad, "ignoring a torn tail in the store log");
            break;
        };
        let start = base + at as u64;
        let entry = serde_json::from_slice(payload).map_err(|e| {
            StoreError::Corrupt(format!(
                "entry at byte {start} is not a credgate entry: {e}"
            ))
        })?;
        at += len;
        frames.push(Frame {
            start,
            end: base + at as u64,
            entry,
        });
    }
    Ok((frames, base + at as u64))
}

/// Which file a path names right now; changes when compaction renames a new
/// file into place (the old inode stays held open, so it cannot be reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub(super) fn of(meta: &fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// An open log file and its identity.
pub(super) struct LogFile {
    pub(super) file: File,
    pub(super) id: FileId,
}

impl LogFile {
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| io_err("cannot open", path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| io_err("cannot stat", path, e))?;
        Ok(Self {
            file,
            id: FileId::of(&meta),
        })
    }

    /// Bytes from `from` to the end of the file.
    pub(super) fn read_from(&self, path: &Path, from: u64, to: u64) -> Result<Vec<u8>, StoreError> {
        let want = usize::try_from(to.saturating_sub(from))
            .map_err(|_| StoreError::Corrupt("store file too large".into()))?;
        let mut buf = vec![0u8; want];
        let mut got = 0;
        while got < want {
            match self.file.read_at(&mut buf[got..], from + got as u64) {
                Ok(0) => break, // shrank meanwhile: parse what we have
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err("cannot read", path, e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Writes `bytes` at `at` (cutting any torn tail first) and syncs. On
    /// failure the file is cut back to `at`, so it stays a valid log.
    pub(super) fn append(
        &self,
        path: &Path,
        at: u64,
        file_len: u64,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        let result = (|| {
            if file_len != at {
                self.file.set_len(at)?;
            }
            self.file.write_all_at(bytes, at)?;
            self.file.sync_data()
        })();
        result.map_err(|e| {
            // Best effort: an unacknowledged entry must not surface later.
            if self
                .file
                .set_len(at)
                .and_then(|()| self.file.sync_data())
                .is_err()
            {
                tracing::error!(path = %path.display(), "could not cut back a failed append");
            }
            io_err("cannot append to", path, e)
        })
    }
}

/// Makes a rename or a new file in `path`'s directory durable.
pub(super) fn sync_dir(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err("cannot sync directory", dir, e))
}

pub(super) fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delete(path: &str) -> Vec<u8> {
        encode(&Entry::Delete { path: path.into() }).unwrap()
    }

    #[test]
    fn frames_round_trip_and_report_their_bounds() {
        let mut buf = delete("a");
        buf.extend(delete("bb"));
        let (frames, end) = parse(&buf, 100).unwrap();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].start, 100);
        assert_eq!(frames[1].start, frames[0].end);
        assert_eq!(end, 100 + buf.len() as u64);
    }

    #[test]
    fn a_torn_tail_is_ignored_and_mid_file_damage_is_not() {
        let one = delete("a");
        let mut buf = one.clone();
        buf.extend_from_slice(&one[..one.len() - 3]);
        let (frames, end) = parse(&buf, 0).unwrap();
        assert_eq!((frames.len(), end), (1, one.len() as u64));

        let mut damaged = one.clone();
        damaged[FRAME_HEADER + 2] ^= 0x20;
        damaged.extend(one);
        assert!(matches!(parse(&damaged, 0), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn a_foreign_file_is_refused() {
        assert!(matches!(
            parse(b"[store]\n", 0),
            Err(StoreError::Corrupt(_))
        ));
        // A prefix of the magic is a torn first frame, not a foreign file.
        assert_eq!(parse(b"CG", 0).unwrap().1, 0);
    }
}
