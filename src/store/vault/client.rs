//! The connection to Vault: vaultrs clients, the one raw JSON request path,
//! retries, re-login on 403, and the mapping of failures to [`StoreError`].
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
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;

use super::auth::{Auth, Lease, Stats};
use crate::config::VaultConfig;
use crate::store::StoreError;

/// First retry delay; doubles per attempt.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest delay between two retries.
const RETRY_CAP: Duration = Duration::from_secs(2);

/// What KV v2 answers (HTTP 400) while it upgrades a mount's storage, e.g.
/// right after the mount is created or Vault is unsealed: a pause, not an
/// error of ours.
const KV_UPGRADING: &str = "Upgrading from non-versioned to versioned data";

/// A token this young is not why Vault said 403 (the policy is): no
/// re-login for it.
const FRESH_TOKEN: Duration = Duration::from_secs(2);
/// After a failed login, calls fail with its error for this long instead of
/// queueing up for logins of their own.
const LOGIN_FAILURE_HOLD: Duration = Duration::from_secs(1);

/// Why a Vault call failed, before it becomes a [`StoreError`].
#[derive(Debug, Clone)]
pub(super) enum Failure {
    /// No HTTP reply: refused, reset, TLS failure, timeout.
    Transport {
        connect: bool,
        timeout: bool,
        detail: String,
    },
    /// A reply outside 2xx. `errors` is Vault's `errors` array (empty when
    /// the body had none, e.g. a deleted KV version or a Transit batch).
    Status {
        code: u16,
        errors: Vec<String>,
        body: Value,
    },
    /// A 2xx reply that is not what Vault sends.
    Malformed(String),
    /// A local problem: unreadable credential files, bad settings.
    Local(String),
}

impl Failure {
    /// Connect errors and 5xx are worth another try; timeouts are not (the
    /// caller already waited the whole budget).
    fn retriable(&self) -> bool {
        match self {
            Failure::Transport {
                connect, timeout, ..
            } => *connect && !*timeout,
            Failure::Status { code, .. } => *code >= 500 || self.says(KV_UPGRADING),
            Failure::Malformed(_) | Failure::Local(_) => false,
        }
    }

