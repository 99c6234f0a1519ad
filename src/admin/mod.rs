//! The admin API (docs/http-api.md, "Admin API"): authentication, path checks and dispatch.
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
use crate::http::{Body, drain, read_body};
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
    let (parts, body) = req.into_parts();
    // Authenticated from the headers alone: the body of a request that is
    // refused is never buffered, only drained briefly (and discarded) so a
    // keep-alive connection stays usable.
    let resp = match authenticate(state, &parts, peer, rid) {
        Ok(actor) => {
            tracing::Span::current().record("client_id", actor.as_str()); // the access log's
            match read_body(body, MAX_ADMIN_BODY, state.authority.body_timeout()).await {
                Ok(body) => dispatch(state, parts, body, &actor).await,
                Err(e) => Err(e),
            }
        }
        Err(e) => {
            let mut resp = e.into_response(rid);
            // Reading the body of an `Expect: 100-continue` request would
            // invite it; without it the caller sends nothing more.
            let expects = parts.headers.contains_key(http::header::EXPECT);
            if expects || !drain(body).await {
                resp.headers_mut()
                    .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp)
        }
    };
    let resp = resp.unwrap_or_else(|e| e.into_response(rid));
    state.finish("admin", started, resp)
}

async fn dispatch(
    state: &AppState,
    parts: http::request::Parts,
    body: bytes::Bytes,
    actor: &str,
) -> Result<Response<Body>, ProxyError> {
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
            let kid = state.authority.rotate_signing_key().await?;
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
                    e => e.into(),
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
            clients::handle(&state.authority, &parts.method, rest, body, actor).await
        }
        ["credentials", rest @ ..] => {
            credentials::handle(state, &parts.method, rest, body, actor).await
        }
        _ => Err(ProxyError::NotFound),
    }
}

/// The bootstrap admin token, or a credgate token with scope `admin` whose
/// client's `allowedIps` admit the caller. Wrong tokens count against the
/// caller's address like failed client authentications (429 once over
/// `oauth.max_failures_per_address` a minute). Returns the actor's name for
/// the audit log.
fn authenticate(
    state: &AppState,
    req: &http::request::Parts,
    peer: SocketAddr,
    rid: &str,
) -> Result<String, ProxyError> {
    let authority = &state.authority;
    let caller = authority.resolve_client(peer.ip(), &req.headers);
    let fail = |reason: &'static str| {
        state.audit.record(
            AuditKind::AdminAuthFailed,
            AuditEvent {
                reason: Some(reason),
                source_ip: Some(caller.addr.to_string()),
                request_id: Some(rid),
                ..Default::default()
            },
        );
    };
    let throttled = |wait: u64| {
        state
            .metrics
            .auth_failures_total
            .with_label_values(&["throttled"])
            .inc();
        let limit = authority.max_failures_per_address();
        ProxyError::RateLimited {
            limit,
            remaining: 0,
            reset_after_secs: wait,
            reset_at: reset_at(wait),
        }
    };
    if let Some(wait) = authority.admin_auth_blocked(caller.throttle_key()) {
        fail("throttled");
        return Err(throttled(wait));
    }
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
    if bearer.is_some_and(|t| authority.is_admin_token(t)) {
        return Ok("admin-token".into());
    }
    if bearer.is_none() {
        fail("missing");
        return Err(ProxyError::Unauthorized {
            reason: AuthFailure::Missing,
            resource_metadata: metadata,
        });
    }
    let principal = match authority.authenticate(&req.headers, req.uri.query(), None, &metadata) {
        Ok(p) => p,
        Err(e) => {
            fail("invalid_token");
            // A guess (a wrong bootstrap token, a forged or garbled JWT)
            // counts; a real token that expired or was revoked does not.
            let guess = matches!(
                e,
                ProxyError::Unauthorized {
                    reason: AuthFailure::Malformed | AuthFailure::BadSignature,
                    ..
                }
            );
            return match guess
                .then(|| authority.admin_auth_failed(caller.throttle_key()))
                .flatten()
            {
                Some(wait) => Err(throttled(wait)),
                None => Err(e),
            };
        }
    };
    if !principal.has_scope(ADMIN_SCOPE) {
        fail("insufficient_scope");
        return Err(ProxyError::InsufficientScope {
            scope: ADMIN_SCOPE.into(),
            resource_metadata: metadata,
        });
    }
    if !principal.client.allows_ip(caller.addr) {
        fail("address_not_allowed");
        return Err(ProxyError::Forbidden {
            message: "Source address not allowed for this client".into(),
            details: serde_json::json!({ "ip": caller.addr.to_string() }),
        });
    }
    Ok(principal.client_id.to_string())
}

/// RFC 3339 time `secs` from now.
fn reset_at(secs: u64) -> String {
    use time::format_description::well_known::Rfc3339;
    (time::OffsetDateTime::now_utc() + time::Duration::seconds(secs as i64))
        .format(&Rfc3339)
        .unwrap_or_default()
}
