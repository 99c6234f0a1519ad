//! The admin API (SPEC §6): authentication, path checks and dispatch.
//! `clients` owns the OAuth client handlers, `credentials` the upstream ones.

pub mod clients;
pub mod credentials;
pub mod links;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::audit::{AuditEvent, AuditKind};
use crate::error::{AuthFailure, ProxyError};
use crate::http::{Body, read_body};
use crate::state::AppState;

/// Admin request bodies are small JSON documents.
const MAX_ADMIN_BODY: usize = 1024 * 1024;

/// The admin scope a client token needs.
pub const ADMIN_SCOPE: &str = "admin";

pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
    request_id: &HeaderValue,
) -> Response<Body> {
    let started = Instant::now();
    let rid = request_id.to_str().unwrap_or("");
    let resp = match dispatch(state, req, peer, rid).await {
        Ok(r) => r,
        Err(e) => e.into_response(rid),
    };
    state.finish("admin", started, resp)
}

async fn dispatch(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
    rid: &str,
) -> Result<Response<Body>, ProxyError> {
    // The body is read first so an early refusal leaves the connection usable.
    let (parts, body) = req.into_parts();
    let body = read_body(body, MAX_ADMIN_BODY).await?;
    let actor = authenticate(state, &parts, peer, rid)?;
    let path = parts.uri.path();
    // Identifiers never contain `%`; refusing it outright closes `%2e%2e`,
    // `%2F` and `%00` tricks before any segment is looked at.
    if path.contains('%') {
        return Err(ProxyError::bad_request(
            "percent-encoded characters are not allowed in admin paths",
        ));
    }
    let rest = path
        .strip_prefix("/api/admin")
        .unwrap_or("")
        .trim_end_matches('/');
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    match segments.as_slice() {
        ["oauth", "signing-keys", "rotate"] if parts.method == http::Method::POST => {
            let kid = state
                .authority
                .rotate_signing_key()
                .await
                .map_err(|e| crate::credentials::store_error(&e))?;
            Ok(crate::http::json_response(
                http::StatusCode::OK,
                &serde_json::json!({ "success": true, "message": "Signing key rotated", "kid": &*kid }),
            ))
        }
        ["tenants", tenant, "rewrap"] if parts.method == http::Method::POST => {
            let tenant = crate::ids::validate(tenant)
                .map_err(|e| ProxyError::bad_request(format!("tenant: {e}")))?;
            let n = state
                .store
                .rewrap_tenant(tenant)
                .await
                .map_err(|e| match e {
                    crate::store::StoreError::Refused(m) => ProxyError::bad_request(m),
                    e => crate::credentials::store_error(&e),
                })?;
            Ok(crate::http::json_response(
                http::StatusCode::OK,
                &serde_json::json!({ "success": true, "message": "Credentials rewrapped", "rewrapped": n }),
            ))
        }
        [
            "tenants",
            tenant,
            "integrations",
            integration,
            "connect-link",
        ] if parts.method == http::Method::POST => {
            links::mint(state, tenant, Some(integration), &body).await
        }
        ["tenants", tenant, "settings-link"] if parts.method == http::Method::POST => {
            links::mint(state, tenant, None, &body).await
        }
        ["oauth", "clients", rest @ ..] => {
            clients::handle(&state.authority, &parts.method, rest, body, &actor).await
        }
        ["credentials", rest @ ..] => {
            credentials::handle(state, &parts.method, rest, body, &actor).await
        }
        _ => Err(ProxyError::NotFound),
    }
}

/// The bootstrap admin token, or a credgate token with scope `admin`.
/// Returns the actor's name for the audit log.
fn authenticate(
    state: &AppState,
    req: &http::request::Parts,
    peer: SocketAddr,
    rid: &str,
) -> Result<String, ProxyError> {
    let metadata: Arc<str> = format!(
        "{}/.well-known/oauth-protected-resource",
        state.config.proxy.public_url
    )
    .into();
    // Two Authorization headers are ambiguous (each hop may pick another): none.
    let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
    let bearer = match (values.next(), values.next()) {
        (Some(v), None) => v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")),
        _ => None,
    };
    if bearer.is_some_and(|t| state.is_admin_token(t)) {
        return Ok("admin-token".into());
    }
    let fail = |reason: &'static str| {
        state.audit.record(
            AuditKind::AdminAuthFailed,
            AuditEvent {
                reason: Some(reason),
                source_ip: Some(peer.ip().to_string()),
                request_id: Some(rid),
                ..Default::default()
            },
        );
    };
    if bearer.is_none() {
        fail("missing");
        return Err(ProxyError::Unauthorized {
            reason: AuthFailure::Missing,
            resource_metadata: metadata,
        });
    }
    let principal = state
        .authority
        .authenticate(&req.headers, req.uri.query(), None, &metadata)
        .inspect_err(|_| fail("invalid_token"))?;
    if !principal.has_scope(ADMIN_SCOPE) {
        fail("insufficient_scope");
        return Err(ProxyError::InsufficientScope {
            scope: ADMIN_SCOPE.into(),
            resource_metadata: metadata,
        });
    }
    Ok(principal.client_id.to_string())
}
