//! Connecting an integration (docs/connect.md): connect links and their page,
//! the authorization-code + PKCE flow, the MCP-native consent answer, and the
//! tenant settings page.
//!
//! `link` signs links, sessions and CSRF tokens; `consent` answers the
//! proxied requests that need a connection; `landing` is the connect link's
//! page and its button; `flow` runs the provider
//! side; `pages` renders HTML; `settings` is the tenant's page. Nothing here
//! runs on a proxied request's success path: [`consent_required`] is called
//! only once the request already failed for want of a credential.

pub mod consent;
pub mod flow;
pub mod landing;
pub mod link;
pub mod pages;
pub mod settings;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use oauth2::RedirectUrl;
use secrecy::SecretString;
use time::OffsetDateTime;

use crate::config::{Config, IntegrationConfig};
use crate::error::ProxyError;
use crate::http::{Body, read_body};
use crate::secrets::Secrets;
use crate::state::AppState;
use link::{Claims, Kind, Signer};

pub use consent::{asks_for_consent, consent_required, consent_required_kept};

/// Provider calls (token exchange, revocation) are bounded.
const PROVIDER_TIMEOUT: Duration = Duration::from_secs(15);
/// Form bodies are a CSRF token and a link: tiny.
const MAX_FORM_BYTES: usize = 8 * 1024;
/// A form body, and a JSON-RPC body read to answer -32042, must arrive within this.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JSON-RPC request read to answer -32042 (else the plain 403).
const MAX_RPC_BODY: u64 = 64 * 1024;
/// Connect and settings links: default and largest lifetime (minutes).
pub const DEFAULT_LINK_MINUTES: u64 = 15;
pub const MAX_LINK_MINUTES: u64 = 1440;

/// Binds a browser to the flows it started (SameSite=Lax: it must come back
/// with the provider's redirect).
const BINDER_COOKIE: &str = "credgate_flow";
/// A per-browser secret the connect page's CSRF token is bound to.
const CSRF_COOKIE: &str = "credgate_csrf";

/// Parameters credgate sets itself; `authorize_params` may not override them.
const RESERVED_PARAMS: [&str; 7] = [
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "code_challenge",
    "code_challenge_method",
];

/// An integration's OAuth app, as configured at start.
pub struct App {
    pub cfg: IntegrationConfig,
    secret: Option<SecretString>,
}

/// The configured integrations, swapped whole on reload.
pub struct Apps {
    by_id: BTreeMap<String, Arc<App>>,
    /// Every integration a tenant may see on its settings page.
    pub integrations: Vec<String>,
}

impl Apps {
    fn of(config: &Config, secrets: &Secrets) -> Self {
        let by_id = config
            .integrations
            .iter()
            .map(|(id, i)| {
                let secret = secrets.client_secret(id, i);
                let app = App {
                    cfg: i.clone(),
                    secret,
                };
                (id.clone(), Arc::new(app))
            })
            .collect();
        let mut integrations: Vec<String> = config
            .integrations
            .keys()
            .cloned()
            .chain(config.routes.iter().map(|r| r.integration.clone()))
            .collect();
        integrations.sort();
        integrations.dedup();
        Apps {
            by_id,
            integrations,
        }
    }
}

