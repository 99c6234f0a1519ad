//! The store contract (the `Store` trait in src/store/mod.rs): what every
//! backend does the same. Each case is an async fn taking a fresh, empty
//! store; the backend modules (`embedded`, `memory`, `vault::contract`) run
//! every case with [`contract_tests!`]. What only one backend does is tested
//! beside it.

use std::collections::BTreeMap;

use credgate::credentials::{self, Credential, Status};
use credgate::store::{Cas, Store, StoreError};
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Runs every contract case as a `#[tokio::test]`, each on the store
/// `$open().await` returns (anything that derefs to the store and keeps
/// its backend alive, e.g. a temporary directory or an OpenBao server).
macro_rules! contract_tests {
    ($open:path) => {
        contract_tests!(@cases $open;
            check_and_set_guards_every_write_and_versions_grow,
            metadata_is_replaced_as_a_whole_and_cleared_when_empty,
            delete_removes_every_version_and_absent_is_no_error,
            list_shows_leaves_and_folders_one_level_down,
            malformed_paths_are_refused,
            encrypt_then_decrypt_round_trips_a_batch,
            ciphertexts_only_decrypt_with_their_keyring_and_context,
            a_record_copied_to_another_path_does_not_decrypt,
        );
    };
    (@cases $open:path; $($case:ident,)*) => {
        $(
            #[tokio::test]
            async fn $case() {
                crate::contract::bounded(async {
                    let store = $open().await;
                    crate::contract::$case(&*store).await;
                })
                .await;
            }
        )*
    };
}
pub(crate) use contract_tests;

/// Upper bound for any one case.
pub(crate) async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(std::time::Duration::from_secs(120), f)
        .await
        .expect("test exceeded its time bound")
}

/// How each backend's ciphertexts start.
const PREFIXES: [(&str, &str); 3] = [
    ("embedded", "credgate:v1:"),
    ("vault", "vault:v1:"),
    ("memory", "sealed:v1:"),
];

fn prefix_of(store: &dyn Store) -> &'static str {
    PREFIXES
        .iter()
        .find(|(backend, _)| *backend == store.backend())
        .map(|(_, prefix)| *prefix)
        .unwrap_or_else(|| panic!("unknown backend {}", store.backend()))
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

