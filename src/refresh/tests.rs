//! The refresh core in-process: single-flight in one process and across
//! replicas (the lease), the check-and-set write an admin write wins,
//! `invalid_grant` persisted, and a store failure after the provider
//! answered. Against the in-memory store and a real token endpoint on
//! 127.0.0.1:0 that counts its calls and can hold its answer until the test
//! lets it go.
//!
//! Those tests run on real time: with tokio's clock paused, the runtime
//! auto-advances whenever it waits on the socket, firing the provider
//! timeout and the lease wait at once. Time alone (the upstream-401
//! throttle) runs on the paused clock.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use secrecy::SecretString;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, Semaphore};

use super::*;
use crate::oauth::testing::MemStore;
use crate::store::{INTERNAL_PREFIX, Plaintext, Record};

/// The token endpoint: counts calls, remembers the refresh tokens presented,
/// answers a rotated pair (`at-N`, `rt-N`) or `invalid_grant`, each answer
/// after one permit of `gate`.
struct TokenEndpoint {
    calls: AtomicUsize,
    presented: Mutex<Vec<String>>,
    invalid_grant: AtomicBool,
    arrived: Notify,
    gate: Semaphore,
}

impl TokenEndpoint {
    /// Starts it; with `held`, every answer waits for [`Self::release`].
    async fn start(held: bool) -> (Arc<Self>, String) {
        let endpoint = Arc::new(TokenEndpoint {
            calls: AtomicUsize::new(0),
            presented: Mutex::default(),
            invalid_grant: AtomicBool::new(false),
            arrived: Notify::new(),
            gate: Semaphore::new(if held { 0 } else { 1 << 20 }),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", listener.local_addr().unwrap());
        let serving = endpoint.clone();
        tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    return;
                };
                let endpoint = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| endpoint.clone().answer(req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        (endpoint, url)
    }

    async fn answer(
        self: Arc<Self>,
        req: hyper::Request<hyper::body::Incoming>,
    ) -> Result<hyper::Response<Full<Bytes>>, Infallible> {
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let form: BTreeMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap();
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(rt) = form.get("refresh_token") {
            self.presented.lock().unwrap().push(rt.clone());
        }
        self.arrived.notify_one();
        self.gate.acquire().await.unwrap().forget();
        let (status, body) = if self.invalid_grant.load(Ordering::SeqCst) {
            (400, json!({"error": "invalid_grant"}))
        } else {
            let body = json!({"access_token": format!("at-{n}"), "refresh_token": format!("rt-{n}"),
                "token_type": "bearer", "expires_in": 3600});
            (200, body)
        };
        Ok(hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap())
    }

    fn release(&self) {
        self.gate.add_permits(1);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn presented(&self) -> Vec<String> {
        self.presented.lock().unwrap().clone()
    }
}

/// The in-memory store whose credential writes fail while `down` is set
/// (lease writes, under the internal prefix, still land).
#[derive(Default)]
pub(super) struct CredentialWritesFail {
    inner: MemStore,
    pub(super) down: AtomicBool,
}

#[async_trait::async_trait]
impl Store for CredentialWritesFail {
    fn backend(&self) -> &'static str {
        "memory"
    }
    async fn read(&self, path: &str) -> Result<Option<Record>, StoreError> {
        self.inner.read(path).await
    }
    async fn write(
        &self,
        path: &str,
        data: Map<String, Value>,
        metadata: BTreeMap<String, String>,
        cas: Cas,
    ) -> Result<u64, StoreError> {
        if self.down.load(Ordering::SeqCst) && !path.starts_with(INTERNAL_PREFIX) {
            return Err(StoreError::Unavailable("down".into()));
        }
        self.inner.write(path, data, metadata, cas).await
    }
    async fn delete(&self, path: &str) -> Result<(), StoreError> {
        self.inner.delete(path).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix).await
    }
    async fn encrypt(
        &self,
        keyring: &str,
        context: &str,
        plaintexts: &[&[u8]],
    ) -> Result<Vec<String>, StoreError> {
        self.inner.encrypt(keyring, context, plaintexts).await
    }
    async fn decrypt(
        &self,
        keyring: &str,
        context: &str,
        ciphertexts: &[&str],
    ) -> Result<Vec<Plaintext>, StoreError> {
        self.inner.decrypt(keyring, context, ciphertexts).await
    }
    async fn health(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

const T: &str = "acme";
const GH: &str = "gh";

fn config(token_url: &str, min_interval_seconds: u64) -> Config {
    let text = format!(
        r#"
        [refresh]
        min_interval_seconds = {min_interval_seconds}
        [integrations.gh]
        token_url = "{token_url}"
        client_id = "credgate-test"
        "#
    );
    Config::from_toml_with_env(&text, Vec::new()).unwrap()
}

fn refresher(store: Arc<dyn Store>, token_url: &str) -> Arc<Refresher> {
    Arc::new(
        Refresher::new(
            &config(token_url, 0),
            Arc::default(),
            crate::tls::client_config(None).unwrap(),
            store,
            Arc::new(Metrics::new()),
            Arc::new(Audit::discard()),
        )
        .unwrap(),
    )
}

/// An access and refresh token pair that never expires.
pub(super) fn pair(access: &str, refresh: &str) -> Credential {
    Credential {
        access_token: SecretString::from(access),
        refresh_token: Some(SecretString::from(refresh)),
        expires_at: None,
        scopes: vec![],
        token_type: "Bearer".into(),
        created_by: "test".into(),
        auto_refresh: true,
        refresh_count: 0,
        status: Status::Active,
    }
}

/// Stores the expired pair `at-0`/`rt-0`; returns its version.
async fn seed(store: &dyn Store) -> u64 {
    let expired = Credential {
        // Every refresh below has to call the provider.
        expires_at: Some(OffsetDateTime::now_utc() - time::Duration::minutes(1)),
        ..pair("at-0", "rt-0")
    };
    credentials::save(store, T, GH, &expired, Cas::Absent)
        .await
        .unwrap()
}

fn access(s: &Stored) -> &str {
    s.credential.access_token.expose_secret()
}

async fn stored(store: &dyn Store) -> Stored {
    credentials::load(store, T, GH).await.unwrap().unwrap()
}

#[tokio::test]
async fn concurrent_refreshes_in_one_process_call_the_provider_once() {
    let (endpoint, url) = TokenEndpoint::start(false).await;
    let store = Arc::new(MemStore::new());
    let v1 = seed(store.as_ref()).await;
    let r = refresher(store.clone(), &url);
    let (a, b) = tokio::join!(
        r.refresh(T, GH, Some(v1), Trigger::Expired),
        r.refresh(T, GH, Some(v1), Trigger::Expired),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(endpoint.calls(), 1);
    assert_eq!((access(&a), access(&b)), ("at-1", "at-1"));
    assert_eq!(a.version, b.version);
    assert!(a.version > v1);
    let now = stored(store.as_ref()).await;
    assert_eq!(access(&now), "at-1");
    assert_eq!(
        now.credential.refresh_token.unwrap().expose_secret(),
        "rt-1"
    );
    assert_eq!(now.credential.refresh_count, 1);
}

#[tokio::test]
async fn two_replicas_call_the_provider_once() {
    let (endpoint, url) = TokenEndpoint::start(true).await;
    let store = Arc::new(MemStore::new());
    let v1 = seed(store.as_ref()).await;
    // Two refreshers are two replicas: their own locks, their own lease holder ids.
    let (r1, r2) = (
        refresher(store.clone(), &url),
        refresher(store.clone(), &url),
    );
    let first = tokio::spawn({
        let r1 = r1.clone();
        async move { r1.refresh(T, GH, Some(v1), Trigger::Expired).await }
    });
    endpoint.arrived.notified().await;
    // r1 holds the lease and waits on the provider; r2 finds the lease taken.
    let second = tokio::spawn({
        let r2 = r2.clone();
        async move { r2.refresh(T, GH, Some(v1), Trigger::Expired).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "r2 waits for the lease holder's write"
    );
    endpoint.release();
    let (a, b) = (
        first.await.unwrap().unwrap(),
        second.await.unwrap().unwrap(),
    );
    assert_eq!(endpoint.calls(), 1);
    assert_eq!(endpoint.presented(), ["rt-0"]);
    assert_eq!((access(&a), access(&b)), ("at-1", "at-1"));
    assert_eq!(a.version, b.version);
}

#[tokio::test]
async fn an_admin_write_wins_the_check_and_set_race() {
    let (endpoint, url) = TokenEndpoint::start(true).await;
    let store = Arc::new(MemStore::new());
    let v1 = seed(store.as_ref()).await;
    let r = refresher(store.clone(), &url);
    let refresh = tokio::spawn({
        let r = r.clone();
        async move { r.refresh(T, GH, Some(v1), Trigger::Expired).await }
    });
    endpoint.arrived.notified().await;
    // While the provider call is in flight, an admin replaces the credential.
    let admin = pair("admin-at", "admin-rt");
    credentials::save(store.as_ref(), T, GH, &admin, Cas::Version(v1))
        .await
        .unwrap();
    endpoint.release();
    let got = refresh.await.unwrap().unwrap();
    assert_eq!(
        access(&got),
        "admin-at",
        "the refresh returns the admin's write"
    );
    let now = stored(store.as_ref()).await;
    assert_eq!(
        access(&now),
        "admin-at",
        "the refreshed pair did not overwrite it"
    );
    assert_eq!(
        now.credential.refresh_token.unwrap().expose_secret(),
        "admin-rt"
    );
    assert_eq!(
        access(&r.load_current(T, GH).await.unwrap().unwrap()),
        "admin-at",
        "nothing kept in memory over the admin's write"
    );
}

#[tokio::test]
async fn invalid_grant_is_persisted() {
    let (endpoint, url) = TokenEndpoint::start(false).await;
    endpoint.invalid_grant.store(true, Ordering::SeqCst);
    let store = Arc::new(MemStore::new());
    let v1 = seed(store.as_ref()).await;
    let r = refresher(store.clone(), &url);
    let e = r.refresh(T, GH, Some(v1), Trigger::Expired).await;
    assert!(matches!(e, Err(RefreshError::Reauthorization)), "{e:?}");
    let now = stored(store.as_ref()).await;
    assert_eq!(now.credential.status, Status::ReauthorizationRequired);
    assert_eq!(access(&now), "at-0");
    // Another replica reads the mark and does not call the provider again.
    let other = refresher(store.clone(), &url);
    let e = other
        .refresh(T, GH, Some(now.version), Trigger::Admin)
        .await;
    assert!(matches!(e, Err(RefreshError::Reauthorization)), "{e:?}");
    assert_eq!(endpoint.calls(), 1);
}

#[tokio::test]
async fn a_store_failure_after_the_provider_answered_keeps_the_new_pair() {
    let (endpoint, url) = TokenEndpoint::start(false).await;
    let store = Arc::new(CredentialWritesFail::default());
    let v1 = seed(store.as_ref()).await;
    store.down.store(true, Ordering::SeqCst);
    let metrics = Arc::new(Metrics::new());
    let r = Refresher::new(
        &config(&url, 0),
        Arc::default(),
        crate::tls::client_config(None).unwrap(),
        store.clone(),
        metrics.clone(),
        Arc::new(Audit::discard()),
    )
    .unwrap();
    let got = r.refresh(T, GH, Some(v1), Trigger::Expired).await.unwrap();
    assert_eq!(access(&got), "at-1", "the new pair is served");
    assert_eq!(access(&stored(store.as_ref()).await), "at-0");
    assert_eq!(
        access(&r.load_current(T, GH).await.unwrap().unwrap()),
        "at-1",
        "and kept over the stored record"
    );
    assert_eq!(
        metrics
            .credential_persist_failures_total
            .with_label_values(&[GH])
            .get(),
        1
    );
    // The next refresh presents the kept (unconsumed) refresh token.
    let again = r.refresh(T, GH, Some(v1), Trigger::Admin).await.unwrap();
    assert_eq!(access(&again), "at-2");
    assert_eq!(endpoint.presented(), ["rt-0", "rt-1"]);
}

#[tokio::test(start_paused = true)]
async fn upstream_401s_refresh_a_credential_once_per_interval() {
    let with = |min_interval_seconds| {
        Refresher::new(
            &config("http://127.0.0.1:1/token", min_interval_seconds),
            Arc::default(),
            crate::tls::client_config(None).unwrap(),
            Arc::new(MemStore::new()),
            Arc::new(Metrics::new()),
            Arc::new(Audit::discard()),
        )
        .unwrap()
    };
    let r = with(30);
    assert!(r.may_refresh_after_unauthorized("t1", "gh"));
    assert!(
        !r.may_refresh_after_unauthorized("t1", "gh"),
        "second 401 within 30 s"
    );
    // Per credential: another tenant, another integration, a minted token.
    assert!(r.may_refresh_after_unauthorized("t2", "gh"));
    assert!(r.may_refresh_after_unauthorized("t1", "other"));
    assert!(r.may_refresh_after_unauthorized("", "gh"));
    tokio::time::advance(Duration::from_secs(29)).await;
    assert!(!r.may_refresh_after_unauthorized("t1", "gh"));
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(r.may_refresh_after_unauthorized("t1", "gh"));
    // 0 turns the limit off.
    let off = with(0);
    assert!(off.may_refresh_after_unauthorized("t1", "gh"));
    assert!(off.may_refresh_after_unauthorized("t1", "gh"));
}
