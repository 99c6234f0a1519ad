//! `POST /oauth/token`: the client_credentials grant (RFC 6749 §4.4).
//!
//! Phases, in order: read the body → address throttle → parse the body → pick the
//! one client authentication method → grant type → authenticate (throttled) →
//! client status and source address → scope → resource (audience) → mint.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;
use time::OffsetDateTime;

use super::assertion;
use super::jwt::{self, AccessClaims};
use super::request::{ClientAuth, invalid_request, parse, read_body};
use super::{Authority, Client};
use crate::audit::{AuditEvent, AuditKind};
use crate::client_addr::Resolved;
use crate::error::{OAuthError, OAuthErrorCode};
use crate::http::{Body, BoxError, json_no_store};

/// A refused request: the answer plus what the audit log and metrics record.
pub(crate) struct Denied {
    pub(crate) error: OAuthError,
    /// Set only when it names a registered client (never caller junk).
    pub(crate) client_id: Option<Arc<str>>,
}

impl From<OAuthError> for Denied {
    fn from(error: OAuthError) -> Self {
        Denied {
            error,
            client_id: None,
        }
    }
}

pub(crate) async fn handle<B>(
    auth: &Authority,
    req: Request<B>,
    client: Resolved,
    request_id: &str,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    match issue(auth, req, client, request_id).await {
        Ok(resp) => resp,
        Err(denied) => {
            auth.metrics
                .tokens_issued_total
                .with_label_values(&["denied"])
                .inc();
            let source_ip = Some(client.addr.to_string());
            auth.audit.record(
                AuditKind::TokenDenied,
                AuditEvent {
                    client_id: denied.client_id.as_deref(),
                    source_ip,
                    reason: Some(denied.error.code.as_str()),
                    request_id: Some(request_id),
                    ..Default::default()
                },
            );
            denied.error.into_response()
        }
    }
}

async fn issue<B>(
    auth: &Authority,
    req: Request<B>,
    caller: Resolved,
    request_id: &str,
) -> Result<Response<Body>, Denied>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // The body is read before any refusal: answering a throttled address with
    // its body unread would close a keep-alive connection without a word.
    let (parts, body) = req.into_parts();
    let body = read_body(body, auth.body_timeout).await?;
    // Throttled by the caller's resolved address, never by a shared ingress.
    let ip = caller.throttle_key();
    if let Some(wait) = auth.throttle.address_blocked(ip, Instant::now()) {
        return Err(slow_down(auth, wait).into());
    }
    let request = parse(&parts.headers, &body)?;
    match request.grant_type.as_deref() {
        None => return Err(invalid_request("grant_type is required").into()),
        Some("client_credentials") => {}
        Some(_) => {
            return Err(OAuthError::new(
                OAuthErrorCode::UnsupportedGrantType,
                "only client_credentials is supported",
            )
            .into());
        }
    }
    let client = authenticate_client(auth, &request.auth, ip)?;
    let denied = |error: OAuthError| Denied {
        error,
        client_id: Some(client.client_id.clone()),
    };
    if !client.active {
        let e = OAuthError::new(OAuthErrorCode::AccessDenied, "client is suspended");
        return Err(denied(e));
    }
    if !client.allows_ip(caller.addr) {
        let e = OAuthError::new(OAuthErrorCode::AccessDenied, "source address not allowed");
        return Err(denied(e));
    }
    let scopes = select_scopes(&client, request.scope.as_deref()).map_err(denied)?;
    let aud = auth
        .audience_for(request.resource.as_deref())
        .map_err(denied)?;
    let minutes = client
        .token_expiration_minutes
        .unwrap_or(auth.oauth.default_token_minutes)
        .min(auth.oauth.max_token_minutes);
    let (token, claims) = auth
        .mint(&client, &scopes, aud, minutes * 60, jwt::unix_now())
        .map_err(denied)?;
    auth.record_issued(
        AuditKind::TokenIssued,
        &client,
        &claims,
        caller.addr.ip(),
        Some(request_id),
        None,
    );
    Ok(json_no_store(
        StatusCode::OK,
        &json!({
            "access_token": token.expose_secret(),
            "token_type": "Bearer",
            "expires_in": claims.exp - claims.iat,
            "scope": claims.scope,
        }),
    ))
}

