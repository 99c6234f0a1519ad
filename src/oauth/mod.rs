//! credgate as an OAuth 2.0 authorization server for its own clients
//! (docs/http-api.md): the token endpoint, JWT access tokens and their validation on
//! every proxied request, signing keys, metadata, and the client registry.
//!
//! - [`Authority`] is the one handle the rest of the crate uses: `handle` for
//!   the OAuth and well-known endpoints, `authenticate` on the hot path (no
//!   store I/O: keys, clients and revocations are in memory, signature checks
//!   cached by token digest), `sync_loop` to follow other replicas.
//! - `clients`: the client record; `registry`: [`ClientRegistry`];
//!   `registration`: admin-driven client changes; `keys`: signing keys;
//!   `jwt`: tokens; `token`: `/oauth/token`; `assertion`: `private_key_jwt`; `metadata`: RFC 8414 / 9728
//!   documents; `throttle`: failed client authentication; `sync`: the change
//!   marker; `revoke`: revocations, `/oauth/revoke`, `/oauth/introspect`.

mod assertion;
mod clients;
mod jwt;
mod keys;
mod metadata;
mod registration;
mod registry;
mod request;
mod revoke;
mod sync;
#[cfg(test)]
pub(crate) mod testing;
mod throttle;
mod token;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, header};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use clients::{Client, ClientView, IpAllow, is_client_id};
pub use registration::{
    ClientUpdate, DEFAULT_GRACE_MINUTES, DEFAULT_STATIC_KEY_DAYS, MAX_GRACE_MINUTES, NewClient,
    StaticKey,
};
pub use registry::{ClientError, ClientRegistry};

use crate::audit::{Audit, AuditKind};
use crate::config::{Config, OAuthConfig};
use crate::error::{AuthFailure, OAuthError, OAuthErrorCode, ProxyError};
use crate::http::{Body, BoxError};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// The tenants a client (and its tokens) may act for: the `tenant` or
/// `tenants` member of client records and token claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Tenants {
    #[serde(rename = "tenant")]
    One(Arc<str>),
    #[serde(rename = "tenants")]
    Many(Arc<[Arc<str>]>),
}

impl Tenants {
    pub fn contains(&self, tenant: &str) -> bool {
        match self {
            Tenants::One(t) => **t == *tenant,
            Tenants::Many(ts) => ts.iter().any(|t| **t == *tenant),
        }
    }

    /// The tenant of a single-tenant client.
    pub fn single(&self) -> Option<&str> {
        match self {
            Tenants::One(t) => Some(t),
            Tenants::Many(_) => None,
        }
    }
}

/// The authenticated caller of a proxied or admin request.
#[derive(Debug)]
pub struct Principal {
    pub client_id: Arc<str>,
    /// From the token's claims.
    pub tenants: Tenants,
    pub scopes: Arc<[Arc<str>]>,
    /// The client's current record (allow lists, status).
    pub client: Arc<Client>,
    pub jti: Arc<str>,
    pub exp: u64,
}

impl Principal {
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| **s == *scope)
    }
}

/// A route as the authorization server sees it.
#[derive(Debug, Clone)]
struct Resource {
    /// `path_prefix`, `/` for the root and host routes.
    prefix: String,
    /// Shared by the tokens minted for it and their cache entries.
    url: Arc<str>,
    scopes: Vec<String>,
}

/// The protected resources (RFC 9728) the routes of `config` define.
fn resources_of(config: &Config) -> Vec<Resource> {
    let public_url = &config.proxy.public_url;
    config
        .routes
        .iter()
        .map(|r| Resource {
            prefix: r.path_prefix.clone().unwrap_or_else(|| "/".into()),
            url: r.resource_url(public_url).into(),
            scopes: r.required_scopes.clone(),
        })
        .collect()
}

/// The authorization server. Built once at start-up, shared as `Arc`.
pub struct Authority {
    issuer: Arc<str>,
    oauth: OAuthConfig,
    /// Swapped whole when the routes are reloaded (SIGHUP).
    resources: ArcSwap<Vec<Resource>>,
    sync_interval: Duration,
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    audit: Arc<Audit>,
    keys: RwLock<Arc<keys::KeySet>>,
    clients: ClientRegistry,
    revocations: revoke::Revocations,
    changes: Arc<sync::Changes>,
    cache: jwt::ValidationCache,
    throttle: throttle::Throttle,
    /// Wrong admin bearer tokens, per address: the same policy as client
    /// authentication, its own counters (a client hammering a wrong secret
    /// does not lock the operator out of the admin API, nor the reverse).
    admin_throttle: throttle::Throttle,
    /// `jti`s of `private_key_jwt` assertions already used (this process).
    seen_assertions: assertion::SeenAssertions,
    /// Wakes the sync loop early (a token named a kid we do not know yet).
    sync_now: Notify,
    /// SHA-256 of the bootstrap admin token (`CREDGATE_ADMIN_TOKEN`),
    /// accepted by the admin API and at `/oauth/introspect`.
    admin_token: Option<jwt::Digest>,
    /// `proxy.trusted_proxies`: how callers' addresses are resolved.
    trusted_proxies: Vec<ipnet::IpNet>,
    /// `proxy.body_read_timeout_seconds`.
    body_timeout: Duration,
}

