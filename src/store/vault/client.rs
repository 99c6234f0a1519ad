//! The connection to Vault: the current session (token and vaultrs client),
//! logins, the one raw JSON request path, retries and re-login on 403.
//!
//! Most calls go through [`Conn::request`], a raw request on the `reqwest`
//! client that vaultrs configured (address, CA, timeout): vaultrs 0.7 cannot
//! send Transit `batch_input`, cannot tell a deleted KV version from a missing
//! one, hides the status of replies without an `errors` array, logs every
//! expected 404 or CAS conflict at ERROR, and its reply types reject real
//! replies that lack a field (token lookup of an `operator init` root token).
//! vaultrs's typed calls are used where none of that matters: AppRole and
//! Kubernetes logins, Transit key creation.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use http::{HeaderValue, Method};
use serde_json::Value;
use vaultrs::client::VaultClient;
use vaultrs::error::ClientError;

use super::auth::{Auth, Lease, Stats};
use super::endpoint::Endpoint;
use super::failure::{Failure, backoff, jitter_seed};
use crate::config::VaultConfig;
use crate::store::StoreError;

/// A token this young is not why Vault said 403 (the policy is): no
/// re-login for it.
const FRESH_TOKEN: Duration = Duration::from_secs(2);
/// After a failed login, calls fail with its error for this long instead of
/// queueing up for logins of their own.
const LOGIN_FAILURE_HOLD: Duration = Duration::from_secs(1);

/// A successful reply's JSON body (`Null` for 204).
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) body: Value,
}

impl Reply {
    /// The envelope's `data` object.
    pub(super) fn data(&self) -> &Value {
        &self.body["data"]
    }
}

/// A token and the vaultrs client that sends it.
pub(super) struct Session {
    pub(super) client: VaultClient,
    /// Bumped by every login, so concurrent 403s re-login once.
    pub(super) generation: u64,
    pub(super) lease: Mutex<Lease>,
    created: Instant,
}

impl Session {
    fn new(client: VaultClient, generation: u64, lease: Lease) -> Arc<Self> {
        Arc::new(Session {
            client,
            generation,
            lease: Mutex::new(lease),
            created: Instant::now(),
        })
    }

    /// Whether this session's token came from a login moments ago.
    fn freshly_logged_in(&self) -> bool {
        self.generation > 0 && self.created.elapsed() < FRESH_TOKEN
    }

    fn has_token(&self) -> bool {
        !self.client.settings.token.is_empty()
    }

    pub(super) fn lease(&self) -> Lease {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn set_lease(&self, lease: Lease) {
        *self.lease.lock().unwrap_or_else(PoisonError::into_inner) = lease;
    }
}

/// Everything needed to talk to Vault; shared by the store and the renewal
/// task.
pub(super) struct Conn {
    endpoint: Endpoint,
    pub(super) timeout_ms: u64,
    max_retries: u32,
    pub(super) auth: Auth,
    /// Token-less client: logins and `sys/health`.
    base: VaultClient,
    session: RwLock<Arc<Session>>,
    login_lock: tokio::sync::Mutex<()>,
    /// The last failed login, held briefly (see [`LOGIN_FAILURE_HOLD`]).
    login_failure: Mutex<Option<(Instant, Failure)>>,
    pub(super) stats: Stats,
}

impl Conn {
    /// Builds the clients; `token` is the initial token (empty when the auth
    /// method logs in first). Makes no request.
    pub(super) fn new(config: &VaultConfig, auth: Auth, token: &str) -> Result<Self, StoreError> {
        let endpoint = Endpoint::new(config)?;
        let base = endpoint.client("").map_err(Failure::into_store_error)?;
        let first = endpoint.client(token).map_err(Failure::into_store_error)?;
        Ok(Conn {
            timeout_ms: endpoint.timeout_ms,
            max_retries: config.max_retries,
            auth,
            base,
            session: RwLock::new(Session::new(first, 0, Lease::unknown())),
            login_lock: tokio::sync::Mutex::new(()),
            login_failure: Mutex::new(None),
            stats: Stats::default(),
            endpoint,
        })
    }