/// Why the connect endpoints cannot start.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("proxy.public_url: {0}")]
    PublicUrl(#[source] oauth2::url::ParseError),
    #[error("http client: {0}")]
    HttpClient(#[source] reqwest::Error),
}

/// What the connect endpoints share: the signing key, the provider client,
/// the integrations' apps.
pub struct Connect {
    signer: Signer,
    http: reqwest::Client,
    apps: ArcSwap<Apps>,
    /// Client secrets, for apps (re)loaded from the config.
    secrets: Arc<Secrets>,
    public_url: String,
    redirect_uri: RedirectUrl,
    secure_cookies: bool,
}

impl Connect {
    pub fn new(
        config: &Config,
        secrets: Arc<Secrets>,
        tls: rustls::ClientConfig,
    ) -> Result<Self, SetupError> {
        let http = provider_http(tls)?;
        let public_url = config.proxy.public_url.clone();
        let redirect_uri = RedirectUrl::new(format!("{public_url}/connect/callback"))
            .map_err(SetupError::PublicUrl)?;
        Ok(Connect {
            signer: Signer::default(),
            http,
            apps: ArcSwap::from_pointee(Apps::of(config, &secrets)),
            secrets,
            secure_cookies: public_url.starts_with("https://"),
            public_url,
            redirect_uri,
        })
    }

    /// Takes the integrations of a reloaded config (SIGHUP).
    pub fn reload(&self, config: &Config) {
        self.apps.store(Arc::new(Apps::of(config, &self.secrets)));
    }

    /// The integrations as configured now.
    pub fn apps(&self) -> Arc<Apps> {
        self.apps.load_full()
    }

    fn app(&self, integration: &str) -> Option<Arc<App>> {
        self.apps.load().by_id.get(integration).cloned()
    }

    /// Whether credgate can send a person through this integration's consent.
    pub fn can_connect(&self, integration: &str) -> bool {
        self.app(integration).is_some_and(|a| {
            a.cfg.authorize_url.is_some() && a.cfg.client_id.is_some() && a.cfg.token_url.is_some()
        })
    }

    /// A signed link URL: `/connect/{integration}?link=…` or `/settings/open?link=…`.
    pub async fn mint(
        &self,
        state: &AppState,
        tenant: &str,
        integration: Option<&str>,
        minutes: u64,
    ) -> Result<(String, OffsetDateTime), ProxyError> {
        let key = self.signer.key(state.store.as_ref()).await?;
        let expires = OffsetDateTime::now_utc() + time::Duration::minutes(minutes as i64);
        let claims = Claims {
            k: if integration.is_some() {
                Kind::Connect
            } else {
                Kind::Settings
            },
            t: tenant.to_owned(),
            i: integration.map(str::to_owned),
            e: expires.unix_timestamp(),
            s: None,
        };
        let value = Signer::sign(key, &claims);
        let url = match integration {
            Some(i) => format!("{}/connect/{i}?link={value}", self.public_url),
            None => format!("{}/settings/open?link={value}", self.public_url),
        };
        Ok((url, expires))
    }

    /// `details.connect_url` for a tenant without a usable credential: a fresh
    /// connect link, else the integration's static `connect_url`.
    pub async fn connect_url(
        &self,
        state: &AppState,
        tenant: &str,
        integration: &str,
    ) -> Option<String> {
        if self.can_connect(integration) {
            match self
                .mint(state, tenant, Some(integration), DEFAULT_LINK_MINUTES)
                .await
            {
                Ok((url, _)) => return Some(url),
                Err(e) => tracing::warn!(error = %e, "cannot mint a connect link"),
            }
        }
        self.app(integration)
            .and_then(|a| a.cfg.connect_url.clone())
    }
}

/// The client for provider calls: bounded in time, never following a redirect
/// (a provider endpoint that redirects could take the secret elsewhere).
fn provider_http(tls: rustls::ClientConfig) -> Result<reqwest::Client, SetupError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(PROVIDER_TIMEOUT)
        .build()
        .map_err(SetupError::HttpClient)
}

/// Checks an integration's connect keys (config validation).
pub fn validate_integration(id: &str, i: &IntegrationConfig) -> Result<(), String> {
    let urls = [
        ("authorize_url", &i.authorize_url),
        ("token_url", &i.token_url),
        ("revocation_url", &i.revocation_url),
        ("connect_url", &i.connect_url),
        ("issuer", &i.issuer),
    ];
    for (name, url) in urls {
        if let Some(u) = url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            return Err(format!(
                "integrations.{id}.{name} must be an http(s) URL, got `{u}`"
            ));
        }
    }
    if i.authorize_url.is_some() && (i.token_url.is_none() || i.client_id.is_none()) {
        return Err(format!(
            "integrations.{id}: authorize_url needs token_url and client_id"
        ));
    }
    if id == "connect" {
        // `connect` is the `route` label of the connect pages' metrics.
        return Err("integrations.connect: `connect` is a reserved name".into());
    }
    if i.authorize_url.is_some() && id == "callback" {
        return Err("integrations.callback: `callback` cannot be connected (its connect page would be /connect/callback)".into());
    }
    if i.revocation_url.is_some() && i.client_id.is_none() {
        return Err(format!("integrations.{id}: revocation_url needs client_id"));
    }
    for k in i.authorize_params.keys() {
        if RESERVED_PARAMS.contains(&k.as_str()) {
            return Err(format!(
                "integrations.{id}.authorize_params: `{k}` is set by credgate"
            ));
        }
    }
    for s in &i.scopes {
        if s.is_empty() || s.bytes().any(|c| c == b' ' || !(0x21..0x7f).contains(&c)) {
            return Err(format!(
                "integrations.{id}.scopes: `{s}` is not a scope token"
            ));
        }
    }
    Ok(())
}

/// Paths the connect endpoints own (no route may take them).
pub fn is_own_path(path: &str) -> bool {
    path == "/connect"
        || path.starts_with("/connect/")
        || path == "/settings"
        || path.starts_with("/settings/")
}

