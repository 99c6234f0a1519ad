//! The errors callers see, and the one place they become HTTP (docs/errors.md).
//!
//! Every variant's status is chosen in [`ProxyError::status_and_code`], an
//! exhaustive match: a new variant does not compile until it has a status.
//! Messages are short and secret-free; details go to the log once, by the
//! code that raised the error.

use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use crate::http::{Body, json_response};

/// Why a bearer token was refused (the `reason` label of
/// `credgate_auth_failures_total`; bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    Missing,
    Malformed,
    BadSignature,
    Expired,
    WrongAudience,
    Revoked,
    ClientInactive,
    QueryToken,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 8] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::BadSignature,
        AuthFailure::Expired,
        AuthFailure::WrongAudience,
        AuthFailure::Revoked,
        AuthFailure::ClientInactive,
        AuthFailure::QueryToken,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Expired => "expired",
            AuthFailure::WrongAudience => "wrong_audience",
            AuthFailure::Revoked => "revoked",
            AuthFailure::ClientInactive => "client_inactive",
            AuthFailure::QueryToken => "query_token",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthorized: {}", reason.as_str())]
    Unauthorized {
        reason: AuthFailure,
        /// URL of the route's RFC 9728 document, for `WWW-Authenticate`.
        resource_metadata: Arc<str>,
    },
    #[error("forbidden: {message}")]
    Forbidden { message: String, details: Value },
    #[error("insufficient scope: {scope}")]
    InsufficientScope {
        scope: String,
        resource_metadata: Arc<str>,
    },
    #[error("integration not connected")]
    IntegrationNotConnected { connect_url: Option<String> },
    #[error("reauthorization required")]
    ReauthorizationRequired { connect_url: Option<String> },
    #[error("credential refresh failed")]
    CredentialRefreshFailed { retry_after_secs: u64 },
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("payload too large")]
    PayloadTooLarge { limit: u64 },
    /// A body credgate buffers did not arrive within
    /// `proxy.body_read_timeout_seconds`; the connection is closed after.
    #[error("request body timed out")]
    RequestTimeout,
    #[error("rate limited")]
    RateLimited {
        limit: u32,
        remaining: u32,
        reset_after_secs: u64,
        reset_at: String,
    },
    /// The shared rate-limit backend cannot answer and
    /// `rate_limit.redis.on_error = "deny"`.
    #[error("rate limit backend unavailable")]
    RateLimitUnavailable { retry_after_secs: u64 },
    #[error("conflict: {0}")]
    Conflict(String),
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    #[error("store unavailable")]
    StoreUnavailable { retry_after_secs: u64 },
    #[error("upstream timeout")]
    UpstreamTimeout,
    #[error("internal error")]
    Internal,
}

