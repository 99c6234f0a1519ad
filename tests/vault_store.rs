//! The vault store backend against real OpenBao (docs/storage.md).
//!
//! Contract tests (records, check-and-set, Transit) run against the Vault in
//! `VAULT_ADDR`/`VAULT_TOKEN` when both are set, each in its own random KV and
//! Transit mounts, removed afterwards; otherwise each starts a `bao server
//! -dev`. Tests that need to own the server (auth methods, outages, the init
//! script, namespaces) always start their own `bao`.

#[path = "support/openbao.rs"]
mod openbao;
#[path = "support/tokenreview.rs"]
mod tokenreview;

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use credgate::config::{VaultAuth, VaultConfig};
use credgate::credentials::{self, Credential, Status};
use credgate::store::vault::VaultStore;
use credgate::store::{Cas, Store, StoreError};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use openbao::{Bao, Mounts, unique};
use tokenreview::{TokenReview, service_account_jwt};

/// Upper bound for any one test.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);

async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound")
}

/// Polls `check` every 100 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn config(bao: &Bao, m: &Mounts) -> VaultConfig {
    VaultConfig {
        address: bao.addr.clone(),
        kv_mount: m.kv.clone(),
        transit_mount: m.transit.clone(),
        ca_cert: std::env::var_os("VAULT_CACERT")
            .filter(|_| bao.is_external())
            .map(PathBuf::from),
        timeout_ms: 2000,
        max_retries: 2,
        ..VaultConfig::default()
    }
}

async fn open_token(cfg: &VaultConfig, token: &str) -> VaultStore {
    VaultStore::open_with_token(cfg, SecretString::from(token.to_owned()))
        .await
        .expect("open vault store")
}

async fn setup() -> (Bao, Mounts, VaultStore) {
    let bao = Bao::for_contract_tests().await;
    let m = Mounts::new(&bao).await;
    let store = open_token(&config(&bao, &m), &bao.root_token).await;
    (bao, m, store)
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

async fn put(store: &VaultStore, path: &str, n: i64, cas: Cas) -> Result<u64, StoreError> {
    store
        .write(path, obj(json!({ "n": n })), BTreeMap::new(), cas)
        .await
}

fn credential(access: &str, refresh: Option<&str>) -> Credential {
    Credential {
        access_token: SecretString::from(access.to_owned()),
        refresh_token: refresh.map(|r| SecretString::from(r.to_owned())),
        expires_at: Some(OffsetDateTime::parse("2030-01-02T03:04:05Z", &Rfc3339).unwrap()),
        scopes: vec!["repo".into(), "read:org".into()],
        token_type: "Bearer".into(),
        created_by: "admin:ops".into(),
        auto_refresh: true,
        refresh_count: 0,
        status: Status::Active,
    }
}

/// The policy file with its mount names replaced, as init-vault.sh does.
fn credgate_policy(kv: &str, transit: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("vault/policies/credgate.hcl"),
    )
    .unwrap();
    text.replace("path \"secret/", &format!("path \"{kv}/"))
        .replace("path \"transit/", &format!("path \"{transit}/"))
}

async fn write_policy(bao: &Bao, m: &Mounts) -> String {
    let name = unique("credgate");
    bao.must(
        "PUT",
        &format!("sys/policies/acl/{name}"),
        Some(json!({ "policy": credgate_policy(&m.kv, &m.transit) })),
    )
    .await;
    name
}

fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

// --- records -----------------------------------------------------------------

