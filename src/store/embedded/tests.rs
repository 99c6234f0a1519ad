use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tempfile::TempDir;

use super::*;
use secrecy::SecretString;

use crate::config::StoreConfig;

const KEY: [u8; 32] = [7; 32];

fn config(dir: &TempDir) -> StoreConfig {
    StoreConfig {
        path: dir.path().join("data").join("credgate.store"),
        ..StoreConfig::default()
    }
}

fn open(cfg: &StoreConfig) -> EmbeddedStore {
    EmbeddedStore::open_with_master_key(cfg, KEY).expect("open store")
}

fn data(n: i64) -> Map<String, Value> {
    let Value::Object(map) = json!({ "n": n, "accessToken": "credgate:v1:xyz" }) else {
        unreachable!()
    };
    map
}

fn meta(k: &str, v: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(k.to_owned(), v.to_owned())])
}

async fn put(store: &EmbeddedStore, path: &str, n: i64, cas: Cas) -> Result<u64, StoreError> {
    store.write(path, data(n), BTreeMap::new(), cas).await
}

async fn n_of(store: &EmbeddedStore, path: &str) -> Option<(u64, i64)> {
    let r = store.read(path).await.unwrap()?;
    Some((r.version, r.data["n"].as_i64().unwrap()))
}

// Versions, check-and-set, delete, list, malformed paths and the
// keyring/context binding are the store contract, run on this store by
// tests/store (embedded.rs). What follows is this store's own.

#[tokio::test]
async fn a_ciphertext_changed_near_its_end_does_not_decrypt() {
    let dir = TempDir::new().unwrap();
    let store = open(&config(&dir));
    let ct = store
        .encrypt("t1", "t1/github", &[b"tok"])
        .await
        .unwrap()
        .remove(0);
    assert!(store.decrypt("t1", "t1/github", &[&ct]).await.is_ok());
    // The low bit of a digit near the end (the contract changes high bits).
    let mut tampered = ct.into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let err = store
        .decrypt("t1", "t1/github", &[&tampered])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Decrypt), "{err:?}");
}

#[tokio::test]
async fn records_and_keys_persist_across_reopen() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let ct = {
        let store = open(&cfg);
        put(&store, "t1/github", 1, Cas::Absent).await.unwrap();
        put(&store, "t1/github", 2, Cas::Version(1)).await.unwrap();
        put(&store, "t1/gone", 1, Cas::Absent).await.unwrap();
        store.delete("t1/gone").await.unwrap();
        store.encrypt("t1", "t1/github", &[b"tok"]).await.unwrap()
    };
    let store = open(&cfg);
    assert_eq!(n_of(&store, "t1/github").await, Some((2, 2)));
    assert_eq!(store.read("t1/gone").await.unwrap(), None);
    let ct: Vec<&str> = ct.iter().map(String::as_str).collect();
    let plain = store.decrypt("t1", "t1/github", &ct).await.unwrap();
    assert_eq!(plain[0].as_slice(), b"tok");
}

/// The whole file parses with no torn tail.
fn replays_cleanly(cfg: &StoreConfig) {
    let bytes = fs::read(&cfg.path).unwrap();
    let (frames, end) = log::parse(&bytes, 0, &crypto::record_mac_key(&KEY)).unwrap();
    assert!(!frames.is_empty());
    assert_eq!(end, bytes.len() as u64, "file ends with a torn tail");
}

#[tokio::test]
async fn a_torn_tail_is_ignored_then_cut_by_the_next_writer() {
    let whole = {
        let scratch = TempDir::new().unwrap();
        let s = open(&config(&scratch));
        let before = fs::metadata(&s.inner.path).unwrap().len();
        put(&s, "t1/next", 9, Cas::Absent).await.unwrap();
        fs::read(&s.inner.path).unwrap()[before as usize..].to_vec()
    };
    for tail in [whole[..whole.len() / 2].to_vec(), b"garbage\0\xff".to_vec()] {
        let dir = TempDir::new().unwrap();
        let cfg = config(&dir);
        put(&open(&cfg), "t1/github", 1, Cas::Absent).await.unwrap();
        fs::OpenOptions::new()
            .append(true)
            .open(&cfg.path)
            .unwrap()
            .write_all(&tail)
            .unwrap();

        let store = open(&cfg);
        assert_eq!(n_of(&store, "t1/github").await, Some((1, 1)));
        assert_eq!(store.read("t1/next").await.unwrap(), None);
        assert_eq!(
            put(&store, "t1/github", 2, Cas::Version(1)).await.unwrap(),
            2
        );
        replays_cleanly(&cfg);
        assert_eq!(n_of(&open(&cfg), "t1/github").await, Some((2, 2)));
    }
}

