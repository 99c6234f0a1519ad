//! The on-disk log: framed JSON entries, appended and fsynced one at a time.
//!
//! A frame is `"CGF1"` ‖ payload length (u32 LE) ‖ CRC-32 of (length ‖
//! payload) (u32 LE) ‖ payload. The payload is one JSON [`Entry`] followed
//! by its HMAC-SHA256 tag, keyed by [`super::crypto::record_mac_key`] (format
//! 2); an entry whose tag does not verify was not written with the master
//! key and is refused, naming the file. Format 1 (no tag) is read only to
//! migrate it. The first frame of a file is always a [`Entry::Header`].
//!
//! A bad frame with no valid frame after it is a torn tail (a crash
//! mid-append, or a write still in flight): it is ignored here and cut off by
//! the next writer. A bad frame followed by a valid one is corruption.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::ops::ControlFlow;
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
pub(super) const FORMAT: u32 = 2;
/// The format before entries carried a tag: migrated on open.
pub(super) const LEGACY_FORMAT: u32 = 1;
/// HMAC-SHA256 tag at the end of every payload.
const TAG_LEN: usize = 32;

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

/// Where one frame sits in a file: the store's index points at the latest
/// record of each path this way, and reads it back on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Loc {
    pub(super) at: u64,
    /// Frame length, header included (at most 12 + [`MAX_PAYLOAD`]).
    pub(super) len: u32,
}

impl Loc {
    pub(super) fn end(self) -> u64 {
        self.at + u64::from(self.len)
    }
}

/// An entry read back, with where its frame sits in the file.
#[cfg(test)]
pub(super) struct Frame {
    pub(super) start: u64,
    pub(super) end: u64,
    pub(super) entry: Entry,
}

/// Frames one entry, with its tag.
pub(super) fn encode(entry: &Entry, mac: &ring::hmac::Key) -> Result<Vec<u8>, StoreError> {
    let mut payload = serde_json::to_vec(entry)
        .map_err(|e| StoreError::Refused(format!("record does not serialize: {e}")))?;
    let tag = ring::hmac::sign(mac, &payload);
    payload.extend_from_slice(tag.as_ref());
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

/// The entry in one frame's payload, once its tag verifies.
pub(super) fn decode(
    payload: &[u8],
    start: u64,
    mac: &ring::hmac::Key,
    file: &Path,
) -> Result<Entry, StoreError> {
    let forged = || {
        StoreError::Corrupt(format!(
            "{}: the entry at byte {start} is not authenticated by this store's master key \
             (written without it: refusing the store)",
            file.display()
        ))
    };
    let split = payload.len().checked_sub(TAG_LEN).ok_or_else(forged)?;
    let (json, tag) = payload.split_at(split);
    ring::hmac::verify(mac, json, tag).map_err(|_| forged())?;
    decode_legacy(json, start)
}

/// The entry in a format-1 payload (no tag): for migration only.
pub(super) fn decode_legacy(payload: &[u8], start: u64) -> Result<Entry, StoreError> {
    serde_json::from_slice(payload).map_err(|e| {
        StoreError::Corrupt(format!(
            "entry at byte {start} is not a credgate entry: {e}"
        ))
    })
}

fn crc(len: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len);
    h.update(payload);
    h.finalize()
}

/// What the bytes at the start of a buffer hold.
enum At<'a> {
    /// A valid frame: its payload and its whole length.
    Frame(&'a [u8], usize),
    /// The start of what could be a frame, cut off by the end of the buffer.
    Short,
    /// Not a valid frame.
    Bad,
}

fn frame_at(buf: &[u8]) -> At<'_> {
    if !MAGIC.starts_with(&buf[..buf.len().min(MAGIC.len())]) {
        return At::Bad;
    }
    if buf.len() < FRAME_HEADER {
        return At::Short;
    }
    let len_bytes = &buf[4..8];
    let len = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    if len > MAX_PAYLOAD {
        return At::Bad;
    }
    let sum = u32::from_le_bytes([buf[8], buf[9], buf[10], buf[11]]);
    let Some(payload) = buf.get(FRAME_HEADER..FRAME_HEADER + len) else {
        return At::Short;
    };
    if crc(len_bytes, payload) == sum {
        At::Frame(payload, FRAME_HEADER + len)
    } else {
        At::Bad
    }
}