/// A page that says what went wrong.
#[derive(Debug)]
pub struct PageError {
    status: StatusCode,
    title: &'static str,
    text: String,
}

impl PageError {
    fn new(status: StatusCode, title: &'static str, text: impl Into<String>) -> Self {
        PageError {
            status,
            title,
            text: text.into(),
        }
    }

    fn into_response(self) -> Response<Body> {
        let mut resp = pages::message(self.status, self.title, &self.text, false);
        if self.status == StatusCode::REQUEST_TIMEOUT {
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// A cookie's value from the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
    same_site: &str,
    secure: bool,
) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::try_from(format!(
        "{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}"
    ))
    .expect("cookie values are base64url")
}

/// Reads a small `application/x-www-form-urlencoded` body, bounded in size and time.
async fn read_form(
    headers: &HeaderMap,
    body: Incoming,
) -> Result<BTreeMap<String, String>, PageError> {
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_type {
        return Err(PageError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Not a form",
            "This address takes the form on credgate's page only.",
        ));
    }
    let bytes: Bytes = match read_body(body, MAX_FORM_BYTES, BODY_READ_TIMEOUT).await {
        Ok(b) => b,
        Err(ProxyError::PayloadTooLarge { .. }) => {
            return Err(PageError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Form too large",
                "The form sent is larger than credgate's pages send.",
            ));
        }
        Err(ProxyError::RequestTimeout) => {
            return Err(PageError::new(
                StatusCode::REQUEST_TIMEOUT,
                "Too slow",
                "The form did not arrive in time.",
            ));
        }
        Err(_) => {
            return Err(PageError::new(
                StatusCode::BAD_REQUEST,
                "Form unreadable",
                "The form could not be read.",
            ));
        }
    };
    serde_urlencoded::from_bytes(&bytes).map_err(|_| {
        PageError::new(
            StatusCode::BAD_REQUEST,
            "Form unreadable",
            "The form is malformed.",
        )
    })
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query.unwrap_or(""))
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Answers `/connect/…` and `/settings…`.
pub async fn handle(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    let started = std::time::Instant::now();
    let resp = match dispatch(state, req).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    state.finish("connect", started, resp)
}

async fn dispatch(state: &AppState, req: Request<Incoming>) -> Result<Response<Body>, PageError> {
    let c = &state.connect;
    let path = req.uri().path().to_owned();
    let not_found = || PageError::new(StatusCode::NOT_FOUND, "Not found", "There is no page here.");
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    let method = req.method().clone();
    match (segments.as_slice(), &method) {
        (["connect", "callback"], &Method::GET) => {
            flow::callback(state, c, req.uri().query(), req.headers()).await
        }
        (["connect", integration], &Method::GET) => {
            landing::page(state, integration, req.uri().query(), req.headers()).await
        }
        (["connect", integration], &Method::POST) => {
            let integration = integration.to_string();
            let (parts, body) = req.into_parts();
            let form = read_form(&parts.headers, body).await?;
            landing::connect(state, &integration, &form, &parts.headers).await
        }
        (["settings", "open"], &Method::GET) => settings::open(state, req.uri().query()).await,
        (["settings"], &Method::GET) => {
            settings::page(state, req.headers(), req.uri().query()).await
        }
        (["settings", integration, action], &Method::POST) => {
            let (integration, action) = (integration.to_string(), action.to_string());
            let (parts, body) = req.into_parts();
            let form = read_form(&parts.headers, body).await?;
            settings::action(state, &integration, &action, &form, &parts.headers).await
        }
        (["connect", _] | ["settings"] | ["settings", _, _], _) => Err(PageError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "Not allowed",
            "This page does not take that kind of request.",
        )),
        _ => Err(not_found()),
    }
}

fn link_error(e: link::LinkError) -> PageError {
    PageError::new(
        StatusCode::BAD_REQUEST,
        "This link does not work",
        e.to_string(),
    )
}

async fn key(state: &AppState) -> Result<&ring::hmac::Key, PageError> {
    state
        .connect
        .signer
        .key(state.store.as_ref())
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot load the link signing key");
            PageError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Try again shortly",
                "credgate cannot reach its credential store right now.",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; credgate_flow_x=2; credgate_flow=3"),
        );
        assert_eq!(cookie(&h, BINDER_COOKIE), Some("3"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn own_paths() {
        for p in ["/connect", "/connect/x", "/settings", "/settings/open"] {
            assert!(is_own_path(p), "{p}");
        }
        for p in ["/connector", "/settingsx", "/mcp"] {
            assert!(!is_own_path(p), "{p}");
        }
    }
}
