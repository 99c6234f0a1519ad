//! The authorization-code + PKCE flow (docs/connect.md): the pending state in
//! the store, the redirect to the provider, the callback that redeems the code
//! once, and RFC 7009 revocation on disconnect.
//!
//! A pending flow is the record `_credgate/connect/pending/{state}`: tenant,
//! integration, the PKCE verifier (encrypted), a digest of the browser binder
//! cookie, its expiry, and `used`. The callback flips `used` with
//! check-and-set before it calls the provider, so of two racing callbacks
//! (on any replicas sharing the store) exactly one redeems the code.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use oauth2::basic::BasicClient;
use oauth2::{
    AuthType, AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, HttpClientError,
    HttpRequest, HttpResponse, PkceCodeChallenge, PkceCodeVerifier, RequestTokenError, Scope,
    TokenResponse, TokenUrl,
};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use super::link::{digest, random_token};
use super::{App, BINDER_COOKIE, Connect, PageError, cookie, pages, set_cookie};
use crate::admin::credentials as admin_credentials;
use crate::audit::{AuditEvent, AuditKind};
use crate::config::ClientAuthMethod;
use crate::credentials::{self, API_KEY_TYPE};
use crate::state::AppState;
use crate::store::{Cas, INTERNAL_KEYRING, StoreError};

/// A pending flow lives this long (seconds).
const PENDING_TTL_SECS: i64 = 600;
/// The largest provider answer read (token and revocation endpoints).
const MAX_PROVIDER_ANSWER: usize = 64 * 1024;
/// Expired pending records removed per flow started (bounded work).
const SWEEP_BATCH: usize = 16;

fn pending_path(state: &str) -> String {
    format!("_credgate/connect/pending/{state}")
}

/// A state or binder value as credgate makes them: 32 random bytes, base64url.
fn well_formed_state(s: &str) -> bool {
    s.len() == 43
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
}

/// Calls the provider without following redirects and reads at most
/// [`MAX_PROVIDER_ANSWER`] bytes of its answer.
async fn capped(
    http: &reqwest::Client,
    req: HttpRequest,
) -> Result<HttpResponse, HttpClientError<reqwest::Error>> {
    let req: reqwest::Request = req.try_into().map_err(Box::new)?;
    let mut resp = http.execute(req).await.map_err(Box::new)?;
    let mut builder = http::Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        builder = builder.header(name, value);
    }
    if resp
        .content_length()
        .is_some_and(|n| n > MAX_PROVIDER_ANSWER as u64)
    {
        return Err(HttpClientError::Other("provider answer over 64 KiB".into()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(Box::new)? {
        if body.len() + chunk.len() > MAX_PROVIDER_ANSWER {
            return Err(HttpClientError::Other("provider answer over 64 KiB".into()));
        }
        body.extend_from_slice(&chunk);
    }
    builder.body(body).map_err(HttpClientError::Http)
}

/// [`capped`] as the HTTP client of `oauth2` requests.
struct Capped<'a>(&'a reqwest::Client);

type CappedFuture<'c> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<HttpResponse, HttpClientError<reqwest::Error>>>
            + Send
            + 'c,
    >,
>;

impl<'c> oauth2::AsyncHttpClient<'c> for Capped<'_> {
    type Error = HttpClientError<reqwest::Error>;
    type Future = CappedFuture<'c>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(capped(self.0, request))
    }
}

fn auth_type(m: ClientAuthMethod) -> AuthType {
    match m {
        ClientAuthMethod::ClientSecretPost => AuthType::RequestBody,
        ClientAuthMethod::ClientSecretBasic => AuthType::BasicAuth,
    }
}

fn bad(text: impl Into<String>) -> PageError {
    PageError::new(StatusCode::BAD_REQUEST, "Connection failed", text)
}

fn store_failed(e: &StoreError) -> PageError {
    tracing::error!(error = %e, "connect: store failed");
    PageError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "Try again shortly",
        "credgate cannot reach its credential store right now.",
    )
}