/// Largest `/oauth/*` request body accepted.
const MAX_OAUTH_BODY: usize = 64 * 1024;

/// Longest bearer token looked at; ours are well under 2 KiB.
const MAX_TOKEN_LEN: usize = 8 * 1024;

impl Authority {
    /// Loads (or creates on first start) the signing key(s) from the store and
    /// all clients. `oauth.signing_alg = "RS256"` is refused (not built yet).
    pub async fn new(
        config: &Config,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        audit: Arc<Audit>,
    ) -> Result<Self, StoreError> {
        let changes = Arc::new(sync::Changes::default());
        // Note the marker first: a change made while we load triggers a reload.
        changes.moved(&*store).await?;
        let keys = keys::load_or_create(
            &*store,
            config.oauth.signing_alg,
            keys::Retention::of(&config.oauth),
        )
        .await?;
        let clients = ClientRegistry::new(store.clone(), changes.clone());
        clients.reload().await?;
        let revocations = revoke::Revocations::default();
        revocations.reload(&*store, jwt::unix_now()).await?;
        let resources = ArcSwap::from_pointee(resources_of(config));
        Ok(Authority {
            issuer: config.issuer().into(),
            oauth: config.oauth.clone(),
            resources,
            sync_interval: Duration::from_secs(config.store.sync_interval_seconds.max(1)),
            throttle: throttle::Throttle::new(
                config.oauth.max_failures_per_client,
                config.oauth.max_failures_per_address,
            ),
            admin_throttle: throttle::Throttle::new(
                config.oauth.max_failures_per_client,
                config.oauth.max_failures_per_address,
            ),
            seen_assertions: assertion::SeenAssertions::default(),
            store,
            metrics,
            audit,
            keys: RwLock::new(Arc::new(keys)),
            clients,
            revocations,
            changes,
            cache: jwt::ValidationCache::new(),
            sync_now: Notify::new(),
            admin_token: None,
            trusted_proxies: config.proxy.trusted_proxies.clone(),
            body_timeout: Duration::from_secs(config.proxy.body_read_timeout_seconds),
        })
    }

    /// Accepts `token` as the bootstrap admin token from now on. Only its
    /// digest is kept.
    pub fn set_admin_token(&mut self, token: Option<&secrecy::SecretString>) {
        use secrecy::ExposeSecret;
        self.admin_token = token.map(|t| jwt::digest(t.expose_secret()));
    }

    /// Whether `token` is the bootstrap admin token. Both sides are hashed
    /// first and the digests compared in constant time, so neither the
    /// content nor the length of the token leaks through timing.
    pub fn is_admin_token(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        self.admin_token
            .as_ref()
            .is_some_and(|expected| jwt::digest(token).ct_eq(expected).into())
    }

    /// The caller of a request from `peer`, resolved as for every endpoint
    /// (see [`crate::client_addr`]).
    pub fn resolve_client(
        &self,
        peer: std::net::IpAddr,
        headers: &http::HeaderMap,
    ) -> crate::client_addr::Resolved {
        crate::client_addr::resolve(peer, headers, &self.trusted_proxies)
    }

    /// How long a buffered request body may take to arrive.
    pub fn body_timeout(&self) -> Duration {
        self.body_timeout
    }

    /// `Some(retry_after)` while `key` is throttled for wrong admin bearer
    /// tokens (the admin API, `/oauth/introspect` with `Bearer`).
    pub fn admin_auth_blocked(&self, key: std::net::IpAddr) -> Option<u64> {
        self.admin_throttle
            .address_blocked(key, std::time::Instant::now())
    }

    /// Counts a wrong admin bearer token against the caller's address, like
    /// a failed client authentication; `Some(retry_after)` once over
    /// `oauth.max_failures_per_address` in a minute.
    pub fn admin_auth_failed(&self, key: std::net::IpAddr) -> Option<u64> {
        self.admin_throttle
            .record_failure(key, None, std::time::Instant::now())
    }