fn is_frame(buf: &[u8]) -> bool {
    matches!(frame_at(buf), At::Frame(..))
}

/// Bytes read per step when scanning a file; a bigger frame is read whole.
const SCAN_CHUNK: usize = if cfg!(test) { 700 } else { 1 << 20 };

/// Calls `visit(start, end, payload)` on each valid frame between `from` and
/// `to`, in order, reading `SCAN_CHUNK` bytes at a time (`read(a, b)` returns
/// the bytes from `a` to `b`, fewer if the file is shorter). Returns the
/// offset just past the last valid frame: anything after it is a torn tail.
/// Stops early when `visit` breaks.
fn scan_with(
    mut read: impl FnMut(u64, u64) -> Result<Vec<u8>, StoreError>,
    from: u64,
    mut to: u64,
    mut visit: impl FnMut(u64, u64, &[u8]) -> Result<ControlFlow<()>, StoreError>,
) -> Result<u64, StoreError> {
    let mut buf: Vec<u8> = Vec::new();
    // File offsets of buf[0] and of the byte after buf's end.
    let (mut base, mut read_to) = (from, from);
    loop {
        let mut at = 0;
        let stop = loop {
            match frame_at(&buf[at..]) {
                At::Frame(payload, len) => {
                    let start = base + at as u64;
                    at += len;
                    if visit(start, base + at as u64, payload)?.is_break() {
                        return Ok(base + at as u64);
                    }
                }
                At::Short if read_to < to => break false,
                At::Short | At::Bad => break true,
            }
        };
        if stop {
            let bad = base + at as u64;
            if at == buf.len() {
                return Ok(bad);
            }
            let mut rest = buf.split_off(at);
            if read_to < to {
                rest.extend(read(read_to, to)?);
            }
            // A valid frame after the bad one means it is not a torn tail.
            if (1..rest.len()).any(|i| is_frame(&rest[i..])) {
                return Err(StoreError::Corrupt(format!(
                    "damaged entry at byte {bad} with valid entries after it"
                )));
            }
            tracing::debug!(offset = bad, "ignoring a torn tail in the store log");
            return Ok(bad);
        }
        buf.drain(..at);
        base += at as u64;
        // The pending frame's whole length, when its header is in.
        let pending = match buf.get(4..8) {
            Some(b) => FRAME_HEADER + u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
            None => FRAME_HEADER,
        };
        let want = SCAN_CHUNK.max(pending.saturating_sub(buf.len())) as u64;
        let next = (read_to + want).min(to);
        let more = read(read_to, next)?;
        if base == 0 && buf.is_empty() && !MAGIC.starts_with(&more[..more.len().min(4)]) {
            return Err(StoreError::Corrupt("not a credgate store file".into()));
        }
        if (more.len() as u64) < next - read_to {
            to = read_to + more.len() as u64; // shrank meanwhile: parse what we have
        }
        read_to += more.len() as u64;
        buf.extend(more);
    }
}

/// [`scan_with`] over the file of `log`.
pub(super) fn scan(
    log: &LogFile,
    path: &Path,
    from: u64,
    to: u64,
    visit: impl FnMut(u64, u64, &[u8]) -> Result<ControlFlow<()>, StoreError>,
) -> Result<u64, StoreError> {
    scan_with(|a, b| log.read_from(path, a, b), from, to, visit)
}