impl ProxyError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        ProxyError::BadRequest(msg.into())
    }

    pub fn forbidden(msg: impl Into<String>) -> Self {
        ProxyError::Forbidden {
            message: msg.into(),
            details: Value::Null,
        }
    }

    /// The one mapping from error to status and code (docs/errors.md).
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            ProxyError::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ProxyError::Forbidden { .. } | ProxyError::InsufficientScope { .. } => {
                (StatusCode::FORBIDDEN, "FORBIDDEN")
            }
            ProxyError::IntegrationNotConnected { .. } => {
                (StatusCode::FORBIDDEN, "INTEGRATION_NOT_CONNECTED")
            }
            ProxyError::ReauthorizationRequired { .. } => {
                (StatusCode::FORBIDDEN, "REAUTHORIZATION_REQUIRED")
            }
            ProxyError::CredentialRefreshFailed { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "CREDENTIAL_REFRESH_FAILED")
            }
            ProxyError::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ProxyError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            ProxyError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE")
            }
            ProxyError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT"),
            ProxyError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED"),
            ProxyError::RateLimitUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "RATE_LIMIT_UNAVAILABLE")
            }
            ProxyError::Conflict(_) => (StatusCode::CONFLICT, "CONFLICT"),
            ProxyError::UpstreamUnavailable => (StatusCode::BAD_GATEWAY, "UPSTREAM_UNAVAILABLE"),
            ProxyError::StoreUnavailable { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE")
            }
            ProxyError::UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT"),
            ProxyError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR"),
        }
    }

    fn message(&self) -> String {
        match self {
            ProxyError::BadRequest(m) | ProxyError::Conflict(m) => m.clone(),
            ProxyError::Unauthorized { reason, .. } => match reason {
                AuthFailure::Missing => {
                    "Authentication required: send `Authorization: Bearer <token>`".into()
                }
                AuthFailure::QueryToken => "Tokens are not accepted in the query string".into(),
                AuthFailure::Expired => "Token expired".into(),
                AuthFailure::Revoked => "Token revoked".into(),
                AuthFailure::ClientInactive => "Client suspended".into(),
                _ => "Invalid token".into(),
            },
            ProxyError::Forbidden { message, .. } => message.clone(),
            ProxyError::InsufficientScope { .. } => "Insufficient scope".into(),
            ProxyError::IntegrationNotConnected { .. } => {
                "Tenant has no credential for this integration".into()
            }
            ProxyError::ReauthorizationRequired { .. } => {
                "The upstream credential cannot be refreshed; reauthorize the integration".into()
            }
            ProxyError::CredentialRefreshFailed { .. } => {
                "The upstream credential expired and could not be refreshed".into()
            }
            ProxyError::NotFound => "Not found".into(),
            ProxyError::MethodNotAllowed => "Method not allowed".into(),
            ProxyError::PayloadTooLarge { .. } => "Request body too large".into(),
            ProxyError::RequestTimeout => "Request body not received in time".into(),
            ProxyError::RateLimited { .. } => "Too many requests".into(),
            ProxyError::RateLimitUnavailable { .. } => "Rate limit service unavailable".into(),
            ProxyError::UpstreamUnavailable => "Upstream unavailable".into(),
            ProxyError::StoreUnavailable { .. } => "Credential store unavailable".into(),
            ProxyError::UpstreamTimeout => "Upstream timed out".into(),
            ProxyError::Internal => "Internal error".into(),
        }
    }

    fn details(&self) -> Option<Value> {
        match self {
            ProxyError::Forbidden { details, .. } if !details.is_null() => Some(details.clone()),
            ProxyError::InsufficientScope { scope, .. } => Some(json!({ "required_scope": scope })),
            ProxyError::IntegrationNotConnected {
                connect_url: Some(url),
            }
            | ProxyError::ReauthorizationRequired {
                connect_url: Some(url),
            } => Some(json!({ "connect_url": url })),
            ProxyError::PayloadTooLarge { limit } => Some(json!({ "limit": limit })),
            ProxyError::RateLimited {
                limit,
                remaining,
                reset_at,
                ..
            } => Some(json!({ "limit": limit, "remaining": remaining, "reset_at": reset_at })),
            _ => None,
        }
    }

    /// Renders the docs/errors.md body and the headers that go with it.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let (status, code) = self.status_and_code();
        let mut error = json!({ "code": code, "message": self.message() });
        if let Some(details) = self.details() {
            error["details"] = details;
        }
        let mut resp = json_response(status, &json!({ "error": error, "request_id": request_id }));
        let h = resp.headers_mut();
        match &self {
            ProxyError::Unauthorized {
                reason,
                resource_metadata,
            } => {
                let mut v =
                    format!(r#"Bearer realm="credgate", resource_metadata="{resource_metadata}""#);
                if !matches!(reason, AuthFailure::Missing) {
                    v.push_str(r#", error="invalid_token""#);
                }
                insert(h, header::WWW_AUTHENTICATE, &v);
            }
            ProxyError::InsufficientScope {
                scope,
                resource_metadata,
            } => insert(
                h,
                header::WWW_AUTHENTICATE,
                &format!(
                    r#"Bearer error="insufficient_scope", scope="{scope}", resource_metadata="{resource_metadata}""#
                ),
            ),
            ProxyError::RateLimited {
                limit,
                remaining,
                reset_after_secs,
                ..
            } => {
                let secs = (*reset_after_secs).max(1).to_string();
                insert(h, header::RETRY_AFTER, &secs);
                insert_named(h, "ratelimit-limit", &limit.to_string());
                insert_named(h, "ratelimit-remaining", &remaining.to_string());
                insert_named(h, "ratelimit-reset", &secs);
            }
            ProxyError::CredentialRefreshFailed { retry_after_secs }
            | ProxyError::StoreUnavailable { retry_after_secs }
            | ProxyError::RateLimitUnavailable { retry_after_secs } => {
                insert(
                    h,
                    header::RETRY_AFTER,
                    &retry_after_secs.max(&1).to_string(),
                );
            }
            // The rest of the body may still be on its way: the connection
            // cannot carry another request.
            ProxyError::RequestTimeout => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        resp
    }
}

/// Retry-After for STORE_UNAVAILABLE.
const STORE_RETRY_AFTER_SECS: u64 = 5;

/// A store failure on a request path, as the caller sees it: logged here, so
/// `?` is all a handler writes.
impl From<crate::store::StoreError> for ProxyError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::StoreError;
        match e {
            StoreError::Unavailable(_) | StoreError::Io(_) => {
                tracing::warn!(error = %e, "credential store unavailable");
                ProxyError::StoreUnavailable {
                    retry_after_secs: STORE_RETRY_AFTER_SECS,
                }
            }
            StoreError::Conflict => ProxyError::Conflict("concurrent update; retry".into()),
            StoreError::Decrypt | StoreError::Corrupt(_) | StoreError::Refused(_) => {
                tracing::error!(error = %e, "credential record unusable");
                ProxyError::Internal
            }
        }
    }
}