pub(crate) fn slow_down(auth: &Authority, wait: u64) -> OAuthError {
    auth.metrics
        .auth_failures_total
        .with_label_values(&["throttled"])
        .inc();
    let mut e = OAuthError::new(
        OAuthErrorCode::SlowDown,
        "too many failed authentications; retry later",
    );
    e.retry_after_secs = Some(wait);
    e
}

/// Checks the client's credentials; failures are throttled (see `throttle`).
pub(crate) fn authenticate_client(
    auth: &Authority,
    method: &ClientAuth,
    ip: IpAddr,
) -> Result<Arc<Client>, Denied> {
    let (id, secret, basic) = match method {
        ClientAuth::Basic { id, secret } => (id.as_str(), Some(secret), true),
        ClientAuth::Post { id, secret } => (id.as_str(), Some(secret), false),
        ClientAuth::Malformed => ("", None, true),
        ClientAuth::Assertion { id, assertion } => {
            return authenticate_assertion(auth, id.as_deref(), assertion, ip);
        }
        ClientAuth::None => {
            let mut e = OAuthError::new(
                OAuthErrorCode::InvalidClient,
                "client authentication required",
            );
            e.basic_challenge = true;
            return Err(e.into());
        }
    };
    let result = match secret {
        Some(s) => auth.clients.authenticate(id, s, OffsetDateTime::now_utc()),
        None => Err(false),
    };
    match result {
        Ok(client) => Ok(client),
        Err(known) => Err(failed(auth, known.then_some(id), basic, ip)),
    }
}

/// `private_key_jwt`: the assertion's `sub` names the client, whose
/// registered keys must verify it.
fn authenticate_assertion(
    auth: &Authority,
    client_id: Option<&str>,
    assertion: &SecretString,
    ip: IpAddr,
) -> Result<Arc<Client>, Denied> {
    let token = assertion.expose_secret();
    let claimed = assertion::claimed_client_id(token);
    let id = match (client_id, claimed.as_deref()) {
        (Some(given), Some(claimed)) if given != claimed => None,
        (_, claimed) => claimed,
    };
    let Some(client) = id.and_then(|id| auth.clients.get(id)) else {
        return Err(failed(auth, None, false, ip));
    };
    let iss = &*auth.issuer;
    let (slash, endpoint) = (format!("{iss}/"), format!("{iss}/oauth/token"));
    let audiences = [iss, slash.as_str(), endpoint.as_str()];
    let now = jwt::unix_now();
    // Replay is checked only after the signature: strangers cannot fill it.
    let verified = client
        .jwks
        .as_ref()
        .and_then(|jwks| assertion::verify(token, &client.client_id, jwks, &audiences, now))
        .is_some_and(|a| auth.seen_assertions.first_use(&client.client_id, &a, now));
    if verified {
        Ok(client)
    } else {
        Err(failed(auth, Some(&client.client_id), false, ip))
    }
}

/// Counts a failed client authentication: 429 once throttled, else 401.
fn failed(auth: &Authority, known_id: Option<&str>, basic: bool, ip: IpAddr) -> Denied {
    let client_id = known_id.map(Arc::<str>::from);
    if let Some(wait) = auth
        .throttle
        .record_failure(ip, client_id.as_deref(), Instant::now())
    {
        return Denied {
            error: slow_down(auth, wait),
            client_id,
        };
    }
    auth.metrics
        .auth_failures_total
        .with_label_values(&["invalid_client"])
        .inc();
    let mut e = OAuthError::new(
        OAuthErrorCode::InvalidClient,
        "client authentication failed",
    );
    e.basic_challenge = basic;
    Denied {
        error: e,
        client_id,
    }
}