    pub(super) fn code(&self) -> Option<u16> {
        match self {
            Failure::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Vault's error text, without the multierror decoration.
    pub(super) fn message(&self) -> String {
        match self {
            Failure::Status { code, errors, .. } => {
                let text: Vec<&str> = errors
                    .iter()
                    .map(|e| {
                        e.trim()
                            .trim_start_matches("1 error occurred:")
                            .trim()
                            .trim_start_matches("* ")
                    })
                    .filter(|e| !e.is_empty())
                    .collect();
                if text.is_empty() {
                    format!("HTTP {code}")
                } else {
                    format!("HTTP {code}: {}", text.join("; "))
                }
            }
            Failure::Transport { detail, .. } => detail.clone(),
            Failure::Malformed(m) | Failure::Local(m) => m.clone(),
        }
    }

    /// Whether Vault's error text contains `needle`.
    pub(super) fn says(&self, needle: &str) -> bool {
        matches!(self, Failure::Status { errors, .. } if errors.iter().any(|e| e.contains(needle)))
    }

    /// A 404 that means "no such record" (`{"errors":[]}` or a full envelope
    /// without `errors`), as opposed to "no such mount or route".
    pub(super) fn is_not_found(&self) -> bool {
        matches!(self, Failure::Status { code: 404, errors, .. } if errors.is_empty())
    }

    fn from_reqwest(e: &reqwest::Error, timeout_ms: u64) -> Self {
        let timeout = e.is_timeout();
        let detail = if timeout {
            format!("vault did not answer within {timeout_ms} ms")
        } else {
            format!("cannot reach vault: {}", error_chain(e))
        };
        Failure::Transport {
            connect: e.is_connect(),
            timeout,
            detail,
        }
    }

    pub(super) fn from_vaultrs(e: ClientError, timeout_ms: u64) -> Self {
        match e {
            ClientError::APIError { code, errors } => Failure::Status {
                code,
                errors,
                body: Value::Null,
            },
            ClientError::RestClientError { source } => match source {
                rustify::errors::ClientError::ServerResponseError { code, content } => {
                    let body = content
                        .as_deref()
                        .and_then(|c| serde_json::from_str(c).ok())
                        .unwrap_or(Value::Null);
                    Failure::Status {
                        code,
                        errors: Vec::new(),
                        body,
                    }
                }
                rustify::errors::ClientError::RequestError { source, .. } => {
                    match source.downcast_ref::<reqwest::Error>() {
                        Some(e) => Failure::from_reqwest(e, timeout_ms),
                        None => Failure::Transport {
                            connect: false,
                            timeout: false,
                            detail: format!("cannot reach vault: {source:#}"),
                        },
                    }
                }
                other => Failure::Malformed(format!("unexpected reply from vault: {other}")),
            },
            ClientError::FileReadError { path, .. }
            | ClientError::FileNotFoundError { path }
            | ClientError::ParseCertificateError { path, .. } => {
                Failure::Local(format!("cannot use CA certificate {path}"))
            }
            other => Failure::Malformed(format!("unexpected reply from vault: {other}")),
        }
    }

    /// The default mapping; operations map their expected statuses first.
    pub(super) fn into_store_error(self) -> StoreError {
        match &self {
            Failure::Transport { .. } => StoreError::Unavailable(self.message()),
            Failure::Status { code: 503, .. } if self.says("sealed") => {
                StoreError::Unavailable("vault is sealed".into())
            }
            Failure::Status { code, .. }
                if *code >= 500 || *code == 429 || *code == 412 || self.says(KV_UPGRADING) =>
            {
                StoreError::Unavailable(format!("vault: {}", self.message()))
            }
            Failure::Status { code: 403, .. } => {
                StoreError::Refused(format!("vault permission denied: {}", self.message()))
            }
            Failure::Status { .. } => StoreError::Refused(format!("vault: {}", self.message())),
            Failure::Malformed(m) => StoreError::Corrupt(m.clone()),
            Failure::Local(m) => StoreError::Refused(m.clone()),
        }
    }
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        f.into_store_error()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Delay before retry number `attempt` (0-based): exponential, capped, with
/// up to 25% jitter so replicas do not retry in step.
pub(super) fn backoff(attempt: u32, jitter_seed: u32) -> Duration {
    let base = RETRY_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(RETRY_CAP);
    let jitter = base / 4 * (jitter_seed % 1000) / 1000;
    base + jitter
}

fn jitter_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

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

/// Where Vault is and how to reach it; builds vaultrs clients.
struct Endpoint {
    address: String,
    namespace: Option<String>,
    ca_certs: Vec<String>,
    timeout_ms: u64,
}

impl Endpoint {
    fn new(config: &VaultConfig) -> Result<Self, StoreError> {
        let address = config.address.trim_end_matches('/').to_owned();
        let uri: http::Uri = address
            .parse()
            .map_err(|_| StoreError::Refused(format!("invalid vault address {address:?}")))?;
        if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.authority().is_none() {
            return Err(StoreError::Refused(format!(
                "vault address {address:?} must be an http(s) URL"
            )));
        }
        let namespace = config.namespace.clone().filter(|n| !n.is_empty());
        if namespace
            .as_deref()
            .is_some_and(|ns| HeaderValue::from_str(ns).is_err())
        {
            return Err(StoreError::Refused("invalid VAULT_NAMESPACE".into()));
        }
        let ca_certs = match &config.ca_cert {
            Some(p) => vec![
                p.to_str()
                    .ok_or_else(|| StoreError::Refused("VAULT_CACERT is not UTF-8".into()))?
                    .to_owned(),
            ],
            None => Vec::new(),
        };
        Ok(Endpoint {
            address,
            namespace,
            ca_certs,
            timeout_ms: config.timeout_ms.max(1),
        })
    }

    /// A vaultrs client for `token` with every setting explicit (the builder
    /// would otherwise read `VAULT_*` itself). Reads the CA file.
    fn client(&self, token: &str) -> Result<VaultClient, Failure> {
        if !token.is_empty() && HeaderValue::from_str(token).is_err() {
            // vaultrs would panic on it when building the header.
            return Err(Failure::Local(
                "vault token is not a valid header value".into(),
            ));
        }
        let settings = VaultClientSettingsBuilder::default()
            .address(&self.address)
            .ca_certs(self.ca_certs.clone())
            .identity(None)
            .timeout(Some(Duration::from_millis(self.timeout_ms)))
            .token(token)
            .verify(true)
            .namespace(self.namespace.clone())
            .build()
            .map_err(|e| Failure::Local(format!("vault client settings: {e}")))?;
        let mut client =
            VaultClient::new(settings).map_err(|e| Failure::from_vaultrs(e, self.timeout_ms))?;
        // vaultrs builds its reqwest client with the default redirect policy,
        // which would carry `X-Vault-Token` to wherever a 3xx points. Swap in
        // one with the same TLS settings that never follows a redirect.
        client.http.http = self.http_client()?;
        Ok(client)
    }

    /// The HTTP client under every Vault call: rustls with the configured CA,
    /// the timeout, and no redirects (a 3xx is answered as an error).
    fn http_client(&self) -> Result<reqwest::Client, Failure> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(Duration::from_millis(self.timeout_ms))
            .redirect(reqwest::redirect::Policy::none());
        for path in &self.ca_certs {
            let pem = std::fs::read(path)
                .map_err(|e| Failure::Local(format!("VAULT_CACERT {path}: {e}")))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| Failure::Local(format!("VAULT_CACERT {path}: {e}")))?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build()
            .map_err(|e| Failure::Local(format!("vault http client: {e}")))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps_with_bounded_jitter() {
        assert_eq!(backoff(0, 0), Duration::from_millis(100));
        assert_eq!(backoff(1, 0), Duration::from_millis(200));
        assert_eq!(backoff(2, 0), Duration::from_millis(400));
        assert_eq!(backoff(10, 0), RETRY_CAP);
        assert_eq!(backoff(40, 0), RETRY_CAP);
        assert!(backoff(0, 999) < Duration::from_millis(125));
    }

    #[test]
    fn only_connect_errors_and_5xx_are_retried() {
        let status = |code| Failure::Status {
            code,
            errors: vec![],
            body: Value::Null,
        };
        let transport = |connect, timeout| Failure::Transport {
            connect,
            timeout,
            detail: String::new(),
        };
        assert!(transport(true, false).retriable());
        assert!(!transport(true, true).retriable());
        assert!(!transport(false, true).retriable());
        assert!(status(500).retriable());
        assert!(status(503).retriable());
        for code in [400, 403, 404, 412, 429] {
            assert!(!status(code).retriable(), "{code}");
        }
        let upgrading = Failure::Status {
            code: 400,
            errors: vec![format!(
                "{KV_UPGRADING}. This backend will be unavailable for a brief period and will resume service shortly."
            )],
            body: Value::Null,
        };
        assert!(upgrading.retriable());
        assert!(matches!(
            upgrading.into_store_error(),
            StoreError::Unavailable(_)
        ));
    }

    #[test]
    fn failures_map_to_store_errors() {
        let status = |code, e: &str| Failure::Status {
            code,
            errors: vec![e.to_owned()],
            body: Value::Null,
        };
        assert!(matches!(
            status(503, "Vault is sealed").into_store_error(),
            StoreError::Unavailable(m) if m == "vault is sealed"
        ));
        assert!(matches!(
            status(500, "internal").into_store_error(),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            status(403, "1 error occurred:\n\t* permission denied\n\n").into_store_error(),
            StoreError::Refused(m) if m == "vault permission denied: HTTP 403: permission denied"
        ));
        assert!(matches!(
            status(400, "bad").into_store_error(),
            StoreError::Refused(_)
        ));
        assert!(status(404, "x").code() == Some(404));
        assert!(!status(404, "no handler for route").is_not_found());
        assert!(
            Failure::Status {
                code: 404,
                errors: vec![],
                body: Value::Null
            }
            .is_not_found()
        );
    }
}