fn insert(h: &mut http::HeaderMap, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(name, v);
    }
}

fn insert_named(h: &mut http::HeaderMap, name: &'static str, value: &str) {
    insert(h, header::HeaderName::from_static(name), value);
}

/// RFC 6749 §5.2 error codes, for the OAuth endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    InvalidTarget,
    AccessDenied,
    UnsupportedResponseType,
    /// Not in RFC 6749; answered with 429 when client authentication is throttled.
    SlowDown,
    /// Not in RFC 6749; answered with 408 when the body did not arrive in
    /// time (`proxy.body_read_timeout_seconds`), with `Connection: close`.
    RequestTimeout,
    ServerError,
    TemporarilyUnavailable,
}

impl OAuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthErrorCode::InvalidRequest => "invalid_request",
            OAuthErrorCode::InvalidClient => "invalid_client",
            OAuthErrorCode::InvalidGrant => "invalid_grant",
            OAuthErrorCode::UnauthorizedClient => "unauthorized_client",
            OAuthErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthErrorCode::InvalidScope => "invalid_scope",
            OAuthErrorCode::InvalidTarget => "invalid_target",
            OAuthErrorCode::AccessDenied => "access_denied",
            OAuthErrorCode::UnsupportedResponseType => "unsupported_response_type",
            OAuthErrorCode::SlowDown => "slow_down",
            OAuthErrorCode::RequestTimeout => "request_timeout",
            OAuthErrorCode::ServerError => "server_error",
            OAuthErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            OAuthErrorCode::InvalidClient => StatusCode::UNAUTHORIZED,
            OAuthErrorCode::AccessDenied => StatusCode::FORBIDDEN,
            OAuthErrorCode::SlowDown => StatusCode::TOO_MANY_REQUESTS,
            OAuthErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            OAuthErrorCode::ServerError => StatusCode::INTERNAL_SERVER_ERROR,
            OAuthErrorCode::TemporarilyUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            OAuthErrorCode::InvalidRequest
            | OAuthErrorCode::InvalidGrant
            | OAuthErrorCode::UnauthorizedClient
            | OAuthErrorCode::UnsupportedGrantType
            | OAuthErrorCode::InvalidScope
            | OAuthErrorCode::InvalidTarget
            | OAuthErrorCode::UnsupportedResponseType => StatusCode::BAD_REQUEST,
        }
    }
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {description}", code.as_str())]
pub struct OAuthError {
    pub code: OAuthErrorCode,
    pub description: String,
    /// Send `WWW-Authenticate: Basic realm="credgate"` (client used Basic).
    pub basic_challenge: bool,
    pub retry_after_secs: Option<u64>,
}