#[tokio::test]
async fn check_and_set_guards_every_write_and_versions_grow() {
    bounded(async {
        let (bao, m, store) = setup().await;
        assert_eq!(store.backend(), "vault");
        store.health().await.expect("healthy");
        assert_eq!(store.read("t1/github").await.unwrap(), None);

        assert_eq!(put(&store, "t1/github", 1, Cas::Absent).await.unwrap(), 1);
        assert!(matches!(
            put(&store, "t1/github", 2, Cas::Absent).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(
            put(&store, "t1/github", 2, Cas::Version(1)).await.unwrap(),
            2
        );
        assert!(matches!(
            put(&store, "t1/github", 3, Cas::Version(1)).await,
            Err(StoreError::Conflict)
        ));
        assert!(matches!(
            put(&store, "t1/other", 3, Cas::Version(1)).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(put(&store, "t1/github", 3, Cas::Any).await.unwrap(), 3);

        let v = store
            .write(
                "t1/github",
                obj(json!({"n": 4, "nested": {"a": [1, 2]}})),
                meta(&[("createdBy", "admin"), ("status", "active")]),
                Cas::Version(3),
            )
            .await
            .unwrap();
        assert_eq!(v, 4);
        let r = store.read("t1/github").await.unwrap().unwrap();
        assert_eq!(r.version, 4);
        assert_eq!(r.data, obj(json!({"n": 4, "nested": {"a": [1, 2]}})));
        assert_eq!(
            r.metadata,
            meta(&[("createdBy", "admin"), ("status", "active")])
        );

        // updated_at is the version's created_time, as Vault reports it.
        let raw = bao
            .must("GET", &format!("{}/metadata/t1/github", m.kv), None)
            .await;
        assert_eq!(raw["data"]["current_version"], 4);
        assert_eq!(
            raw["data"]["versions"]["4"]["created_time"],
            r.updated_at.as_str()
        );
        assert!(OffsetDateTime::parse(&r.updated_at, &Rfc3339).is_ok());

        // Metadata is replaced as a whole, and cleared when empty.
        store
            .write(
                "t1/github",
                obj(json!({"n": 5})),
                meta(&[("x", "y")]),
                Cas::Version(4),
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
                obj(json!({"n": 6})),
                BTreeMap::new(),
                Cas::Version(5),
            )
            .await
            .unwrap();
        assert!(
            store
                .read("t1/github")
                .await
                .unwrap()
                .unwrap()
                .metadata
                .is_empty()
        );

        for bad in ["", "/a", "a/", "a//b"] {
            assert!(
                matches!(
                    put(&store, bad, 1, Cas::Any).await,
                    Err(StoreError::Refused(_))
                ),
                "{bad:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn list_shows_one_level_and_delete_removes_every_version() {
    bounded(async {
        let (_bao, _m, store) = setup().await;
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
            put(&store, path, 1, Cas::Absent).await.unwrap();
        }
        put(&store, "t2/github", 2, Cas::Version(1)).await.unwrap();
        store.delete("t2/github").await.unwrap();
        store.delete("t2/github").await.unwrap(); // absent is not an error

        assert_eq!(store.list("").await.unwrap(), ["_credgate/", "t1/", "t10/"]);
        assert_eq!(
            store.list("t1").await.unwrap(),
            ["github", "slack", "x", "x/"]
        );
        assert_eq!(
            store.list("t1/").await.unwrap(),
            ["github", "slack", "x", "x/"]
        );
        assert_eq!(
            store.list("_credgate").await.unwrap(),
            ["clients/", "keys/"]
        );
        assert_eq!(store.list("_credgate/clients").await.unwrap(), ["a", "b"]);
        assert!(store.list("t2").await.unwrap().is_empty());
        assert!(store.list("nope").await.unwrap().is_empty());

        // All versions are gone: the record starts again at 1.
        assert_eq!(store.read("t2/github").await.unwrap(), None);
        assert!(matches!(
            put(&store, "t2/github", 3, Cas::Version(2)).await,
            Err(StoreError::Conflict)
        ));
        assert_eq!(put(&store, "t2/github", 3, Cas::Absent).await.unwrap(), 1);
    })
    .await;
}

#[tokio::test]
async fn soft_deleted_and_destroyed_versions_read_as_none() {
    bounded(async {
        let (bao, m, store) = setup().await;
        put(&store, "t1/github", 1, Cas::Absent).await.unwrap();
        put(&store, "t1/github", 2, Cas::Version(1)).await.unwrap();

        // Soft delete of the current version, as `bao kv delete` does.
        bao.must("DELETE", &format!("{}/data/t1/github", m.kv), None)
            .await;
        assert_eq!(store.read("t1/github").await.unwrap(), None);
        // Still listed (its metadata exists) but absent to readers, so
        // `Absent` may write over it; the version count carries on.
        assert_eq!(store.list("t1").await.unwrap(), ["github"]);
        assert_eq!(put(&store, "t1/github", 3, Cas::Absent).await.unwrap(), 3);
        assert_eq!(store.read("t1/github").await.unwrap().unwrap().data["n"], 3);
        assert!(matches!(
            put(&store, "t1/github", 4, Cas::Absent).await,
            Err(StoreError::Conflict)
        ));

        // Destroyed version.
        bao.must(
            "POST",
            &format!("{}/destroy/t1/github", m.kv),
            Some(json!({"versions": [3]})),
        )
        .await;
        assert_eq!(store.read("t1/github").await.unwrap(), None);
        assert_eq!(
            put(&store, "t1/github", 4, Cas::Version(3)).await.unwrap(),
            4
        );
    })
    .await;
}

// --- credentials and Transit -------------------------------------------------

#[tokio::test]
async fn credential_records_have_the_spec_layout_in_kv_and_transit() {
    bounded(async {
        let (bao, m, store) = setup().await;
        let c = credential("gho_access_123", Some("ghr_refresh_456"));
        let v = credentials::save(&store, "acme", "github", &c, Cas::Absent)
            .await
            .unwrap();
        assert_eq!(v, 1);

        let raw = bao
            .must("GET", &format!("{}/data/acme/github", m.kv), None)
            .await;
        let data = raw["data"]["data"].as_object().unwrap();
        let mut fields: Vec<&str> = data.keys().map(String::as_str).collect();
        fields.sort_unstable();
        assert_eq!(
            fields,
            [
                "accessToken",
                "expiresAt",
                "integration",
                "refreshToken",
                "scopes",
                "tokenType"
            ]
        );
        let access = data["accessToken"].as_str().unwrap();
        let refresh = data["refreshToken"].as_str().unwrap();
        for ct in [access, refresh] {
            assert!(ct.starts_with("vault:v1:"), "{ct}");
        }
        assert!(!raw.to_string().contains("gho_access_123"));
        assert!(!raw.to_string().contains("ghr_refresh_456"));
        assert_eq!(data["expiresAt"], "2030-01-02T03:04:05Z");
        assert_eq!(data["scopes"], json!(["repo", "read:org"]));
        assert_eq!(data["tokenType"], "Bearer");
        assert_eq!(data["integration"], "github");
        assert_eq!(
            raw["data"]["metadata"]["custom_metadata"],
            json!({
                "createdBy": "admin:ops",
                "integration": "github",
                "autoRefresh": "true",
                "refreshCount": "0",
                "status": "active",
            })
        );

        // A derived key named after the tenant; context = base64(path).
        let key = bao
            .must("GET", &format!("{}/keys/acme", m.transit), None)
            .await;
        assert_eq!(key["data"]["derived"], true);
        let plain = bao
            .must(
                "POST",
                &format!("{}/decrypt/acme", m.transit),
                Some(json!({"ciphertext": access, "context": B64.encode("acme/github")})),
            )
            .await;
        assert_eq!(
            B64.decode(plain["data"]["plaintext"].as_str().unwrap())
                .unwrap(),
            b"gho_access_123"
        );
        let (code, _) = bao
            .root(
                "POST",
                &format!("{}/decrypt/acme", m.transit),
                Some(json!({"ciphertext": access})),
            )
            .await;
        assert_eq!(code, 400, "a derived key needs the context");

        let stored = credentials::load(&store, "acme", "github")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.version, 1);
        assert_eq!(
            stored.credential.access_token.expose_secret(),
            "gho_access_123"
        );
        assert_eq!(
            stored
                .credential
                .refresh_token
                .as_ref()
                .unwrap()
                .expose_secret(),
            "ghr_refresh_456"
        );
        assert_eq!(stored.credential.created_by, "admin:ops");
        assert!(stored.credential.auto_refresh);

        // A refresh: new version, metadata follows.
        let mut next = credential("gho_access_789", Some("ghr_refresh_000"));
        next.refresh_count = 1;
        assert!(matches!(
            credentials::save(&store, "acme", "github", &next, Cas::Absent).await,
            Err(StoreError::Conflict)
        ));
        let v = credentials::save(&store, "acme", "github", &next, Cas::Version(1))
            .await
            .unwrap();
        assert_eq!(v, 2);
        let raw = bao
            .must("GET", &format!("{}/data/acme/github", m.kv), None)
            .await;
        assert_eq!(
            raw["data"]["metadata"]["custom_metadata"]["refreshCount"],
            "1"
        );
        let stored = credentials::load(&store, "acme", "github")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.credential.access_token.expose_secret(),
            "gho_access_789"
        );
        assert_eq!(stored.credential.refresh_count, 1);
    })
    .await;
}

#[tokio::test]
async fn ciphertexts_only_decrypt_with_their_keyring_and_path() {
    bounded(async {
        let (bao, m, store) = setup().await;
        let inputs: [&[u8]; 3] = [b"access", b"", b"refresh\0token"];
        let cts = store.encrypt("t1", "t1/github", &inputs).await.unwrap();
        assert_eq!(cts.len(), 3);
        assert!(cts.iter().all(|c| c.starts_with("vault:v1:")));
        let refs: Vec<&str> = cts.iter().map(String::as_str).collect();
        let plain = store.decrypt("t1", "t1/github", &refs).await.unwrap();
        let plain: Vec<&[u8]> = plain.iter().map(|p| p.as_slice()).collect();
        assert_eq!(plain, inputs);
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

        store.encrypt("t2", "t2/github", &[b"x"]).await.unwrap();
        let ct = cts[0].clone();
        let mut tampered = ct.clone().into_bytes();
        // Inside the sealed bytes (the last base64 digits may be padding bits).
        let i = tampered.len() / 2;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        for (keyring, context, ct) in [
            ("t1", "t1/slack", ct.clone()),
            ("t2", "t1/github", ct.clone()),
            ("t3", "t1/github", ct.clone()),
            ("t1", "t1/github", tampered),
            ("t1", "t1/github", ct.replace("vault:v1:", "vault:v9:")),
            ("t1", "t1/github", "vault:v1:AAAA".into()),
            ("t1", "t1/github", "credgate:v1:AAAA".into()),
            ("bad/name", "t1/github", ct.clone()),
        ] {
            let err = store.decrypt(keyring, context, &[&ct]).await.unwrap_err();
            assert!(
                matches!(err, StoreError::Decrypt),
                "{keyring} {context}: {err:?}"
            );
        }
        // One bad item fails the whole batch.
        let err = store
            .decrypt("t1", "t1/github", &[&cts[0], "vault:v1:AAAA"])
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Decrypt));

        // A record copied to another path does not decrypt there.
        let c = credential("secret-token", None);
        credentials::save(&store, "acme", "github", &c, Cas::Absent)
            .await
            .unwrap();
        let raw = bao
            .must("GET", &format!("{}/data/acme/github", m.kv), None)
            .await;
        bao.must(
            "POST",
            &format!("{}/data/acme/slack", m.kv),
            Some(json!({"data": raw["data"]["data"]})),
        )
        .await;
        let err = credentials::load(&store, "acme", "slack")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Decrypt), "{err:?}");
        assert!(
            credentials::load(&store, "acme", "github")
                .await
                .unwrap()
                .is_some()
        );
    })
    .await;
}

#[tokio::test]
async fn an_existing_non_derived_key_is_used_without_context() {
    bounded(async {
        let (bao, m, store) = setup().await;
        bao.must(
            "POST",
            &format!("{}/keys/legacy", m.transit),
            Some(json!({"derived": false})),
        )
        .await;
        let ct = store
            .encrypt("legacy", "legacy/github", &[b"tok"])
            .await
            .unwrap()
            .remove(0);
        // Readable without any context: it was encrypted without one.
        let plain = bao
            .must(
                "POST",
                &format!("{}/decrypt/legacy", m.transit),
                Some(json!({"ciphertext": ct})),
            )
            .await;
        assert_eq!(plain["data"]["plaintext"], B64.encode("tok"));
        let got = store
            .decrypt("legacy", "legacy/github", &[&ct])
            .await
            .unwrap();
        assert_eq!(got[0].as_slice(), b"tok");
        // The key was left as it was.
        let key = bao
            .must("GET", &format!("{}/keys/legacy", m.transit), None)
            .await;
        assert_eq!(key["data"]["derived"], false);
    })
    .await;
}

#[tokio::test]
async fn rewrap_after_rotation_moves_ciphertexts_to_the_latest_version() {
    bounded(async {
        let (bao, m, store) = setup().await;
        credentials::save(
            &store,
            "acme",
            "github",
            &credential("a1", Some("r1")),
            Cas::Absent,
        )
        .await
        .unwrap();
        credentials::save(
            &store,
            "acme",
            "slack",
            &credential("a2", None),
            Cas::Absent,
        )
        .await
        .unwrap();
        put(&store, "acme/x/deep", 1, Cas::Absent).await.unwrap(); // a folder: skipped
        assert_eq!(
            store.rewrap_tenant("acme").await.unwrap(),
            0,
            "nothing to do yet"
        );

        bao.must("POST", &format!("{}/keys/acme/rotate", m.transit), None)
            .await;
        assert_eq!(store.rewrap_tenant("acme").await.unwrap(), 2);

        for (name, fields) in [("github", 2), ("slack", 1)] {
            let raw = bao
                .must("GET", &format!("{}/data/acme/{name}", m.kv), None)
                .await;
            assert_eq!(raw["data"]["metadata"]["version"], 2, "{name}");
            let data = raw["data"]["data"].as_object().unwrap();
            let cts: Vec<&str> = ["accessToken", "refreshToken"]
                .iter()
                .filter_map(|f| data.get(*f)?.as_str())
                .collect();
            assert_eq!(cts.len(), fields);
            assert!(cts.iter().all(|c| c.starts_with("vault:v2:")), "{cts:?}");
            assert_eq!(
                raw["data"]["metadata"]["custom_metadata"]["createdBy"],
                "admin:ops"
            );
        }
        // Old key versions can go: everything decrypts with v2 alone.
        bao.must(
            "POST",
            &format!("{}/keys/acme/config", m.transit),
            Some(json!({"min_decryption_version": 2})),
        )
        .await;
        let s = credentials::load(&store, "acme", "github")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.credential.access_token.expose_secret(), "a1");
        assert_eq!(s.credential.refresh_token.unwrap().expose_secret(), "r1");
        let s = credentials::load(&store, "acme", "slack")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.credential.access_token.expose_secret(), "a2");

        assert_eq!(store.rewrap_tenant("acme").await.unwrap(), 0);
        assert_eq!(store.rewrap_tenant("nobody").await.unwrap(), 0);
    })
    .await;
}