/// The requested scopes, all of which the client must hold; none requested
/// means all of the client's. Order kept, duplicates dropped.
pub(crate) fn select_scopes(
    client: &Client,
    requested: Option<&str>,
) -> Result<Vec<Arc<str>>, OAuthError> {
    let mut out: Vec<Arc<str>> = Vec::new();
    for s in requested.unwrap_or("").split(' ').filter(|s| !s.is_empty()) {
        let held = client.scopes.iter().find(|c| ***c == *s).ok_or_else(|| {
            OAuthError::new(
                OAuthErrorCode::InvalidScope,
                "requested scope exceeds the client's scopes",
            )
        })?;
        if !out.contains(held) {
            out.push(held.clone());
        }
    }
    if out.is_empty() {
        out = client.scopes.to_vec();
    }
    Ok(out)
}

impl Authority {
    /// The `aud` for a token request: the issuer without `resource`, else
    /// the route whose resource URL it names (a trailing `/` is ignored:
    /// some clients normalize `http://host` to `http://host/`).
    pub(crate) fn audience_for(&self, resource: Option<&str>) -> Result<Arc<str>, OAuthError> {
        let Some(r) = resource else {
            return Ok(self.issuer.clone());
        };
        let trimmed = r.strip_suffix('/').unwrap_or(r);
        if trimmed == &*self.issuer {
            return Ok(self.issuer.clone());
        }
        self.resources
            .load()
            .iter()
            .find(|res| *res.url == *trimmed)
            .map(|res| res.url.clone())
            .ok_or_else(|| {
                OAuthError::new(
                    OAuthErrorCode::InvalidTarget,
                    "resource is not a resource this server protects",
                )
            })
    }

    /// Signs a token for `client`.
    pub(crate) fn mint(
        &self,
        client: &Client,
        scopes: &[Arc<str>],
        aud: Arc<str>,
        lifetime_secs: u64,
        now: u64,
    ) -> Result<(SecretString, AccessClaims), OAuthError> {
        // Tokens issued at or before the last suspension's second are
        // refused; a token minted after a reactivation in that same second
        // must not be, so its `iat` moves to the next second.
        let iat = client.suspended_at_unix().map_or(now, |s| now.max(s + 1));
        let claims = AccessClaims {
            iss: self.issuer.to_string(),
            sub: client.client_id.to_string(),
            aud: aud.to_string(),
            exp: iat + lifetime_secs,
            iat,
            nbf: now,
            jti: uuid::Uuid::new_v4().simple().to_string(),
            scope: scopes.join(" "),
            client_id: client.client_id.to_string(),
            tenants: client.tenants.clone(),
        };
        let token = jwt::sign(&self.keys().active, &claims)
            .ok_or_else(|| OAuthError::new(OAuthErrorCode::ServerError, "cannot sign token"))?;
        Ok((token, claims))
    }

    /// Metrics and audit for an issued token (never the token itself).
    pub(crate) fn record_issued(
        &self,
        kind: AuditKind,
        client: &Client,
        claims: &AccessClaims,
        ip: Option<IpAddr>,
        request_id: Option<&str>,
        actor: Option<&str>,
    ) {
        self.metrics
            .tokens_issued_total
            .with_label_values(&["issued"])
            .inc();
        self.audit.record(
            kind,
            AuditEvent {
                client_id: Some(&client.client_id),
                tenant: client.tenants.single(),
                source_ip: ip.map(|i| i.to_string()),
                request_id,
                actor,
                jti: Some(&claims.jti),
                ..Default::default()
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scope_selection() {
        let (a, _) = crate::oauth::testing::authority().await;
        let (c, _) = crate::oauth::tests::client(&a).await;
        let names = |v: Vec<Arc<str>>| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            names(select_scopes(&c, None).unwrap()),
            ["mcp", "admin", "introspect"]
        );
        assert_eq!(
            names(select_scopes(&c, Some("")).unwrap()),
            ["mcp", "admin", "introspect"]
        );
        assert_eq!(
            names(select_scopes(&c, Some("admin  mcp admin")).unwrap()),
            ["admin", "mcp"]
        );
        let err = select_scopes(&c, Some("mcp write")).unwrap_err();
        assert_eq!(err.code, OAuthErrorCode::InvalidScope);
    }
}