/// Starts a flow for `tenant` and `integration`: records the pending state and
/// redirects the browser to the provider's authorization endpoint.
pub async fn start(
    state: &AppState,
    c: &Connect,
    tenant: &str,
    integration: &str,
    headers: &HeaderMap,
    from_settings: bool,
) -> Result<Response<crate::http::Body>, PageError> {
    let app = c.app(integration).ok_or_else(|| {
        PageError::new(
            StatusCode::NOT_FOUND,
            "Unknown integration",
            "This integration cannot be connected here.",
        )
    })?;
    let (Some(authorize_url), Some(client_id)) = (&app.cfg.authorize_url, &app.cfg.client_id)
    else {
        return Err(bad("This integration cannot be connected here."));
    };
    let store = state.store.as_ref();
    sweep(store).await;
    let flow_state = random_token(32);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    // Reused when this browser already has one (two tabs, two flows).
    let binder = cookie(headers, BINDER_COOKIE)
        .filter(|b| well_formed_state(b))
        .map(str::to_owned)
        .unwrap_or_else(|| random_token(32));
    let path = pending_path(&flow_state);
    let ct = store
        .encrypt(INTERNAL_KEYRING, &path, &[verifier.secret().as_bytes()])
        .await
        .map_err(|e| store_failed(&e))?;
    let mut data = Map::new();
    data.insert("tenant".into(), json!(tenant));
    data.insert("integration".into(), json!(integration));
    data.insert("verifier".into(), json!(ct.first()));
    data.insert("binder".into(), json!(digest(&binder)));
    data.insert(
        "expiresAt".into(),
        json!(OffsetDateTime::now_utc().unix_timestamp() + PENDING_TTL_SECS),
    );
    data.insert("used".into(), json!(false));
    data.insert("fromSettings".into(), json!(from_settings));
    store
        .write(&path, data, BTreeMap::new(), Cas::Absent)
        .await
        .map_err(|e| store_failed(&e))?;

    let auth_url = AuthUrl::new(authorize_url.clone()).map_err(|_| bad("bad authorize_url"))?;
    let client = BasicClient::new(ClientId::new(client_id.clone()))
        .set_auth_uri(auth_url)
        .set_redirect_uri(c.redirect_uri.clone());
    let mut request = client
        .authorize_url(|| CsrfToken::new(flow_state.clone()))
        .add_scopes(app.cfg.scopes.iter().map(|s| Scope::new(s.clone())))
        .set_pkce_challenge(challenge);
    for (k, v) in &app.cfg.authorize_params {
        request = request.add_extra_param(k.as_str(), v.as_str());
    }
    let (url, _) = request.url();
    let mut resp = Response::new(crate::http::empty());
    *resp.status_mut() = StatusCode::FOUND;
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        HeaderValue::try_from(url.as_str()).map_err(|_| bad("bad authorize_url"))?,
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(
            BINDER_COOKIE,
            &binder,
            "/connect/callback",
            PENDING_TTL_SECS,
            "Lax",
            c.secure_cookies,
        ),
    );
    Ok(resp)
}

/// Removes a few expired pending flows (abandoned in the browser).
async fn sweep(store: &dyn crate::store::Store) {
    let Ok(names) = store.list("_credgate/connect/pending").await else {
        return;
    };
    let now = OffsetDateTime::now_utc().unix_timestamp();
    for name in names.iter().filter(|n| !n.ends_with('/')).take(SWEEP_BATCH) {
        let path = pending_path(name);
        if let Ok(Some(r)) = store.read(&path).await
            && r.data.get("expiresAt").and_then(Value::as_i64).unwrap_or(0) <= now
        {
            let _ = store.delete(&path).await;
        }
    }
}

/// `GET /connect/callback`.
pub async fn callback(
    state: &AppState,
    c: &Connect,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<crate::http::Body>, PageError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query.unwrap_or(""))
        .map_err(|_| bad("The provider's answer is malformed."))?;
    let mut params = BTreeMap::new();
    for (k, v) in pairs {
        if params.insert(k, v).is_some() {
            return Err(bad("The provider's answer repeats a parameter."));
        }
    }
    let flow_state = params
        .get("state")
        .filter(|s| well_formed_state(s))
        .ok_or_else(|| bad("This sign-in is unknown: it carries no state credgate issued."))?;
    let store = state.store.as_ref();
    let path = pending_path(flow_state);
    let record = store
        .read(&path)
        .await
        .map_err(|e| store_failed(&e))?
        .ok_or_else(|| bad("This sign-in is unknown or was already completed."))?;
    let text = |k: &str| record.data.get(k).and_then(Value::as_str).unwrap_or("");
    let (tenant, integration) = (text("tenant").to_owned(), text("integration").to_owned());
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if record
        .data
        .get("expiresAt")
        .and_then(Value::as_i64)
        .unwrap_or(0)
        <= now
    {
        let _ = store.delete(&path).await;
        return Err(bad(
            "This sign-in took too long and has expired. Start again.",
        ));
    }
    if record.data.get("used").and_then(Value::as_bool) != Some(false) {
        return Err(bad("This sign-in was already completed."));
    }
    let binder_ok = cookie(headers, BINDER_COOKIE).is_some_and(|b| {
        let want = text("binder");
        !want.is_empty()
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                digest(b).as_bytes(),
                want.as_bytes(),
            ))
    });
    if !binder_ok {
        return Err(bad(
            "This sign-in was started in another browser. Open the connect link again here.",
        ));
    }
    let app = c
        .app(&integration)
        .ok_or_else(|| bad("This integration is no longer configured."))?;
    // From here on the state is spent whatever happens: claim it first, so two
    // racing callbacks cannot both redeem the code.
    let mut claimed = record.data.clone();
    claimed.insert("used".into(), json!(true));
    match store
        .write(
            &path,
            claimed,
            BTreeMap::new(),
            Cas::Version(record.version),
        )
        .await
    {
        Ok(_) => {}
        Err(StoreError::Conflict) => return Err(bad("This sign-in was already completed.")),
        Err(e) => return Err(store_failed(&e)),
    }
    let outcome = redeem(state, c, &app, &tenant, &integration, &record.data, &params).await;
    let _ = store.delete(&path).await;
    outcome?;
    let from_settings = record.data.get("fromSettings").and_then(Value::as_bool) == Some(true);
    Ok(pages::html(
        StatusCode::OK,
        pages::connected(&integration, &tenant, from_settings),
    ))
}