// --- auth ----------------------------------------------------------------------

#[tokio::test]
async fn token_auth_renews_a_short_lived_token() {
    bounded(async {
        let bao = Bao::dev().await;
        let m = Mounts::new(&bao).await;
        let cfg = config(&bao, &m);

        let err = VaultStore::open_with_token(&cfg, SecretString::from("s.not-a-token".to_owned()))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Refused(_)), "{err:?}");

        // A child of root (same policy) that lives 3 s unless renewed.
        let created = bao
            .must(
                "POST",
                "auth/token/create",
                Some(json!({"ttl": "3s", "explicit_max_ttl": "5m", "renewable": true})),
            )
            .await;
        let token = created["auth"]["client_token"].as_str().unwrap();
        let accessor = created["auth"]["accessor"].as_str().unwrap().to_owned();
        let started = Instant::now();
        let store = open_token(&cfg, token).await;
        put(&store, "t1/a", 1, Cas::Absent).await.unwrap();

        eventually(Duration::from_secs(20), "two renewals", || async {
            store.auth_stats().renewals >= 2
        })
        .await;
        assert!(
            started.elapsed() > Duration::from_secs(3),
            "outlived its first TTL"
        );
        assert_eq!(store.auth_stats().logins, 0);
        put(&store, "t1/a", 2, Cas::Version(1)).await.unwrap();
        let info = bao
            .must(
                "POST",
                "auth/token/lookup-accessor",
                Some(json!({"accessor": accessor})),
            )
            .await;
        assert!(info["data"]["ttl"].as_u64().unwrap() > 0);
    })
    .await;
}