    pub(super) fn current(&self) -> Arc<Session> {
        self.session
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn install(&self, client: VaultClient, lease: Lease) -> Arc<Session> {
        let mut slot = self.session.write().unwrap_or_else(PoisonError::into_inner);
        let session = Session::new(client, slot.generation + 1, lease);
        *slot = session.clone();
        session
    }

    /// The session to use, logging in first if there is no token yet.
    async fn session(&self) -> Result<Arc<Session>, Failure> {
        let s = self.current();
        if s.has_token() || !self.auth.can_login() {
            return Ok(s);
        }
        self.relogin(s.generation).await
    }

    /// Logs in again unless another task already did since `seen`.
    pub(super) async fn relogin(&self, seen: u64) -> Result<Arc<Session>, Failure> {
        let _single_flight = self.login_lock.lock().await;
        let s = self.current();
        if s.generation != seen && s.has_token() {
            return Ok(s);
        }
        {
            let mut last = self
                .login_failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match last.as_ref() {
                Some((at, failure)) if at.elapsed() < LOGIN_FAILURE_HOLD => {
                    return Err(failure.clone());
                }
                _ => *last = None,
            }
        }
        let logged_in = self
            .retrying(|| self.auth.login(&self.base, self.timeout_ms))
            .await
            .and_then(|(token, lease)| Ok((self.endpoint.client(&token)?, lease)));
        let (client, lease) = match logged_in {
            Ok(v) => v,
            Err(e) => {
                *self
                    .login_failure
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), e.clone()));
                return Err(e);
            }
        };
        self.stats
            .logins
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            method = self.auth.name(),
            ttl_secs = lease.ttl.as_secs(),
            "logged in to vault"
        );
        Ok(self.install(client, lease))
    }

    /// Runs `f` again on connect errors and 5xx, up to `max_retries` times.
    pub(super) async fn retrying<T, F, Fut>(&self, mut f: F) -> Result<T, Failure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 0;
        loop {
            match f().await {
                Err(e) if e.retriable() && attempt < self.max_retries => {
                    tracing::debug!(error = %e.message(), attempt, "vault call failed; retrying");
                    tokio::time::sleep(backoff(attempt, jitter_seed())).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Runs `f` with the current session: retries connect errors and 5xx;
    /// on 403, logs in again once (AppRole, Kubernetes) and repeats.
    pub(super) async fn run<T, F, Fut>(&self, mut f: F) -> Result<T, Failure>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut relogged = false;
        loop {
            let session = self.session().await?;
            let generation = session.generation;
            match self.retrying(|| f(session.clone())).await {
                Err(e)
                    if e.code() == Some(403)
                        && self.auth.can_login()
                        && !relogged
                        && !session.freshly_logged_in() =>
                {
                    tracing::info!(error = %e.message(), "vault denied the request; logging in again");
                    relogged = true;
                    self.relogin(generation).await?;
                }
                other => return other,
            }
        }
    }

    /// A vaultrs call under [`Conn::run`].
    pub(super) async fn typed<T, F, Fut>(&self, mut f: F) -> Result<T, Failure>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let timeout_ms = self.timeout_ms;
        self.run(|s| {
            let fut = f(s);
            async move { fut.await.map_err(|e| Failure::from_vaultrs(e, timeout_ms)) }
        })
        .await
    }

    /// A raw JSON request under [`Conn::run`]. `path` is below `/v1/` and
    /// already percent-encoded.
    pub(super) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, Failure> {
        self.run(|s| {
            let method = method.clone();
            async move { self.send(&s.client, method, path, body, true).await }
        })
        .await
    }

    /// `GET sys/health` once, without a token; the status code of the reply.
    pub(super) async fn health(&self) -> Result<(u16, Value), Failure> {
        let path = "sys/health?standbyok=true&perfstandbyok=true";
        match self.send(&self.base, Method::GET, path, None, false).await {
            Ok(reply) => Ok((200, reply.body)),
            Err(Failure::Status { code, body, .. }) => Ok((code, body)),
            Err(e) => Err(e),
        }
    }

    /// One HTTP exchange on `client`'s connection pool.
    async fn send(
        &self,
        client: &VaultClient,
        method: Method,
        path: &str,
        body: Option<&Value>,
        with_token: bool,
    ) -> Result<Reply, Failure> {
        let url = format!("{}/v1/{path}", self.endpoint.address);
        let mut req = client
            .http
            .http
            .request(method, url)
            .header("X-Vault-Request", "true");
        let token = &client.settings.token;
        if with_token && !token.is_empty() {
            let mut value = HeaderValue::from_str(token)
                .map_err(|_| Failure::Local("vault token is not a valid header value".into()))?;
            value.set_sensitive(true);
            req = req.header("X-Vault-Token", value);
        }
        if let Some(ns) = &self.endpoint.namespace {
            req = req.header("X-Vault-Namespace", ns.as_str());
        }
        if let Some(body) = body {
            let bytes = serde_json::to_vec(body)
                .map_err(|e| Failure::Local(format!("cannot encode request: {e}")))?;
            req = req
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(bytes);
        }
        let started = Instant::now();
        let resp = req
            .send()
            .await
            .map_err(|e| Failure::from_reqwest(&e, self.timeout_ms))?;
        let code = resp.status().as_u16();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| Failure::from_reqwest(&e, self.timeout_ms))?;
        tracing::trace!(
            code,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "vault reply"
        );
        let parsed: Option<Value> = if bytes.is_empty() {
            Some(Value::Null)
        } else {
            serde_json::from_slice(&bytes).ok()
        };
        if (200..300).contains(&code) {
            let body = parsed.ok_or_else(|| {
                Failure::Malformed(format!("vault sent HTTP {code} without JSON"))
            })?;
            return Ok(Reply { body });
        }
        let body = parsed.unwrap_or(Value::Null);
        let errors = body["errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Err(Failure::Status { code, errors, body })
    }
}