#[tokio::test]
async fn damage_in_the_middle_of_the_log_is_reported() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    {
        let store = open(&cfg);
        put(&store, "t1/github", 1, Cas::Absent).await.unwrap();
        put(&store, "t1/slack", 1, Cas::Absent).await.unwrap();
    }
    let mut bytes = fs::read(&cfg.path).unwrap();
    let at = bytes
        .windows(9)
        .position(|w| w == b"t1/github")
        .expect("record in the log");
    bytes[at + 3] = b'X';
    fs::write(&cfg.path, &bytes).unwrap();
    let err = EmbeddedStore::open_with_master_key(&cfg, KEY).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");

    fs::write(&cfg.path, b"[not a store]\n").unwrap();
    let err = EmbeddedStore::open_with_master_key(&cfg, KEY).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

#[tokio::test]
async fn compaction_keeps_every_record_version_and_key() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let store = EmbeddedStore::open_inner(&cfg, Zeroizing::new(KEY), 4096).unwrap();
    let other = open(&cfg); // a second process that must follow the new file
    let ct = store.encrypt("t1", "t1/a", &[b"secret"]).await.unwrap();
    put(&store, "t1/b", 0, Cas::Absent).await.unwrap();
    put(&store, "t1/gone", 0, Cas::Absent).await.unwrap();
    store.delete("t1/gone").await.unwrap();
    for i in 1..=200 {
        put(&store, "t1/a", i, Cas::Any).await.unwrap();
    }
    let generation = store.inner.state().generation;
    assert!(generation > 1, "no compaction happened");
    let len = fs::metadata(&cfg.path).unwrap().len();
    assert!(len < 3 * 4096, "log not compacted: {len} bytes");
    assert!(!sibling(&cfg.path, ".compact").exists());

    for s in [&store, &other, &open(&cfg)] {
        assert_eq!(n_of(s, "t1/a").await, Some((200, 200)));
        assert_eq!(n_of(s, "t1/b").await, Some((1, 0)));
        assert_eq!(s.read("t1/gone").await.unwrap(), None);
        let plain = s.decrypt("t1", "t1/a", &[&ct[0]]).await.unwrap();
        assert_eq!(plain[0].as_slice(), b"secret");
    }
    // The other process writes on the compacted file and the first sees it.
    assert_eq!(
        put(&other, "t1/a", 0, Cas::Version(200)).await.unwrap(),
        201
    );
    assert_eq!(n_of(&store, "t1/a").await, Some((201, 0)));
    replays_cleanly(&cfg);
}

