//! Property tests (issue #9) of the embedded store's file parser: the store
//! file is outside bytes too (a disk, a backup, an operator's editor).
//!
//! - Cut at any byte (a crash mid-append, a full disk): the store opens and
//!   holds exactly the operations acknowledged before the cut.
//! - Any other damage: the store opens with the state of some prefix of the
//!   acknowledged operations, or refuses to open with an error; it never
//!   panics and never invents or mixes records.

mod prop_support;

use std::collections::BTreeMap;
use std::path::Path;

use credgate::config::Config;
use credgate::store::embedded::EmbeddedStore;
use credgate::store::{Cas, Store};
use prop_support::*;
use proptest::prelude::*;
use serde_json::{Map, Value, json};

const KEY: [u8; 32] = [42u8; 32];
const PATHS: [&str; 4] = [
    "acme/github",
    "acme/slack",
    "_credgate/clients/cg-1",
    "beta/github",
];

type State = BTreeMap<String, (u64, Map<String, Value>)>;

fn open(dir: &Path) -> Result<EmbeddedStore, credgate::store::StoreError> {
    let cfg = Config::from_toml_with_env(&config_text(dir), Vec::new()).expect("config");
    EmbeddedStore::open_with_master_key(&cfg.store, KEY)
}

async fn snapshot(store: &EmbeddedStore) -> State {
    let mut out = State::new();
    for p in PATHS {
        if let Some(r) = store.read(p).await.expect("read") {
            out.insert(p.to_owned(), (r.version, r.data));
        }
    }
    out
}

/// Writes a history; returns the file, and after each acknowledged
/// operation the file length and the state.
async fn history(dir: &Path) -> (Vec<u8>, Vec<(u64, State)>, String) {
    let store = open(dir).expect("open");
    let file = dir.join("credgate.store");
    let len = || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
    let mut points = vec![(len(), State::new())];
    let mut ciphertext = String::new();
    for step in 0..14u64 {
        let path = PATHS[(step as usize * 7) % PATHS.len()];
        if step % 5 == 4 {
            store.delete(path).await.expect("delete");
        } else if step == 6 {
            ciphertext = store
                .encrypt("acme", "acme/github", &[b"secret-value"])
                .await
                .expect("encrypt")
                .remove(0);
        } else {
            let mut data = Map::new();
            data.insert("step".into(), json!(step));
            data.insert("blob".into(), json!("x".repeat((step as usize * 37) % 300)));
            store
                .write(path, data, BTreeMap::new(), Cas::Any)
                .await
                .expect("write");
        }
        points.push((len(), snapshot(&store).await));
    }
    drop(store);
    (
        std::fs::read(&file).expect("read store file"),
        points,
        ciphertext,
    )
}

fn reopen(bytes: &[u8], rt: &tokio::runtime::Runtime) -> Result<State, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("credgate.store"), bytes).unwrap();
    let store = open(dir.path()).map_err(|e| e.to_string())?;
    let state = rt.block_on(snapshot(&store));
    Ok(state)
}

#[test]
fn store_file_cut_or_damaged() {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let (bytes, points, ciphertext) = rt.block_on(history(dir.path()));
    let header_end = points[0].0 as usize;
    assert!(header_end > 0 && header_end < bytes.len());

    // Every cut, byte by byte: exactly the operations acknowledged before it.
    let mut cuts = 0;
    for cut in header_end..=bytes.len() {
        let state =
            reopen(&bytes[..cut], &rt).unwrap_or_else(|e| panic!("cut at {cut} refused: {e}"));
        let expected = &points
            .iter()
            .rev()
            .find(|(end, _)| *end as usize <= cut)
            .unwrap()
            .1;
        assert_eq!(&state, expected, "cut at {cut}");
        cuts += 1;
    }
    // The ciphertext made before the cut still decrypts after reopening.
    let store = open(dir.path()).unwrap();
    let plain = rt
        .block_on(store.decrypt("acme", "acme/github", &[&ciphertext]))
        .unwrap();
    assert_eq!(&plain[0][..], b"secret-value");
    drop(store);

    let states: Vec<State> = points.iter().map(|(_, s)| s.clone()).collect();
    let mut runner = runner(400);
    runner
        .run(&prop::collection::vec(mutation(), 1..4), |m| {
            let damaged = apply(&bytes, &m);
            if let Ok(state) = reopen(&damaged, &rt) {
                prop_assert!(
                    states.contains(&state),
                    "damage {m:?} opened with a state never written: {state:?}"
                );
            }
            Ok(())
        })
        .unwrap();
    report("store_file", 1, runner.config().cases + cuts);
}