/// Checks the provider's answer, redeems the code, stores the credential.
async fn redeem(
    state: &AppState,
    c: &Connect,
    app: &App,
    tenant: &str,
    integration: &str,
    pending: &Map<String, Value>,
    params: &BTreeMap<String, String>,
) -> Result<(), PageError> {
    if let Some(error) = params.get("error") {
        return Err(bad(format!("The provider did not grant access ({error}).")));
    }
    if let Some(issuer) = &app.cfg.issuer
        && params.get("iss") != Some(issuer)
    {
        tracing::warn!(integration, "connect callback with a wrong or missing iss");
        return Err(bad(
            "The answer did not come from this integration's provider (issuer mismatch).",
        ));
    }
    let code = params
        .get("code")
        .filter(|c| !c.is_empty())
        .ok_or_else(|| bad("The provider's answer carries no authorization code."))?;
    let ct = pending
        .get("verifier")
        .and_then(Value::as_str)
        .unwrap_or("");
    let path = pending_path(params.get("state").map(String::as_str).unwrap_or(""));
    let verifier = state
        .store
        .decrypt(INTERNAL_KEYRING, &path, &[ct])
        .await
        .map_err(|e| store_failed(&e))?;
    let verifier = String::from_utf8(verifier.first().map(|v| v.to_vec()).unwrap_or_default())
        .map_err(|_| store_failed(&StoreError::Corrupt("verifier".into())))?;
    let (Some(token_url), Some(client_id)) = (&app.cfg.token_url, &app.cfg.client_id) else {
        return Err(bad("This integration has no token_url."));
    };
    let mut client = BasicClient::new(ClientId::new(client_id.clone()))
        .set_token_uri(TokenUrl::new(token_url.clone()).map_err(|_| bad("bad token_url"))?)
        .set_redirect_uri(c.redirect_uri.clone())
        .set_auth_type(auth_type(app.cfg.auth_method));
    if let Some(s) = &app.secret {
        client = client.set_client_secret(ClientSecret::new(s.expose_secret().to_owned()));
    }
    let resp = client
        .exchange_code(AuthorizationCode::new(code.clone()))
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&Capped(&c.http))
        .await
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => {
                tracing::warn!(integration, error = %r.error(), "provider refused the authorization code");
                bad(format!(
                    "The provider refused the authorization code ({}).",
                    r.error()
                ))
            }
            e => {
                tracing::warn!(integration, error = %e, "authorization code exchange failed");
                PageError::new(
                    StatusCode::BAD_GATEWAY,
                    "Connection failed",
                    "The provider could not be reached, or answered something credgate cannot use.",
                )
            }
        })?;
    let token_type = resp.token_type().as_ref();
    if !token_type.eq_ignore_ascii_case("bearer") {
        return Err(PageError::new(
            StatusCode::BAD_GATEWAY,
            "Connection failed",
            "The provider issued a token type credgate cannot use.",
        ));
    }
    let scope = resp
        .scopes()
        .map(|s| s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .unwrap_or_else(|| app.cfg.scopes.clone())
        .join(" ");
    // The same document and the same code path as `PUT /api/admin/credentials/…`.
    let body = json!({
        "access_token": resp.access_token().secret(),
        "refresh_token": resp.refresh_token().map(|r| r.secret()),
        "expires_in": resp.expires_in().map(|d| d.as_secs()),
        "token_type": "Bearer",
        "scope": scope,
    });
    let body = zeroize::Zeroizing::new(serde_json::to_vec(&body).unwrap_or_default());
    let credential = admin_credentials::parse(&body, "connect").map_err(|_| {
        PageError::new(
            StatusCode::BAD_GATEWAY,
            "Connection failed",
            "The provider issued a token credgate cannot use.",
        )
    })?;
    admin_credentials::store(
        state,
        tenant,
        integration,
        &credential,
        "connect",
        AuditKind::CredentialConnected,
    )
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "storing the connected credential failed");
        PageError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Try again shortly",
            "credgate could not store the credential.",
        )
    })?;
    Ok(())
}