    /// Failures allowed per address per window (for `RateLimited` details).
    pub fn max_failures_per_address(&self) -> u32 {
        self.oauth.max_failures_per_address
    }

    /// Signs new tokens with a fresh key from now on; older keys stay in the
    /// JWKS. Other replicas pick the new key up at their next sync.
    pub async fn rotate_signing_key(&self) -> Result<Arc<str>, StoreError> {
        let next = keys::rotate(
            &*self.store,
            self.oauth.signing_alg,
            keys::Retention::of(&self.oauth),
        )
        .await?;
        let kid = next.active.kid.clone();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.changes.announce(&*self.store).await;
        self.audit.record(
            AuditKind::SigningKeyRotated,
            crate::audit::AuditEvent {
                reason: Some("rotated"),
                ..Default::default()
            },
        );
        Ok(kid)
    }

    /// Takes the routes of a reloaded config (resource URLs, RFC 9728 documents).
    pub fn reload_routes(&self, config: &Config) {
        self.resources.store(Arc::new(resources_of(config)));
    }

    pub fn clients(&self) -> &ClientRegistry {
        &self.clients
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Token lifetime limits and the rest of `[oauth]`.
    pub fn oauth_config(&self) -> &OAuthConfig {
        &self.oauth
    }

    fn keys(&self) -> Arc<keys::KeySet> {
        self.keys.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Answers `/oauth/token`, `/oauth/authorize`, `/oauth/introspect`,
    /// `/oauth/revoke`, `/.well-known/jwks.json`,
    /// `/.well-known/oauth-authorization-server` and
    /// `/.well-known/oauth-protected-resource[/<route prefix>]`. `None` when
    /// the path is none of these (the caller answers 404).
    pub async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
        peer: std::net::SocketAddr,
        request_id: &str,
    ) -> Option<Response<Body>> {
        self.handle_request(req, peer, request_id).await
    }

    /// [`Authority::handle`] for any body type (tests use buffered bodies).
    pub async fn handle_request<B>(
        &self,
        req: Request<B>,
        peer: std::net::SocketAddr,
        request_id: &str,
    ) -> Option<Response<Body>>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<BoxError>,
    {
        let client = self.resolve_client(peer.ip(), req.headers());
        let path = req.uri().path();
        let get_only = |doc: Option<Response<Body>>| {
            doc.map(|resp| match *req.method() {
                Method::GET | Method::HEAD => resp,
                _ => method_not_allowed("GET, HEAD", request_id),
            })
        };
        match path {
            "/oauth/token" | "/oauth/introspect" | "/oauth/revoke"
                if req.method() != Method::POST =>
            {
                Some(method_not_allowed("POST", request_id))
            }
            "/oauth/token" => Some(token::handle(self, req, client, request_id).await),
            "/oauth/introspect" => Some(revoke::introspect(self, req, client).await),
            "/oauth/revoke" => Some(revoke::revoke(self, req, client, request_id).await),
            "/oauth/authorize" => Some(
                OAuthError::new(
                    OAuthErrorCode::UnsupportedResponseType,
                    "credgate issues tokens through the client_credentials grant only",
                )
                .into_response(),
            ),
            "/.well-known/jwks.json" => get_only(Some(metadata::public_json(&self.keys().jwks()))),
            _ if metadata::is_as_metadata_path(path, &self.issuer) => get_only(Some(
                metadata::public_json(&metadata::authorization_server(self)),
            )),
            _ => get_only(
                metadata::protected_resource_path(self, path)
                    .map(|doc| metadata::public_json(&doc)),
            ),
        }
    }

    /// Hot path: validates the `Authorization: Bearer` token of a proxied or
    /// admin request without store I/O. `resource`: the route's resource URL
    /// (tokens for the issuer or exactly that resource pass); `None` for the
    /// admin API (issuer-audience tokens only). Counts
    /// `credgate_auth_failures_total{reason}` on failure.
    pub fn authenticate(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
        resource: Option<&str>,
        resource_metadata: &Arc<str>,
    ) -> Result<Arc<Principal>, ProxyError> {
        self.authenticate_at(headers, query, resource, jwt::unix_now())
            .map_err(|reason| {
                self.metrics
                    .auth_failures_total
                    .with_label_values(&[reason.as_str()])
                    .inc();
                ProxyError::Unauthorized {
                    reason,
                    resource_metadata: resource_metadata.clone(),
                }
            })
    }

    fn authenticate_at(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
        resource: Option<&str>,
        now: u64,
    ) -> Result<Arc<Principal>, AuthFailure> {
        if query.is_some_and(has_query_token) {
            return Err(AuthFailure::QueryToken);
        }
        let token = bearer_token(headers)?;
        let verified = self.verify_token(token)?;
        jwt::check_time(&verified, now)?;
        jwt::check_audience(&verified, &self.issuer, resource)?;
        let client = self.usable_client(&verified)?;
        // Scopes the client lost since the token was issued are dropped now,
        // not at expiry (the common case, nothing lost, allocates nothing).
        let held = |s: &Arc<str>| client.scopes.contains(s);
        let scopes =
            if Arc::ptr_eq(&verified.scopes, &client.scopes) || verified.scopes.iter().all(held) {
                verified.scopes.clone()
            } else {
                verified
                    .scopes
                    .iter()
                    .filter(|s| held(s))
                    .cloned()
                    .collect()
            };
        Ok(Arc::new(Principal {
            client_id: verified.client_id.clone(),
            tenants: verified.tenants.clone(),
            scopes,
            client,
            jti: verified.jti.clone(),
            exp: verified.exp,
        }))
    }

    /// Signature and static claims, from the cache when this token was seen.
    fn verify_token(&self, token: &str) -> Result<Arc<jwt::Verified>, AuthFailure> {
        self.cache.get_or_verify(token, || {
            let keys = self.keys();
            let result = jwt::verify(token, &keys, &self.issuer);
            if result.is_err() && !keys.has_kid_of(token) {
                // Perhaps another replica just added a key: look now rather
                // than at the next tick (the loop rate-limits this).
                self.sync_now.notify_one();
            }
            result.map(|v| self.shared(v))
        })
    }

    /// `v` with its strings swapped for equal ones already held (the
    /// client's id, tenants and scopes, the issuer or route URL), so a cache
    /// entry owns little more than its `jti`.
    fn shared(&self, mut v: jwt::Verified) -> jwt::Verified {
        if let Some(c) = self.clients.get(&v.client_id) {
            v.client_id = c.client_id.clone();
            if v.tenants == c.tenants {
                v.tenants = c.tenants.clone();
            }
            if *v.scopes == *c.scopes {
                v.scopes = c.scopes.clone();
            }
        }
        if *v.aud == *self.issuer {
            v.aud = self.issuer.clone();
        } else if let Some(r) = self.resources.load().iter().find(|r| *r.url == *v.aud) {
            v.aud = r.url.clone();
        }
        v
    }

    /// Whether the request bears the bootstrap admin token.
    pub(crate) fn is_bootstrap_admin(&self, headers: &http::HeaderMap) -> bool {
        bearer_token(headers).is_ok_and(|t| self.is_admin_token(t))
    }

    /// The token's client, if it still exists, is active, was not suspended
    /// after the token was issued, still holds the token's tenants, and the
    /// token is not revoked.
    fn usable_client(&self, v: &jwt::Verified) -> Result<Arc<Client>, AuthFailure> {
        let client = self
            .clients
            .get(&v.client_id)
            .ok_or(AuthFailure::ClientInactive)?;
        if !client.active || client.suspended_at_unix().is_some_and(|s| v.iat <= s) {
            return Err(AuthFailure::ClientInactive);
        }
        let tenants_held = match &v.tenants {
            Tenants::One(t) => client.tenants.contains(t),
            Tenants::Many(ts) => ts.iter().all(|t| client.tenants.contains(t)),
        };
        if !tenants_held || self.revocations.is_revoked(&v.jti) {
            return Err(AuthFailure::Revoked);
        }
        Ok(client)
    }
}

fn method_not_allowed(allow: &'static str, request_id: &str) -> Response<Body> {
    let mut resp = ProxyError::MethodNotAllowed.into_response(request_id);
    resp.headers_mut()
        .insert(header::ALLOW, http::HeaderValue::from_static(allow));
    resp
}

/// Whether the query string carries `access_token` (RFC 6750 §2.3), which
/// credgate never accepts.
fn has_query_token(query: &str) -> bool {
    query.split('&').any(|pair| {
        let key = pair.split('=').next().unwrap_or("").replace('+', " ");
        percent_encoding::percent_decode_str(&key)
            .decode_utf8_lossy()
            .eq_ignore_ascii_case("access_token")
    })
}

/// The token of a single `Authorization: Bearer …` header.
fn bearer_token(headers: &http::HeaderMap) -> Result<&str, AuthFailure> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthFailure::Missing)?;
    if values.next().is_some() {
        return Err(AuthFailure::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthFailure::Malformed)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthFailure::Missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthFailure::Missing);
    }
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(AuthFailure::Malformed);
    }
    Ok(token)
}

#[cfg(test)]
mod tests;