/// AppRole mount + role issuing tokens with only the credgate policy.
async fn approle(bao: &Bao, m: &Mounts, dir: &Path, ttl: &str) -> VaultConfig {
    let mount = unique("approle");
    let policy = write_policy(bao, m).await;
    bao.must(
        "POST",
        &format!("sys/auth/{mount}"),
        Some(json!({"type": "approle"})),
    )
    .await;
    bao.must(
        "POST",
        &format!("auth/{mount}/role/credgate"),
        Some(json!({
            "token_policies": [policy],
            "token_no_default_policy": true,
            "token_ttl": ttl,
            "token_max_ttl": "10m",
        })),
    )
    .await;
    let role_id = bao
        .must("GET", &format!("auth/{mount}/role/credgate/role-id"), None)
        .await;
    let secret_id = bao
        .must(
            "POST",
            &format!("auth/{mount}/role/credgate/secret-id"),
            None,
        )
        .await;
    VaultConfig {
        auth: VaultAuth::Approle,
        approle_mount: mount,
        role_id_file: Some(write_file(
            dir,
            "role_id",
            &format!("{}\n", role_id["data"]["role_id"].as_str().unwrap()),
        )),
        secret_id_file: Some(write_file(
            dir,
            "secret_id",
            secret_id["data"]["secret_id"].as_str().unwrap(),
        )),
        ..config(bao, m)
    }
}

#[tokio::test]
async fn approle_logs_in_renews_and_logs_in_again_when_revoked() {
    bounded(async {
        let bao = Bao::dev().await;
        let m = Mounts::new(&bao).await;
        let dir = tempfile::tempdir().unwrap();
        let cfg = approle(&bao, &m, dir.path(), "3s").await;

        let store = VaultStore::open(&cfg).await.expect("approle open");
        assert_eq!(store.auth_stats().logins, 1);
        let c = credential("tok", Some("ref"));
        credentials::save(&store, "acme", "github", &c, Cas::Absent)
            .await
            .unwrap();

        let started = Instant::now();
        eventually(Duration::from_secs(20), "a renewal", || async {
            store.auth_stats().renewals >= 2
        })
        .await;
        assert!(started.elapsed() > Duration::from_secs(3));
        assert_eq!(store.auth_stats().logins, 1, "renewed, not replaced");
        assert!(
            credentials::load(&store, "acme", "github")
                .await
                .unwrap()
                .is_some()
        );

        // Revoke every token of the mount: the next call gets 403, logs in
        // again, and succeeds.
        bao.must(
            "PUT",
            &format!("sys/leases/revoke-prefix/auth/{}/login", cfg.approle_mount),
            Some(json!({"sync": true})),
        )
        .await;
        assert!(
            credentials::load(&store, "acme", "github")
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(store.auth_stats().logins, 2);

        // Bad or missing credentials fail at open, naming the problem.
        let wrong = VaultConfig {
            secret_id_file: Some(write_file(dir.path(), "wrong", "not-the-secret-id")),
            ..cfg.clone()
        };
        let err = VaultStore::open(&wrong).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Refused(ref m) if m.contains("invalid")),
            "{err:?}"
        );
        let missing = VaultConfig {
            role_id_file: Some(dir.path().join("absent")),
            ..cfg.clone()
        };
        let err = VaultStore::open(&missing).await.unwrap_err();
        assert!(
            matches!(err, StoreError::Refused(ref m) if m.contains("cannot read")),
            "{err:?}"
        );
        let unset = VaultConfig {
            secret_id_file: None,
            ..cfg
        };
        assert!(matches!(
            VaultStore::open(&unset).await,
            Err(StoreError::Refused(_))
        ));
    })
    .await;
}