/// Parses the bytes of a file from offset `base`. Returns the frames and the
/// offset just past the last valid one (anything after it is a torn tail).
#[cfg(test)]
pub(super) fn parse(
    buf: &[u8],
    base: u64,
    mac: &ring::hmac::Key,
) -> Result<(Vec<Frame>, u64), StoreError> {
    let mut frames = Vec::new();
    let read = |a: u64, b: u64| {
        let slice = |x: u64| ((x - base) as usize).min(buf.len());
        Ok(buf[slice(a)..slice(b)].to_vec())
    };
    let end = scan_with(
        read,
        base,
        base + buf.len() as u64,
        |start, end, payload| {
            let entry = decode(payload, start, mac, Path::new("test"))?;
            frames.push(Frame { start, end, entry });
            Ok(ControlFlow::Continue(()))
        },
    )?;
    Ok((frames, end))
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

    /// Bytes from `from` to `to` (fewer if the file is shorter).
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

    /// The whole frame at `loc`, checked (magic, length, CRC): its bytes and
    /// its payload's range in them. The index only points at frames replay
    /// found valid and nothing rewrites them, so a mismatch is damage.
    pub(super) fn read_frame(
        &self,
        path: &Path,
        loc: Loc,
    ) -> Result<(Vec<u8>, std::ops::Range<usize>), StoreError> {
        let bytes = self.read_from(path, loc.at, loc.end())?;
        match frame_at(&bytes) {
            At::Frame(payload, len) if len == bytes.len() => {
                let payload = FRAME_HEADER..FRAME_HEADER + payload.len();
                Ok((bytes, payload))
            }
            _ => Err(StoreError::Corrupt(format!(
                "the entry at byte {} of {} changed after it was read",
                loc.at,
                path.display()
            ))),
        }
    }

    /// The entry of the frame at `loc` (see [`LogFile::read_frame`]).
    pub(super) fn read_entry(
        &self,
        path: &Path,
        loc: Loc,
        mac: &ring::hmac::Key,
    ) -> Result<Entry, StoreError> {
        let (bytes, payload) = self.read_frame(path, loc)?;
        decode(&bytes[payload], loc.at, mac, path)
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

    fn mac() -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[1; 32])
    }

    fn delete(path: &str) -> Vec<u8> {
        encode(&Entry::Delete { path: path.into() }, &mac()).unwrap()
    }

    #[test]
    fn an_entry_without_the_right_tag_is_refused_naming_the_file() {
        let buf = delete("a");
        assert_eq!(parse(&buf, 0, &mac()).unwrap().0.len(), 1);
        let other = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[2; 32]);
        let Err(StoreError::Corrupt(m)) = parse(&buf, 0, &other) else {
            panic!("accepted an entry tagged with another key")
        };
        assert!(
            m.contains("test: the entry at byte 0 is not authenticated"),
            "{m}"
        );
    }

    #[test]
    fn frames_round_trip_and_report_their_bounds() {
        let mut buf = delete("a");
        buf.extend(delete("bb"));
        let (frames, end) = parse(&buf, 100, &mac()).unwrap();
        assert_eq!(frames.len(), 2);
        assert!(matches!(&frames[1].entry, Entry::Delete { path } if path == "bb"));
        assert_eq!(frames[0].start, 100);
        assert_eq!(frames[1].start, frames[0].end);
        assert_eq!(end, 100 + buf.len() as u64);
    }

    #[test]
    fn a_torn_tail_is_ignored_and_mid_file_damage_is_not() {
        let one = delete("a");
        let mut buf = one.clone();
        buf.extend_from_slice(&one[..one.len() - 3]);
        let (frames, end) = parse(&buf, 0, &mac()).unwrap();
        assert_eq!((frames.len(), end), (1, one.len() as u64));

        let mut damaged = one.clone();
        damaged[FRAME_HEADER + 2] ^= 0x20;
        damaged.extend(one);
        assert!(matches!(
            parse(&damaged, 0, &mac()),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn a_foreign_file_is_refused() {
        assert!(matches!(
            parse(b"[store]\n", 0, &mac()),
            Err(StoreError::Corrupt(_))
        ));
        // A prefix of the magic is a torn first frame, not a foreign file.
        assert_eq!(parse(b"CG", 0, &mac()).unwrap().1, 0);
    }
}