#[tokio::test]
async fn two_instances_see_each_others_writes_and_conflicts() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let (a, b) = (open(&cfg), open(&cfg));

    put(&a, "t1/github", 1, Cas::Absent).await.unwrap();
    assert_eq!(n_of(&b, "t1/github").await, Some((1, 1)));
    assert_eq!(b.list("t1").await.unwrap(), ["github"]);
    assert!(matches!(
        put(&b, "t1/github", 2, Cas::Absent).await,
        Err(StoreError::Conflict)
    ));

    // Both read version 1; only the first write on it wins.
    assert_eq!(put(&b, "t1/github", 2, Cas::Version(1)).await.unwrap(), 2);
    assert!(matches!(
        put(&a, "t1/github", 3, Cas::Version(1)).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(n_of(&a, "t1/github").await, Some((2, 2)));

    b.delete("t1/github").await.unwrap();
    assert_eq!(a.read("t1/github").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cas_increments_from_two_instances_lose_nothing() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let stores = [Arc::new(open(&cfg)), Arc::new(open(&cfg))];
    put(&stores[0], "t1/counter", 0, Cas::Absent).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = Arc::clone(&stores[i % 2]);
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                loop {
                    let (v, n) = n_of(&store, "t1/counter").await.unwrap();
                    match put(&store, "t1/counter", n + 1, Cas::Version(v)).await {
                        Ok(_) => break,
                        Err(StoreError::Conflict) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(n_of(&stores[1], "t1/counter").await, Some((81, 80)));
    replays_cleanly(&cfg);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_creating_a_keyring_at_once_agree_on_one_key() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let (a, b) = (Arc::new(open(&cfg)), Arc::new(open(&cfg)));
    for n in 0..10 {
        let keyring = format!("tenant-{n}");
        let (ca, cb) = tokio::join!(
            a.encrypt(&keyring, "ctx", &[b"from a"]),
            b.encrypt(&keyring, "ctx", &[b"from b"]),
        );
        let (ca, cb) = (ca.unwrap(), cb.unwrap());
        assert_eq!(
            b.decrypt(&keyring, "ctx", &[&ca[0]]).await.unwrap()[0].as_slice(),
            b"from a"
        );
        assert_eq!(
            a.decrypt(&keyring, "ctx", &[&cb[0]]).await.unwrap()[0].as_slice(),
            b"from b"
        );
    }
    assert_eq!(a.inner.state().keys.len(), 10);
    // A later process sees exactly one key per keyring too.
    assert_eq!(open(&cfg).inner.state().keys.len(), 10);
}

#[tokio::test]
async fn a_wrong_master_key_is_refused_at_open() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    open(&cfg);
    let err = EmbeddedStore::open_with_master_key(&cfg, [8; 32]).unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(m) if m == crypto::WRONG_MASTER_KEY),
        "{err:?}"
    );
    // The right key still opens it: the failed open changed nothing.
    open(&cfg);
}

#[test]
fn the_key_file_is_created_private_and_reused() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("keys").join("master.key");
    let key = crypto::load_or_create_key_file(&path).unwrap();
    let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(*crypto::load_or_create_key_file(&path).unwrap(), *key);

    fs::write(&path, "c2hvcnQ=\n").unwrap();
    let err = crypto::load_or_create_key_file(&path).unwrap_err();
    assert!(
        matches!(&err, StoreError::Refused(m) if !m.contains("c2hvcnQ")),
        "{err:?}"
    );
}

#[tokio::test]
async fn open_uses_the_key_file_when_no_env_key_is_set() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let store = EmbeddedStore::open(&cfg, None).unwrap();
    put(&store, "t1/a", 1, Cas::Absent).await.unwrap();
    let mode = fs::metadata(cfg.master_key_path())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    drop(store);
    assert_eq!(
        n_of(&EmbeddedStore::open(&cfg, None).unwrap(), "t1/a").await,
        Some((1, 1))
    );
}

#[tokio::test]
async fn open_uses_the_master_key_it_is_given_and_writes_no_key_file() {
    use base64::Engine;
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let given = SecretString::from(base64::engine::general_purpose::STANDARD.encode(KEY));
    let store = EmbeddedStore::open(&cfg, Some(&given)).unwrap();
    put(&store, "t1/a", 1, Cas::Absent).await.unwrap();
    drop(store);
    assert!(
        !cfg.master_key_path().exists(),
        "a given key writes no key file"
    );
    // The same bytes open it; a malformed given key is refused without echoing it.
    assert_eq!(n_of(&open(&cfg), "t1/a").await, Some((1, 1)));
    let bad = SecretString::from("c2hvcnQ=".to_owned());
    let err = EmbeddedStore::open(&cfg, Some(&bad)).err().unwrap();
    assert!(
        matches!(&err, StoreError::Refused(m) if !m.contains("c2hvcnQ")),
        "{err:?}"
    );
}