fn meta(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn put(store: &dyn Store, path: &str, n: i64, cas: Cas) -> Result<u64, StoreError> {
    store
        .write(path, obj(json!({ "n": n })), BTreeMap::new(), cas)
        .await
}

/// Version and `n` of a record.
async fn n_of(store: &dyn Store, path: &str) -> Option<(u64, i64)> {
    let r = store.read(path).await.unwrap()?;
    Some((r.version, r.data["n"].as_i64().unwrap()))
}

fn credential(access: &str) -> Credential {
    Credential {
        access_token: SecretString::from(access.to_owned()),
        refresh_token: None,
        expires_at: Some(OffsetDateTime::parse("2030-01-02T03:04:05Z", &Rfc3339).unwrap()),
        scopes: vec!["repo".into()],
        token_type: "Bearer".into(),
        created_by: "admin:ops".into(),
        auto_refresh: true,
        refresh_count: 0,
        status: Status::Active,
    }
}

/// `ct` with the first base64 digit at or after `at` changed in its high
/// bit, which is never a padding bit: the sealed bytes differ under any
/// decoder.
fn tamper(ct: &str, at: usize) -> String {
    const DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bytes = ct.as_bytes().to_vec();
    let (at, digit) = (at..bytes.len())
        .find_map(|i| Some((i, DIGITS.iter().position(|d| *d == bytes[i])?)))
        .unwrap_or_else(|| panic!("no base64 digit in {ct:?} from {at}"));
    bytes[at] = DIGITS[digit ^ 0b10_0000];
    String::from_utf8(bytes).unwrap()
}

pub(crate) async fn check_and_set_guards_every_write_and_versions_grow(store: &dyn Store) {
    store.health().await.expect("healthy");
    assert_eq!(store.read("t1/github").await.unwrap(), None);

    assert_eq!(put(store, "t1/github", 1, Cas::Absent).await.unwrap(), 1);
    assert!(matches!(
        put(store, "t1/github", 2, Cas::Absent).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(
        put(store, "t1/github", 2, Cas::Version(1)).await.unwrap(),
        2
    );
    assert!(matches!(
        put(store, "t1/github", 3, Cas::Version(1)).await,
        Err(StoreError::Conflict)
    ));
    assert!(matches!(
        put(store, "t1/other", 3, Cas::Version(1)).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(put(store, "t1/github", 3, Cas::Any).await.unwrap(), 3);

    let data = obj(json!({"n": 4, "accessToken": "credgate:v1:xyz", "nested": {"a": [1, 2]}}));
    let v = store
        .write(
            "t1/github",
            data.clone(),
            meta(&[("createdBy", "admin"), ("status", "active")]),
            Cas::Version(3),
        )
        .await
        .unwrap();
    assert_eq!(v, 4);
    let r = store.read("t1/github").await.unwrap().unwrap();
    assert_eq!(r.version, 4);
    assert_eq!(r.data, data);
    assert_eq!(
        r.metadata,
        meta(&[("createdBy", "admin"), ("status", "active")])
    );
    assert!(OffsetDateTime::parse(&r.updated_at, &Rfc3339).is_ok());
}

pub(crate) async fn metadata_is_replaced_as_a_whole_and_cleared_when_empty(store: &dyn Store) {
    store
        .write(
            "t1/github",
            obj(json!({"n": 1})),
            meta(&[("createdBy", "admin"), ("status", "active")]),
            Cas::Absent,
        )
        .await
        .unwrap();
    store
        .write(
            "t1/github",
            obj(json!({"n": 2})),
            meta(&[("x", "y")]),
            Cas::Version(1),
        )
        .await
        .unwrap();
    assert_eq!(
        store.read("t1/github").await.unwrap().unwrap().metadata,
        meta(&[("x", "y")])
    );
    store
        .write(
            "t1/github",
            obj(json!({"n": 3})),
            BTreeMap::new(),
            Cas::Version(2),
        )
        .await
        .unwrap();
    let r = store.read("t1/github").await.unwrap().unwrap();
    assert!(r.metadata.is_empty());
    assert_eq!((r.version, &r.data), (3, &obj(json!({"n": 3}))));
}

pub(crate) async fn delete_removes_every_version_and_absent_is_no_error(store: &dyn Store) {
    put(store, "t1/github", 1, Cas::Absent).await.unwrap();
    put(store, "t1/github", 2, Cas::Version(1)).await.unwrap();
    store.delete("t1/github").await.unwrap();
    store.delete("t1/github").await.unwrap(); // absent is not an error
    store.delete("t1/never").await.unwrap();
    assert_eq!(store.read("t1/github").await.unwrap(), None);
    assert!(store.list("t1").await.unwrap().is_empty());
    assert!(matches!(
        put(store, "t1/github", 3, Cas::Version(2)).await,
        Err(StoreError::Conflict)
    ));
    // All versions are gone, so the new record starts again at 1.
    assert_eq!(put(store, "t1/github", 3, Cas::Absent).await.unwrap(), 1);
    assert_eq!(n_of(store, "t1/github").await, Some((1, 3)));
}

pub(crate) async fn list_shows_leaves_and_folders_one_level_down(store: &dyn Store) {
    assert!(store.list("").await.unwrap().is_empty());
    for path in [
        "t1/github",
        "t1/slack",
        "t1/x/deep",
        "t1/x",
        "t2/github",
        "_credgate/clients/a",
        "_credgate/clients/b",
        "_credgate/keys/k1",
        "t10/github",
    ] {
        put(store, path, 1, Cas::Absent).await.unwrap();
    }
    put(store, "t2/github", 2, Cas::Version(1)).await.unwrap();
    store.delete("t2/github").await.unwrap();

    assert_eq!(store.list("").await.unwrap(), ["_credgate/", "t1/", "t10/"]);
    assert_eq!(
        store.list("t1").await.unwrap(),
        ["github", "slack", "x", "x/"]
    );
    assert_eq!(
        store.list("t1/").await.unwrap(),
        ["github", "slack", "x", "x/"]
    );
    assert_eq!(store.list("t1/x").await.unwrap(), ["deep"]);
    assert_eq!(
        store.list("_credgate").await.unwrap(),
        ["clients/", "keys/"]
    );
    assert_eq!(store.list("_credgate/clients").await.unwrap(), ["a", "b"]);
    assert!(store.list("t2").await.unwrap().is_empty());
    assert!(store.list("t1/github").await.unwrap().is_empty());
    assert!(store.list("nope").await.unwrap().is_empty());
}

pub(crate) async fn malformed_paths_are_refused(store: &dyn Store) {
    for path in ["", "/a", "a/", "a//b"] {
        assert!(
            matches!(
                put(store, path, 1, Cas::Any).await,
                Err(StoreError::Refused(_))
            ),
            "{path:?}"
        );
    }
    assert!(store.list("").await.unwrap().is_empty());
}

pub(crate) async fn encrypt_then_decrypt_round_trips_a_batch(store: &dyn Store) {
    let inputs: [&[u8]; 3] = [b"access", b"", b"refresh\0token"];
    let cts = store.encrypt("t1", "t1/github", &inputs).await.unwrap();
    assert_eq!(cts.len(), 3);
    assert!(
        cts.iter().all(|c| c.starts_with(prefix_of(store))),
        "{cts:?}"
    );
    assert!(cts.iter().all(|c| !c.contains("access")));
    // Random nonces: the same plaintext twice gives two ciphertexts.
    let again = store.encrypt("t1", "t1/github", &inputs).await.unwrap();
    assert_ne!(cts[0], again[0]);

    let refs: Vec<&str> = cts.iter().map(String::as_str).collect();
    let plain = store.decrypt("t1", "t1/github", &refs).await.unwrap();
    let plain: Vec<&[u8]> = plain.iter().map(|p| p.as_slice()).collect();
    assert_eq!(plain, inputs);

    // Empty batches are no round trip and no error.
    assert!(
        store
            .encrypt("t1", "t1/github", &[])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .decrypt("t1", "t1/github", &[])
            .await
            .unwrap()
            .is_empty()
    );
}

pub(crate) async fn ciphertexts_only_decrypt_with_their_keyring_and_context(store: &dyn Store) {
    let prefix = prefix_of(store);
    let ct = store
        .encrypt("t1", "t1/github", &[b"tok"])
        .await
        .unwrap()
        .remove(0);
    store.encrypt("t2", "t2/github", &[b"x"]).await.unwrap();
    let decrypt = |keyring: &'static str, context: &'static str, ct: String| async move {
        store.decrypt(keyring, context, &[&ct]).await
    };
    assert!(decrypt("t1", "t1/github", ct.clone()).await.is_ok());

    let mut wrong = vec![
        ("t1", "t1/slack", ct.clone()),
        ("t2", "t1/github", ct.clone()),
        ("t3", "t1/github", ct.clone()),
        ("bad/name", "t1/github", ct.clone()),
        // Inside the sealed bytes, and near the end.
        (
            "t1",
            "t1/github",
            tamper(&ct, (prefix.len() + ct.len()) / 2),
        ),
        ("t1", "t1/github", tamper(&ct, ct.len() - 3)),
        ("t1", "t1/github", ct.replace("v1:", "v9:")),
        ("t1", "t1/github", "credgate:v1:!!notbase64".into()),
    ];
    for (_, other) in PREFIXES {
        wrong.push(("t1", "t1/github", format!("{other}AAAA")));
        if other != prefix {
            wrong.push(("t1", "t1/github", ct.replace(prefix, other)));
        }
    }
    for (keyring, context, ct) in wrong {
        let err = decrypt(keyring, context, ct.clone()).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Decrypt),
            "{keyring} {context} {ct}: {err:?}"
        );
    }
    // One bad item fails the whole batch.
    let err = store
        .decrypt("t1", "t1/github", &[&ct, &format!("{prefix}AAAA")])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Decrypt), "{err:?}");
}

pub(crate) async fn a_record_copied_to_another_path_does_not_decrypt(store: &dyn Store) {
    credentials::save(
        store,
        "acme",
        "github",
        &credential("secret-token"),
        Cas::Absent,
    )
    .await
    .unwrap();
    let raw = store.read("acme/github").await.unwrap().unwrap();
    store
        .write("acme/slack", raw.data, BTreeMap::new(), Cas::Absent)
        .await
        .unwrap();
    let err = credentials::load(store, "acme", "slack").await.unwrap_err();
    assert!(matches!(err, StoreError::Decrypt), "{err:?}");
    assert!(
        credentials::load(store, "acme", "github")
            .await
            .unwrap()
            .is_some()
    );
}