/// A throwaway CA certificate (PEM), for `kubernetes_ca_cert`.
fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[tokio::test]
async fn kubernetes_login_goes_through_token_review() {
    bounded(async {
        let bao = Bao::dev().await;
        let m = Mounts::new(&bao).await;
        let dir = tempfile::tempdir().unwrap();
        let jwt = service_account_jwt("credgate", "credgate", "uid-1");
        let review = TokenReview::start(jwt.clone(), "credgate", "credgate", "uid-1").await;

        let mount = unique("kubernetes");
        let policy = write_policy(&bao, &m).await;
        bao.must(
            "POST",
            &format!("sys/auth/{mount}"),
            Some(json!({"type": "kubernetes"})),
        )
        .await;
        bao.must(
            "POST",
            &format!("auth/{mount}/config"),
            Some(json!({
                "kubernetes_host": review.url,
                "kubernetes_ca_cert": ca_pem(),
                "disable_local_ca_jwt": true,
            })),
        )
        .await;
        bao.must(
            "POST",
            &format!("auth/{mount}/role/credgate"),
            Some(json!({
                "bound_service_account_names": ["credgate"],
                "bound_service_account_namespaces": ["credgate"],
                "token_policies": [policy],
                "token_no_default_policy": true,
                "token_ttl": "1m",
            })),
        )
        .await;
        let cfg = VaultConfig {
            auth: VaultAuth::Kubernetes,
            kubernetes_mount: mount,
            role: Some("credgate".into()),
            jwt_file: write_file(dir.path(), "token", &jwt),
            ..config(&bao, &m)
        };
        let store = VaultStore::open(&cfg).await.expect("kubernetes open");
        assert_eq!(store.auth_stats().logins, 1);
        assert!(review.reviews() >= 1, "Vault asked the TokenReview API");
        credentials::save(
            &store,
            "acme",
            "github",
            &credential("t", None),
            Cas::Absent,
        )
        .await
        .unwrap();
        assert!(
            credentials::load(&store, "acme", "github")
                .await
                .unwrap()
                .is_some()
        );

        // Another service account's JWT is turned away.
        let other = VaultConfig {
            jwt_file: write_file(
                dir.path(),
                "other",
                &service_account_jwt("credgate", "intruder", "uid-2"),
            ),
            ..cfg.clone()
        };
        assert!(matches!(
            VaultStore::open(&other).await,
            Err(StoreError::Refused(_))
        ));
        // A role that does not exist.
        let norole = VaultConfig {
            role: Some("nope".into()),
            ..cfg
        };
        assert!(matches!(
            VaultStore::open(&norole).await,
            Err(StoreError::Refused(_))
        ));
    })
    .await;
}

// --- outages -------------------------------------------------------------------

/// A CA and a server certificate for 127.0.0.1, as PEM (ca, cert, key).
fn tls_material() -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "credgate test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

/// vault/config.hcl with its paths and addresses pointed at `dir` and free
/// ports on 127.0.0.1.
fn production_config(dir: &Path, port: u16, cluster_port: u16) -> PathBuf {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("vault/config.hcl"))
            .unwrap();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut out = text;
    for (from, to) in [
        ("/vault/data", data.display().to_string()),
        (
            "/vault/tls/tls.crt",
            dir.join("tls.crt").display().to_string(),
        ),
        (
            "/vault/tls/tls.key",
            dir.join("tls.key").display().to_string(),
        ),
        ("0.0.0.0:8200", format!("127.0.0.1:{port}")),
        ("0.0.0.0:8201", format!("127.0.0.1:{cluster_port}")),
        (
            "https://vault.credgate.svc:8200",
            format!("https://127.0.0.1:{port}"),
        ),
        (
            "https://vault.credgate.svc:8201",
            format!("https://127.0.0.1:{cluster_port}"),
        ),
    ] {
        assert!(out.contains(from), "vault/config.hcl no longer has {from}");
        out = out.replace(from, &to);
    }
    let path = dir.join("config.hcl");
    std::fs::write(&path, out).unwrap();
    path
}

async fn unseal(bao: &Bao, key: &str) {
    bao.must("PUT", "sys/unseal", Some(json!({"key": key})))
        .await;
    eventually(Duration::from_secs(30), "an active node", || async {
        bao.call(None, "GET", "sys/health", None).await.0 == 200
    })
    .await;
}

async fn unavailable_within<T: std::fmt::Debug>(
    bound: Duration,
    f: impl Future<Output = Result<T, StoreError>>,
) -> String {
    let started = Instant::now();
    let result = f.await;
    let took = started.elapsed();
    match result {
        Err(StoreError::Unavailable(why)) if took < bound => why,
        other => panic!("expected Unavailable within {bound:?}, got {other:?} after {took:?}"),
    }
}