#[test]
fn an_unwritable_location_is_an_io_error() {
    let dir = TempDir::new().unwrap();
    let ro = dir.path().join("ro");
    fs::create_dir(&ro).unwrap();
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o555)).unwrap();
    let cfg = StoreConfig {
        path: ro.join("sub").join("credgate.store"),
        ..StoreConfig::default()
    };
    // root ignores directory modes; then a regular file in the way does it.
    let root = fs::create_dir(ro.join("probe")).is_ok();
    let cfg = if root {
        fs::write(dir.path().join("file"), b"").unwrap();
        StoreConfig {
            path: dir.path().join("file").join("credgate.store"),
            ..StoreConfig::default()
        }
    } else {
        cfg
    };
    let err = EmbeddedStore::open_with_master_key(&cfg, KEY).unwrap_err();
    assert!(matches!(err, StoreError::Io(_)), "{err:?}");
    fs::set_permissions(&ro, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_full_disk_is_an_io_error() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    fs::create_dir_all(cfg.path.parent().unwrap()).unwrap();
    std::os::unix::fs::symlink("/dev/full", &cfg.path).unwrap();
    let err = EmbeddedStore::open_with_master_key(&cfg, KEY).unwrap_err();
    assert!(
        matches!(&err, StoreError::Io(m) if m.contains("No space left")),
        "{err:?}"
    );
}

#[tokio::test]
async fn health_fails_once_the_file_is_gone() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let store = open(&cfg);
    store.health().await.unwrap();
    fs::remove_file(&cfg.path).unwrap();
    assert!(matches!(store.health().await, Err(StoreError::Io(_))));
}

#[test]
fn debug_output_shows_no_key_material() {
    let dir = TempDir::new().unwrap();
    let store = open(&config(&dir));
    let text = format!("{store:?}");
    assert!(text.contains("credgate.store"));
    assert!(!text.contains("[7, 7"), "{text}");
}

/// Bytes of the file at `path`, with `f` applied, written back.
fn edit_file(path: &Path, f: impl FnOnce(&mut Vec<u8>)) {
    let mut bytes = fs::read(path).unwrap();
    f(&mut bytes);
    fs::write(path, &bytes).unwrap();
}

#[tokio::test]
async fn reads_come_from_the_log_and_are_checked_again() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let store = open(&cfg);
    put(&store, "t1/github", 1, Cas::Absent).await.unwrap();
    let slot = store.inner.state().records["t1/github"];
    assert_eq!(slot.version, 1);
    assert_eq!(slot.loc.end(), fs::metadata(&cfg.path).unwrap().len());
    // Damage the frame in place, under the index: the read notices.
    edit_file(&cfg.path, |b| {
        let at = b.windows(9).rposition(|w| w == b"t1/github").unwrap();
        b[at + 3] = b'X';
    });
    let err = store.read("t1/github").await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt(_)), "{err:?}");
}

#[tokio::test]
async fn the_index_is_rebuilt_at_open_from_many_chunks() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    {
        let store = open(&cfg);
        for i in 0..60 {
            let path = format!("t{}/github", i % 20);
            put(&store, &path, i, Cas::Any).await.unwrap();
        }
        for i in 0..5 {
            store.delete(&format!("t{i}/github")).await.unwrap();
        }
        store.encrypt("t7", "t7/github", &[b"x"]).await.unwrap();
    }
    // The test scan reads 700 bytes at a time: many frames cross a chunk.
    assert!(fs::metadata(&cfg.path).unwrap().len() > 10 * 700);
    let store = open(&cfg);
    assert_eq!(store.inner.state().records.len(), 15);
    assert_eq!(store.inner.state().keys.len(), 1);
    for i in 5..20 {
        let path = format!("t{i}/github");
        assert_eq!(n_of(&store, &path).await, Some((3, 40 + i)), "{path}");
    }
    assert_eq!(store.read("t0/github").await.unwrap(), None);
    // Check-and-set works from the rebuilt versions.
    assert!(matches!(
        put(&store, "t9/github", 0, Cas::Version(2)).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        put(&store, "t9/github", 0, Cas::Version(3)).await.unwrap(),
        4
    );
    assert_eq!(put(&store, "t0/github", 0, Cas::Absent).await.unwrap(), 1);
    replays_cleanly(&cfg);
}