impl OAuthError {
    pub fn new(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        OAuthError {
            code,
            description: description.into(),
            basic_challenge: false,
            retry_after_secs: None,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut resp = json_response(
            self.code.status(),
            &json!({ "error": self.code.as_str(), "error_description": self.description }),
        );
        let h = resp.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.basic_challenge {
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(r#"Basic realm="credgate""#),
            );
        }
        if let Some(secs) = self.retry_after_secs {
            insert(h, header::RETRY_AFTER, &secs.max(1).to_string());
        }
        if self.code == OAuthErrorCode::RequestTimeout {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn body_json(resp: Response<Body>) -> Value {
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn rate_limited_has_spec_body_and_headers() {
        let resp = ProxyError::RateLimited {
            limit: 100,
            remaining: 0,
            reset_after_secs: 3,
            reset_at: "2026-01-01T00:00:03Z".into(),
        }
        .into_response("req-1");
        assert_eq!(resp.status(), 429);
        assert_eq!(resp.headers()["retry-after"], "3");
        assert_eq!(resp.headers()["ratelimit-limit"], "100");
        assert_eq!(resp.headers()["ratelimit-remaining"], "0");
        let v = body_json(resp).await;
        assert_eq!(v["error"]["code"], "RATE_LIMITED");
        assert_eq!(v["error"]["details"]["limit"], 100);
        assert_eq!(v["request_id"], "req-1");
    }

    #[tokio::test]
    async fn unauthorized_challenges() {
        let rm: Arc<str> = "http://x/.well-known/oauth-protected-resource".into();
        let missing = ProxyError::Unauthorized {
            reason: AuthFailure::Missing,
            resource_metadata: rm.clone(),
        }
        .into_response("r");
        let www = missing.headers()["www-authenticate"].to_str().unwrap();
        assert!(www.starts_with(r#"Bearer realm="credgate", resource_metadata="http://x/"#));
        assert!(!www.contains("invalid_token"));
        let bad = ProxyError::Unauthorized {
            reason: AuthFailure::BadSignature,
            resource_metadata: rm,
        }
        .into_response("r");
        assert!(
            bad.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .contains(r#"error="invalid_token""#)
        );
        assert_eq!(body_json(bad).await["error"]["code"], "UNAUTHORIZED");
    }

    #[tokio::test]
    async fn request_timeout_is_408_and_closes() {
        let resp = ProxyError::RequestTimeout.into_response("r");
        assert_eq!(resp.status(), 408);
        assert_eq!(resp.headers()["connection"], "close");
        assert_eq!(body_json(resp).await["error"]["code"], "REQUEST_TIMEOUT");
        let resp = OAuthError::new(OAuthErrorCode::RequestTimeout, "slow").into_response();
        assert_eq!(resp.status(), 408);
        assert_eq!(resp.headers()["connection"], "close");
        assert_eq!(body_json(resp).await["error"], "request_timeout");
    }

    #[tokio::test]
    async fn oauth_error_body() {
        let mut e = OAuthError::new(OAuthErrorCode::InvalidClient, "bad credentials");
        e.basic_challenge = true;
        let resp = e.into_response();
        assert_eq!(resp.status(), 401);
        assert_eq!(
            resp.headers()["www-authenticate"],
            r#"Basic realm="credgate""#
        );
        assert_eq!(resp.headers()["cache-control"], "no-store");
        let v = body_json(resp).await;
        assert_eq!(v["error"], "invalid_client");
        assert_eq!(v["error_description"], "bad credentials");
    }
}