#[tokio::test]
async fn sealed_or_killed_vault_is_unavailable_then_recovers() {
    bounded(async {
        // The production config (raft storage, TLS) so state survives a
        // restart; VAULT_CACERT is how credgate trusts it.
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = tls_material();
        std::fs::write(dir.path().join("tls.crt"), &cert).unwrap();
        std::fs::write(dir.path().join("tls.key"), &key).unwrap();
        let ca_file = write_file(dir.path(), "ca.pem", &ca);
        let port = openbao::free_port_pair();
        let cluster_port = port + 1;
        let conf = production_config(dir.path(), port, cluster_port);
        let addr = format!("https://127.0.0.1:{port}");
        let mut bao = Bao::with_config(&conf, addr.clone(), ca.as_bytes(), dir).await;

        let init = bao
            .must(
                "PUT",
                "sys/init",
                Some(json!({"secret_shares": 1, "secret_threshold": 1})),
            )
            .await;
        let unseal_key = init["keys"][0].as_str().unwrap().to_owned();
        bao.root_token = init["root_token"].as_str().unwrap().to_owned();
        unseal(&bao, &unseal_key).await;
        let m = Mounts::new(&bao).await;
        let cfg = VaultConfig {
            ca_cert: Some(ca_file),
            timeout_ms: 5000,
            max_retries: 2,
            ..config(&bao, &m)
        };
        let store = open_token(&cfg, &bao.root_token).await;
        credentials::save(
            &store,
            "acme",
            "github",
            &credential("tok", None),
            Cas::Absent,
        )
        .await
        .unwrap();

        // Without the CA, TLS verification fails: Unavailable, not a crash.
        let untrusted = open_token(
            &VaultConfig {
                ca_cert: None,
                ..cfg.clone()
            },
            &bao.root_token,
        )
        .await;
        let why = unavailable_within(Duration::from_secs(5), untrusted.health()).await;
        assert!(why.contains("cannot reach vault"), "{why}");

        // Sealed: 503 → Unavailable, health names it.
        bao.must("PUT", "sys/seal", None).await;
        let why = unavailable_within(Duration::from_secs(5), store.health()).await;
        assert!(why.contains("sealed"), "{why}");
        let why = unavailable_within(Duration::from_secs(5), store.read("acme/github")).await;
        assert!(why.contains("sealed"), "{why}");
        unseal(&bao, &unseal_key).await;
        eventually(Duration::from_secs(30), "the store to recover", || async {
            store.health().await.is_ok() && store.read("acme/github").await.is_ok()
        })
        .await;
        assert!(
            credentials::load(&store, "acme", "github")
                .await
                .unwrap()
                .is_some()
        );

        // Killed: connection refused → Unavailable promptly (retries included).
        bao.kill();
        unavailable_within(Duration::from_secs(3), store.read("acme/github")).await;
        unavailable_within(Duration::from_secs(3), store.health()).await;
        unavailable_within(
            Duration::from_secs(3),
            credentials::save(&store, "acme", "slack", &credential("x", None), Cas::Absent),
        )
        .await;

        // Restarted (sealed until unsealed), same store instance: works again,
        // with the data from before.
        bao.restart(&[503]).await;
        unavailable_within(Duration::from_secs(5), store.read("acme/github")).await;
        unseal(&bao, &unseal_key).await;
        eventually(Duration::from_secs(30), "the store to recover", || async {
            store.health().await.is_ok() && store.read("acme/github").await.is_ok()
        })
        .await;
        let s = credentials::load(&store, "acme", "github")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s.credential.access_token.expose_secret(), "tok");
        credentials::save(&store, "acme", "slack", &credential("x", None), Cas::Absent)
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_or_silent_vault_fails_fast_and_does_not_block_open() {
    bounded(async {
        // Nothing listens: open still succeeds (credgate can start and serve
        // /readyz), calls are Unavailable at once.
        let closed = openbao::free_port();
        let cfg = VaultConfig {
            address: format!("http://127.0.0.1:{closed}"),
            timeout_ms: 500,
            max_retries: 3,
            ..VaultConfig::default()
        };
        let store = open_token(&cfg, "s.token").await;
        let why = unavailable_within(Duration::from_secs(3), store.read("t1/a")).await;
        assert!(why.contains("cannot reach vault"), "{why}");

        let approle_cfg = VaultConfig {
            auth: VaultAuth::Approle,
            role_id_file: Some(PathBuf::from("/dev/null")),
            secret_id_file: Some(PathBuf::from("/dev/null")),
            ..cfg.clone()
        };
        // Unreadable (empty) credentials are a misconfiguration, not an outage.
        assert!(matches!(
            VaultStore::open(&approle_cfg).await,
            Err(StoreError::Refused(_))
        ));

        // Accepts connections but never answers: bounded by timeout_ms, not
        // retried (the whole budget was spent).
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let store = open_token(
            &VaultConfig {
                address: format!("http://{addr}"),
                ..cfg
            },
            "s.token",
        )
        .await;
        let why = unavailable_within(Duration::from_millis(1500), store.read("t1/a")).await;
        assert!(why.contains("did not answer within 500 ms"), "{why}");
        hold.abort();
    })
    .await;
}

#[tokio::test]
async fn a_store_opened_before_vault_starts_logs_in_once_it_is_up() {
    bounded(async {
        let port = openbao::free_port_pair();
        let dir = tempfile::tempdir().unwrap();
        let (role_id, secret_id) = (unique("role"), unique("secret"));
        let (kv, transit) = (unique("kv"), unique("transit"));
        let cfg = VaultConfig {
            address: format!("http://127.0.0.1:{port}"),
            kv_mount: kv.clone(),
            transit_mount: transit.clone(),
            auth: VaultAuth::Approle,
            role_id_file: Some(write_file(dir.path(), "role_id", &role_id)),
            secret_id_file: Some(write_file(dir.path(), "secret_id", &secret_id)),
            timeout_ms: 1000,
            max_retries: 2,
            ..VaultConfig::default()
        };
        let store = VaultStore::open(&cfg)
            .await
            .expect("opens while vault is down");
        assert_eq!(store.auth_stats().logins, 0);
        // Concurrent calls share one failed login instead of queueing for
        // their own.
        let started = Instant::now();
        let calls = futures_util::future::join_all((0..8).map(|i| {
            let store = &store;
            async move { store.read(&format!("t1/x{i}")).await }
        }))
        .await;
        assert!(
            calls
                .iter()
                .all(|r| matches!(r, Err(StoreError::Unavailable(_))))
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );

        // Vault comes up and is set up to accept those credentials.
        let bao = Bao::dev_on(port).await;
        let m = Mounts::named(&bao, kv, transit).await;
        let policy = write_policy(&bao, &m).await;
        bao.must("POST", "sys/auth/approle", Some(json!({"type": "approle"})))
            .await;
        bao.must(
            "POST",
            "auth/approle/role/credgate",
            Some(json!({"token_policies": [policy], "token_no_default_policy": true})),
        )
        .await;
        bao.must(
            "POST",
            "auth/approle/role/credgate/role-id",
            Some(json!({"role_id": role_id})),
        )
        .await;
        bao.must(
            "POST",
            "auth/approle/role/credgate/custom-secret-id",
            Some(json!({"secret_id": secret_id})),
        )
        .await;
        // No restart, no reopen: the next call logs in.
        eventually(Duration::from_secs(15), "the store to log in", || async {
            store.read("acme/github").await.is_ok()
        })
        .await;
        assert_eq!(store.auth_stats().logins, 1);
        credentials::save(
            &store,
            "acme",
            "github",
            &credential("t", None),
            Cas::Absent,
        )
        .await
        .unwrap();
        assert!(
            credentials::load(&store, "acme", "github")
                .await
                .unwrap()
                .is_some()
        );
        store.health().await.unwrap();
    })
    .await;
}

// --- deployment files ------------------------------------------------------------

#[tokio::test]
async fn init_script_policy_is_sufficient_and_narrow() {
    bounded(async {
        let bao = Bao::dev().await;
        let dir = tempfile::tempdir().unwrap();
        let jwt = service_account_jwt("credgate", "credgate", "uid-7");
        let review = TokenReview::start(jwt.clone(), "credgate", "credgate", "uid-7").await;
        let ca = write_file(dir.path(), "k8s-ca.pem", &ca_pem());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("vault/scripts/init-vault.sh");
        let bin_dir = openbao::bao_bin().parent().unwrap().to_owned();
        let run = || {
            let mut cmd = std::process::Command::new("bash");
            cmd.arg(&script)
                .env_clear()
                .env("PATH", format!("{}:/usr/bin:/bin", bin_dir.display()))
                .env("HOME", dir.path())
                .env("BAO_ADDR", &bao.addr)
                .env("BAO_TOKEN", &bao.root_token)
                .env("KUBERNETES_HOST", &review.url)
                .env("KUBERNETES_CA_CERT", &ca)
                .env("KUBERNETES_DISABLE_LOCAL_CA_JWT", "true")
                .env("TOKEN_TTL", "30s");
            cmd
        };
        for attempt in 1..=2 {
            let mut cmd = run();
            let out = tokio::task::spawn_blocking(move || cmd.output())
                .await
                .unwrap()
                .unwrap();
            assert!(
                out.status.success(),
                "init-vault.sh run {attempt}: {}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // AppRole with the script's role: a token with only the policy.
        let role_id = bao
            .must("GET", "auth/approle/role/credgate/role-id", None)
            .await;
        let role_id = role_id["data"]["role_id"].as_str().unwrap().to_owned();
        let secret_id = bao
            .must("POST", "auth/approle/role/credgate/secret-id", None)
            .await;
        let secret_id = secret_id["data"]["secret_id"].as_str().unwrap().to_owned();
        let cfg = VaultConfig {
            address: bao.addr.clone(),
            auth: VaultAuth::Approle,
            role_id_file: Some(write_file(dir.path(), "role_id", &role_id)),
            secret_id_file: Some(write_file(dir.path(), "secret_id", &secret_id)),
            timeout_ms: 2000,
            max_retries: 1,
            ..VaultConfig::default()
        };
        let store = VaultStore::open(&cfg).await.expect("approle open");

        // Everything the store does is allowed.
        store.health().await.unwrap();
        credentials::save(
            &store,
            "acme",
            "github",
            &credential("a", Some("r")),
            Cas::Absent,
        )
        .await
        .unwrap();
        credentials::save(&store, "acme", "slack", &credential("b", None), Cas::Absent)
            .await
            .unwrap();
        let mut c = credential("a2", Some("r2"));
        c.refresh_count = 1;
        credentials::save(&store, "acme", "github", &c, Cas::Version(1))
            .await
            .unwrap();
        assert!(
            credentials::load(&store, "acme", "github")
                .await
                .unwrap()
                .is_some()
        );
        put(&store, "_credgate/clients/c1", 1, Cas::Absent)
            .await
            .unwrap();
        let ct = store
            .encrypt("_credgate", "_credgate/keys/k1", &[b"k"])
            .await
            .unwrap();
        store
            .decrypt("_credgate", "_credgate/keys/k1", &[&ct[0]])
            .await
            .unwrap();
        assert_eq!(store.list("acme").await.unwrap(), ["github", "slack"]);
        assert_eq!(store.list("").await.unwrap(), ["_credgate/", "acme/"]);
        bao.must("POST", "transit/keys/acme/rotate", None).await; // the operator rotates
        assert_eq!(store.rewrap_tenant("acme").await.unwrap(), 2);
        store.delete("acme/slack").await.unwrap();
        assert_eq!(store.read("acme/slack").await.unwrap(), None);
        assert_eq!(store.auth_stats().logins, 1, "no 403 along the way");

        // And nothing else.
        let login = bao
            .call(
                None,
                "POST",
                "auth/approle/login",
                Some(json!({"role_id": role_id, "secret_id": secret_id})),
            )
            .await
            .1;
        let token = login["auth"]["client_token"].as_str().unwrap().to_owned();
        assert_eq!(login["auth"]["token_policies"], json!(["credgate"]));
        for (method, path, body) in [
            ("GET", "sys/mounts", None),
            ("GET", "sys/policies/acl/credgate", None),
            ("POST", "auth/token/create", Some(json!({}))),
            ("POST", "transit/keys/acme/rotate", None),
            (
                "POST",
                "transit/keys/acme/config",
                Some(json!({"deletion_allowed": true})),
            ),
            ("DELETE", "transit/keys/acme", None),
            ("GET", "transit/export/encryption-key/acme", None),
            (
                "POST",
                "transit/datakey/plaintext/acme",
                Some(json!({"context": "YQ=="})),
            ),
            (
                "POST",
                "secret/destroy/acme/github",
                Some(json!({"versions": [1]})),
            ),
            (
                "POST",
                "secret/undelete/acme/github",
                Some(json!({"versions": [1]})),
            ),
            ("GET", "secret/metadata/acme/github", None),
            (
                "POST",
                "secret/metadata/new/record",
                Some(json!({"custom_metadata": {}})),
            ),
            ("GET", "cubbyhole/x", None),
            ("GET", "auth/approle/role/credgate/role-id", None),
        ] {
            let (code, reply) = bao.call(Some(&token), method, path, body).await;
            assert_eq!(code, 403, "{method} {path} should be denied: {reply}");
        }
        // A store pointed at a mount outside the policy is refused.
        bao.must(
            "POST",
            "sys/mounts/other",
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
        let outside = VaultStore::open(&VaultConfig {
            kv_mount: "other".into(),
            ..cfg
        })
        .await
        .unwrap();
        let err = put(&outside, "acme/github", 1, Cas::Absent)
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::Refused(ref m) if m.contains("permission denied")),
            "{err:?}"
        );

        // The script's Kubernetes role logs in through TokenReview too.
        let k8s = VaultStore::open(&VaultConfig {
            auth: VaultAuth::Kubernetes,
            role: Some("credgate".into()),
            jwt_file: write_file(dir.path(), "jwt", &jwt),
            ..VaultConfig {
                address: bao.addr.clone(),
                ..VaultConfig::default()
            }
        })
        .await
        .expect("kubernetes open");
        assert!(
            credentials::load(&k8s, "acme", "github")
                .await
                .unwrap()
                .is_some()
        );
        assert!(review.reviews() >= 1);
    })
    .await;
}

#[tokio::test]
async fn the_namespace_header_scopes_every_call() {
    bounded(async {
        let bao = Bao::dev().await;
        bao.must("POST", "sys/namespaces/team1", None).await;
        let in_ns = |method: &str, path: &str, body: Option<Value>| {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let mut req = bao
                .http
                .request(method, format!("{}/v1/{path}", bao.addr))
                .header("X-Vault-Token", &bao.root_token)
                .header("X-Vault-Namespace", "team1");
            if let Some(b) = body {
                req = req.json(&b);
            }
            async move {
                let resp = req.send().await.unwrap();
                let code = resp.status().as_u16();
                (code, resp.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let (code, _) = in_ns(
            "POST",
            "sys/mounts/kv",
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
        assert_eq!(code, 204);
        let (code, _) = in_ns(
            "POST",
            "sys/mounts/transit",
            Some(json!({"type": "transit"})),
        )
        .await;
        assert_eq!(code, 204);

        let cfg = VaultConfig {
            address: bao.addr.clone(),
            namespace: Some("team1".into()),
            kv_mount: "kv".into(),
            transit_mount: "transit".into(),
            ..VaultConfig::default()
        };
        let store = open_token(&cfg, &bao.root_token).await;
        credentials::save(
            &store,
            "acme",
            "github",
            &credential("t", None),
            Cas::Absent,
        )
        .await
        .unwrap();
        let (code, raw) = in_ns("GET", "kv/data/acme/github", None).await;
        assert_eq!(code, 200);
        assert!(
            raw["data"]["data"]["accessToken"]
                .as_str()
                .unwrap()
                .starts_with("vault:v1:")
        );
        let (code, _) = in_ns("GET", "transit/keys/acme", None).await;
        assert_eq!(code, 200);
        // Nothing landed in the root namespace.
        assert_eq!(bao.root("GET", "kv/data/acme/github", None).await.0, 404);
        assert!(
            credentials::load(&store, "acme", "github")
                .await
                .unwrap()
                .is_some()
        );
    })
    .await;
}

/// A raw HTTP/1.1 server: answers every request with `answer(path)` and
/// keeps each request head it got.
async fn raw_server(
    answer: impl Fn(&str) -> String + Send + Sync + 'static,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (log, answer) = (seen.clone(), std::sync::Arc::new(answer));
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (log, answer) = (log.clone(), answer.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                log.lock().unwrap().push(head);
                let _ = s.write_all(answer(&path).as_bytes()).await;
            });
        }
    });
    (addr, seen, task)
}

#[tokio::test]
async fn the_vault_client_never_follows_a_redirect_with_the_token() {
    bounded(async {
        // Where a hostile or misconfigured Vault address would send the token.
        let (elsewhere, received, t1) = raw_server(|_| {
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".into()
        })
        .await;
        let target = elsewhere.clone();
        let (vault, asked, t2) = raw_server(move |path| {
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        })
        .await;
        let cfg = VaultConfig {
            address: vault,
            timeout_ms: 2000,
            max_retries: 1,
            ..VaultConfig::default()
        };
        // Opening looks the token up; a 307 there is a refusal, not a hop.
        if let Ok(store) =
            VaultStore::open_with_token(&cfg, SecretString::from("s.the-vault-token")).await
        {
            assert!(store.read("t1/a").await.is_err(), "a 307 is not an answer");
            let mut data = Map::new();
            data.insert("k".into(), json!(1));
            let written = store
                .write("t1/a", data, BTreeMap::new(), Cas::Absent)
                .await;
            assert!(written.is_err());
        }
        assert!(
            asked
                .lock()
                .unwrap()
                .iter()
                .any(|h| h.contains("s.the-vault-token")),
            "the redirecting server was never asked"
        );
        let leaked = received.lock().unwrap().clone();
        assert!(
            leaked.is_empty(),
            "the Vault client followed a redirect: {} requests reached the other server",
            leaked.len()
        );
        t1.abort();
        t2.abort();
    })
    .await;
}

#[tokio::test]
async fn overwrite_uses_check_and_set_on_a_cas_required_mount() {
    bounded(async {
        let (bao, m, store) = setup().await;
        bao.must(
            "POST",
            &format!("{}/config", m.kv),
            Some(json!({"cas_required": true})),
        )
        .await;
        let data = obj(json!({"changedAt": "now"}));
        // What revocations and the change marker used to do: refused here.
        assert!(
            store
                .write("_credgate/x", data.clone(), BTreeMap::new(), Cas::Any)
                .await
                .is_err()
        );
        let path = "_credgate/oauth-changes";
        assert_eq!(
            credgate::store::overwrite(&store, path, data.clone())
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            credgate::store::overwrite(&store, path, data)
                .await
                .unwrap(),
            2
        );
    })
    .await;
}