fn big(n: i64, kib: usize) -> Map<String, Value> {
    let mut map = data(n);
    map.insert("blob".into(), json!("b".repeat(kib * 1024)));
    map
}

#[tokio::test]
async fn a_record_bigger_than_a_page_and_a_scan_chunk() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let store = EmbeddedStore::open_inner(&cfg, Zeroizing::new(KEY), 64 << 10).unwrap();
    let other = open(&cfg);
    put(&store, "t1/small", 1, Cas::Absent).await.unwrap();
    store
        .write("t1/big", big(1, 40), meta("k", "v"), Cas::Absent)
        .await
        .unwrap();
    put(&store, "t1/after", 2, Cas::Absent).await.unwrap();
    for s in [&store, &other, &open(&cfg)] {
        let r = s.read("t1/big").await.unwrap().unwrap();
        assert_eq!(
            (r.version, &r.data, &r.metadata),
            (1, &big(1, 40), &meta("k", "v"))
        );
        assert_eq!(n_of(s, "t1/after").await, Some((1, 2)));
    }
    // Rewrites until compaction copies the big frame into a new file.
    for i in 2..=4 {
        store
            .write("t1/big", big(i, 40), BTreeMap::new(), Cas::Any)
            .await
            .unwrap();
    }
    assert!(store.inner.state().generation > 1, "no compaction happened");
    for s in [&store, &other, &open(&cfg)] {
        let r = s.read("t1/big").await.unwrap().unwrap();
        assert_eq!((r.version, &r.data), (4, &big(4, 40)));
        assert_eq!(n_of(s, "t1/small").await, Some((1, 1)));
    }
    replays_cleanly(&cfg);
}

#[tokio::test]
async fn a_torn_big_frame_is_a_torn_tail() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let before = {
        let store = open(&cfg);
        put(&store, "t1/a", 1, Cas::Absent).await.unwrap();
        let before = fs::metadata(&cfg.path).unwrap().len();
        store
            .write("t1/big", big(1, 8), BTreeMap::new(), Cas::Absent)
            .await
            .unwrap();
        before
    };
    // A crash while the big frame was being written: a few chunks of it made it.
    let cut = before + 3 * 700 + 5;
    let f = fs::OpenOptions::new().write(true).open(&cfg.path).unwrap();
    f.set_len(cut).unwrap();
    drop(f);
    let store = open(&cfg);
    assert_eq!(store.read("t1/big").await.unwrap(), None);
    assert_eq!(n_of(&store, "t1/a").await, Some((1, 1)));
    assert_eq!(store.inner.state().offset, before);
    put(&store, "t1/b", 2, Cas::Absent).await.unwrap();
    replays_cleanly(&cfg);
    assert_eq!(n_of(&open(&cfg), "t1/b").await, Some((1, 2)));
}

#[tokio::test]
async fn a_handle_reads_what_another_handle_wrote_after_its_index_was_built() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    let (a, b) = (open(&cfg), open(&cfg));
    put(&a, "t1/x", 1, Cas::Absent).await.unwrap();
    assert_eq!(n_of(&b, "t1/x").await, Some((1, 1)));
    let old = b.inner.state().records["t1/x"];
    // `a` rewrites it and deletes another: `b`'s next read follows the log.
    put(&a, "t1/x", 2, Cas::Version(1)).await.unwrap();
    put(&a, "t1/y", 1, Cas::Absent).await.unwrap();
    a.delete("t1/y").await.unwrap();
    assert_eq!(n_of(&b, "t1/x").await, Some((2, 2)));
    assert!(b.inner.state().records["t1/x"].loc.at > old.loc.at);
    assert_eq!(b.read("t1/y").await.unwrap(), None);
    assert!(matches!(
        put(&b, "t1/x", 3, Cas::Version(1)).await,
        Err(StoreError::Conflict)
    ));
}