/// Revokes a tenant's credential at the integration's `revocation_url`
/// (RFC 7009): the refresh token, else the access token. A failure is logged
/// and audited; the caller deletes the credential all the same.
pub async fn revoke(state: &AppState, c: &Connect, tenant: &str, integration: &str, actor: &str) {
    let Some(app) = c.app(integration) else {
        return;
    };
    let (Some(url), Some(client_id)) = (&app.cfg.revocation_url, &app.cfg.client_id) else {
        return;
    };
    let failed = |reason: &str| {
        state.audit.record(
            AuditKind::RevocationFailed,
            AuditEvent {
                tenant: Some(tenant),
                integration: Some(integration),
                actor: Some(actor),
                reason: Some(reason),
                ..Default::default()
            },
        );
    };
    let stored = match credentials::load(state.store.as_ref(), tenant, integration).await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(tenant, integration, error = %e, "cannot read the credential to revoke it");
            failed("store_error");
            return;
        }
    };
    let cred = &stored.credential;
    if cred.token_type == API_KEY_TYPE {
        return;
    }
    // By hand rather than with `oauth2`: its revocation request refuses
    // `http://` endpoints, which its token requests (and `token_url`) allow.
    let (token, hint) = match &cred.refresh_token {
        Some(r) => (r, "refresh_token"),
        None => (&cred.access_token, "access_token"),
    };
    let mut form = vec![("token", token.expose_secret()), ("token_type_hint", hint)];
    let mut request = c.http.post(url);
    match (app.cfg.auth_method, &app.secret) {
        (ClientAuthMethod::ClientSecretBasic, Some(secret)) => {
            // RFC 6749 §2.3.1: both parts form-encoded before Basic.
            let enc = |s: &str| {
                percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
            };
            request = request.basic_auth(enc(client_id), Some(enc(secret.expose_secret())));
        }
        (_, secret) => {
            form.push(("client_id", client_id));
            if let Some(s) = secret {
                form.push(("client_secret", s.expose_secret()));
            }
        }
    }
    let result = match request.form(&form).send().await {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("provider answered {}", r.status())),
        Err(e) => Err(format!("request: {}", e.without_url())),
    };
    if let Err(e) = result {
        tracing::warn!(tenant, integration, error = %e, "token revocation failed; deleting the credential anyway");
        failed("revocation_failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A one-shot HTTP server answering `head` and `body_len` bytes; counts requests.
    async fn server(
        head: &'static str,
        body_len: usize,
    ) -> (String, tokio::task::JoinHandle<usize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/token", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut served = 0;
            while let Ok(Ok((mut s, _))) =
                tokio::time::timeout(std::time::Duration::from_millis(500), l.accept()).await
            {
                served += 1;
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(format!("{head}\r\ncontent-length: {body_len}\r\n\r\n").as_bytes())
                    .await;
                let _ = s.write_all(&vec![b'a'; body_len]).await;
            }
            served
        });
        (url, task)
    }

    /// The client credgate's provider calls use.
    fn client() -> reqwest::Client {
        super::super::provider_http(crate::tls::client_config(None).unwrap()).unwrap()
    }

    fn request(url: &str) -> HttpRequest {
        http::Request::post(url)
            .body(b"grant_type=x".to_vec())
            .unwrap()
    }

    #[tokio::test]
    async fn provider_answers_over_64_kib_are_refused() {
        let (url, _) = server("HTTP/1.1 200 OK", MAX_PROVIDER_ANSWER + 1).await;
        let err = capped(&client(), request(&url)).await.unwrap_err();
        assert!(err.to_string().contains("64 KiB"), "{err}");
        let (url, _) = server("HTTP/1.1 200 OK", 1000).await;
        assert_eq!(
            capped(&client(), request(&url)).await.unwrap().body().len(),
            1000
        );
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (url, task) = server("HTTP/1.1 302 Found\r\nlocation: /elsewhere", 0).await;
        let resp = capped(&client(), request(&url)).await.unwrap();
        assert_eq!(resp.status(), 302);
        assert_eq!(task.await.unwrap(), 1, "the redirect was followed");
    }

    #[test]
    fn state_shape() {
        assert!(well_formed_state(&random_token(32)));
        assert!(!well_formed_state("short"));
        assert!(!well_formed_state(&"../".repeat(15)));
    }
}
