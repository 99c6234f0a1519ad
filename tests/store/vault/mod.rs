//! The vault backend against real OpenBao, beyond the store contract
//! (`contract`, run here on OpenBao): one module per concern.
//!
//! Contract and record tests run against the Vault in
//! `VAULT_ADDR`/`VAULT_TOKEN` when both are set, each in its own random KV and
//! Transit mounts, removed afterwards; otherwise each starts a `bao server
//! -dev`. Tests that need to own the server (auth methods, outages, the init
//! script, namespaces) always start their own `bao`.

mod auth;
mod contract;
mod deploy;
mod hardening;
mod outages;
mod records;
mod transit;

pub(crate) use std::collections::BTreeMap;
pub(crate) use std::future::Future;
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::time::{Duration, Instant};

pub(crate) use base64::Engine;
pub(crate) use base64::engine::general_purpose::STANDARD as B64;
pub(crate) use credgate::config::{VaultAuth, VaultConfig};
pub(crate) use credgate::credentials::{self, Credential, Status};
pub(crate) use credgate::store::vault::VaultStore;
pub(crate) use credgate::store::{Cas, Store, StoreError};
pub(crate) use secrecy::{ExposeSecret, SecretString};
pub(crate) use serde_json::{Map, Value, json};
pub(crate) use time::OffsetDateTime;
pub(crate) use time::format_description::well_known::Rfc3339;

pub(crate) use crate::openbao::{self, Bao, Mounts, unique};
pub(crate) use crate::tokenreview::{TokenReview, service_account_jwt};

/// Upper bound for any one test.
pub(crate) const TEST_TIMEOUT: Duration = Duration::from_secs(120);

pub(crate) async fn bounded<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test exceeded its time bound")
}

/// Polls `check` every 100 ms until it holds or `within` passes.
pub(crate) async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
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

pub(crate) fn config(bao: &Bao, m: &Mounts) -> VaultConfig {
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

pub(crate) async fn open_token(cfg: &VaultConfig, token: &str) -> VaultStore {
    VaultStore::open_with_token(cfg, SecretString::from(token.to_owned()))
        .await
        .expect("open vault store")
}

pub(crate) async fn setup() -> (Bao, Mounts, VaultStore) {
    let bao = Bao::for_contract_tests().await;
    let m = Mounts::new(&bao).await;
    let store = open_token(&config(&bao, &m), &bao.root_token).await;
    (bao, m, store)
}

pub(crate) fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!(),
    }
}

pub(crate) async fn put(
    store: &VaultStore,
    path: &str,
    n: i64,
    cas: Cas,
) -> Result<u64, StoreError> {
    store
        .write(path, obj(json!({ "n": n })), BTreeMap::new(), cas)
        .await
}

pub(crate) fn credential(access: &str, refresh: Option<&str>) -> Credential {
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

/// Saves a new credential (access token only) for `tenant/integration`.
pub(crate) async fn save_new(store: &VaultStore, tenant: &str, integration: &str, access: &str) {
    credentials::save(
        store,
        tenant,
        integration,
        &credential(access, None),
        Cas::Absent,
    )
    .await
    .unwrap();
}

/// Whether `tenant/integration` loads, i.e. is there and decrypts.
pub(crate) async fn loads(store: &VaultStore, tenant: &str, integration: &str) -> bool {
    credentials::load(store, tenant, integration)
        .await
        .unwrap()
        .is_some()
}

/// The policy file with its mount names replaced, as init-vault.sh does.
pub(crate) fn credgate_policy(kv: &str, transit: &str) -> String {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("vault/policies/credgate.hcl"),
    )
    .unwrap();
    text.replace("path \"secret/", &format!("path \"{kv}/"))
        .replace("path \"transit/", &format!("path \"{transit}/"))
}

pub(crate) async fn write_policy(bao: &Bao, m: &Mounts) -> String {
    let name = unique("credgate");
    bao.must(
        "PUT",
        &format!("sys/policies/acl/{name}"),
        Some(json!({ "policy": credgate_policy(&m.kv, &m.transit) })),
    )
    .await;
    name
}

pub(crate) fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A throwaway CA certificate (PEM), for `kubernetes_ca_cert`.
pub(crate) fn ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}