/// A frame as credgate wrote it before entries carried a tag (format 1), or
/// as someone without the master key would forge one.
fn untagged_frame(entry: &Value) -> Vec<u8> {
    let payload = serde_json::to_vec(entry).unwrap();
    let len = (payload.len() as u32).to_le_bytes();
    let mut h = crc32fast::Hasher::new();
    h.update(&len);
    h.update(&payload);
    let mut out = b"CGF1".to_vec();
    out.extend_from_slice(&len);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&payload);
    out
}

fn forged_client() -> Value {
    json!({"op": "put", "path": "_credgate/clients/evil", "version": 1,
           "data": {"scopes": ["admin"], "active": true}, "metadata": {},
           "updated_at": "2026-01-01T00:00:00Z"})
}

#[tokio::test]
async fn a_record_appended_without_the_master_key_is_refused_naming_the_file() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    put(&open(&cfg), "t1/github", 1, Cas::Absent).await.unwrap();
    // Well-formed, valid CRC, but no tag: what a writer without the key makes.
    fs::OpenOptions::new()
        .append(true)
        .open(&cfg.path)
        .unwrap()
        .write_all(&untagged_frame(&forged_client()))
        .unwrap();
    let err = EmbeddedStore::open_with_master_key(&cfg, KEY).unwrap_err();
    let StoreError::Corrupt(m) = &err else {
        panic!("{err:?}")
    };
    assert!(m.contains(&cfg.path.display().to_string()), "{m}");
    assert!(m.contains("not authenticated"), "{m}");

    // Tagged with a key derived from another master key: refused the same way.
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    put(&open(&cfg), "t1/github", 1, Cas::Absent).await.unwrap();
    let Value::Object(forged) = forged_client() else {
        unreachable!()
    };
    let entry: log::Entry = serde_json::from_value(Value::Object(forged)).unwrap();
    let other = crypto::record_mac_key(&[9; 32]);
    fs::OpenOptions::new()
        .append(true)
        .open(&cfg.path)
        .unwrap()
        .write_all(&log::encode(&entry, &other).unwrap())
        .unwrap();
    assert!(matches!(
        EmbeddedStore::open_with_master_key(&cfg, KEY),
        Err(StoreError::Corrupt(m)) if m.contains("not authenticated")
    ));
}

#[tokio::test]
async fn a_format_1_store_is_migrated_under_its_master_key() {
    let dir = TempDir::new().unwrap();
    let cfg = config(&dir);
    fs::create_dir_all(cfg.path.parent().unwrap()).unwrap();
    let mut legacy = untagged_frame(&json!({"op": "header", "format": 1, "generation": 3,
        "key_check": crypto::key_check(&KEY).unwrap()}));
    legacy.extend(untagged_frame(
        &json!({"op": "put", "path": "t1/github", "version": 1,
        "data": {"n": 1}, "metadata": {}, "updated_at": "2026-01-01T00:00:00Z"}),
    ));
    legacy.extend(untagged_frame(
        &json!({"op": "put", "path": "t1/github", "version": 2,
        "data": {"n": 2}, "metadata": {}, "updated_at": "2026-01-01T00:00:01Z"}),
    ));
    fs::write(&cfg.path, &legacy).unwrap();

    // Another master key cannot migrate (or read) it.
    assert!(matches!(
        EmbeddedStore::open_with_master_key(&cfg, [8; 32]),
        Err(StoreError::Refused(m)) if m == crypto::WRONG_MASTER_KEY
    ));
    assert_eq!(
        fs::read(&cfg.path).unwrap(),
        legacy,
        "a refused open changed the file"
    );

    let store = open(&cfg);
    assert_eq!(n_of(&store, "t1/github").await, Some((2, 2)));
    assert_eq!(
        put(&store, "t1/github", 3, Cas::Version(2)).await.unwrap(),
        3
    );
    replays_cleanly(&cfg);
    let (frames, _) = log::parse(
        &fs::read(&cfg.path).unwrap(),
        0,
        &crypto::record_mac_key(&KEY),
    )
    .unwrap();
    assert!(matches!(
        frames[0].entry,
        log::Entry::Header {
            format: 2,
            generation: 4,
            ..
        }
    ));
    assert_eq!(n_of(&open(&cfg), "t1/github").await, Some((3, 3)));
}
