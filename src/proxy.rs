//! The proxied request, top to bottom (docs/http-api.md, "Proxied requests"):
//! route → authenticate → tenant → authorize → rate limit → credential →
//! inject → forward.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::config::{Inject, InjectMode};
use crate::credentials::Cached;
use crate::error::ProxyError;
use crate::http::{Body, BodyTooLarge, ConnInfo, IdleTimeout, drain, full, read_body};
use crate::ids;
use crate::mcp;
use crate::oauth::{Principal, Tenants};
use crate::routes::Route;
use crate::state::{AppState, Live};
use crate::telemetry;
use crate::upstream::{self, Forward, X_TENANT_ID};

/// Answers a request that is not for credgate's own endpoints.
pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    conn: &ConnInfo,
    request_id: &HeaderValue,
) -> Response<Body> {
    let started = Instant::now();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host());
    let live = state.live.load();
    let Some(route) = live.routes.find(host, req.uri().path()) else {
        return state.finish(
            "none",
            started,
            error_response(ProxyError::NotFound, request_id),
        );
    };
    let (parts, body) = req.into_parts();
    let mut body = Some(body);
    // Filled only with `metrics.tenant_label`.
    let mut tenant = None;
    let prefix = route.path_prefix.as_deref().unwrap_or("/");
    let trace = telemetry::server_span(&parts, prefix, &route.integration, request_id);
    let fwd = forward(
        state,
        &live,
        route,
        parts,
        (&mut body, &mut tenant),
        conn,
        request_id,
    );
    let result = match &trace {
        None => fwd.await,
        Some(cx) => telemetry::within(cx, fwd).await,
    };
    telemetry::end(trace, &result);
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            let drained = match body {
                Some(body) => Box::pin(drain(body)).await,
                None => true,
            };
            let mut resp = error_response(e, request_id);
            if !drained {
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            resp
        }
    };
    state.finish_for(&route.integration, tenant.as_deref(), started, resp)
}

/// Whether the path has a `.` or `..` segment, plain or percent-encoded: the
/// upstream would resolve it outside the route's prefix (RFC 3986 §5.2.4).
fn has_dot_segment(path: &str) -> bool {
    // One dot, plain or `%2e`; returns what follows it.
    fn dot(s: &[u8]) -> Option<&[u8]> {
        match s {
            [b'.', rest @ ..] => Some(rest),
            [b'%', b'2', e, rest @ ..] if e.eq_ignore_ascii_case(&b'e') => Some(rest),
            _ => None,
        }
    }
    path.split('/').any(|segment| {
        dot(segment.as_bytes()).is_some_and(|rest| rest.is_empty() || dot(rest) == Some(&[]))
    })
}

fn error_response(e: ProxyError, request_id: &HeaderValue) -> Response<Body> {
    e.into_response(request_id.to_str().unwrap_or(""))
}

/// `body` is taken once the request is cleared to go upstream; until then an
/// error leaves it for the caller to drain.
async fn forward(
    state: &AppState,
    live: &Live,
    route: &Route,
    parts: http::request::Parts,
    (body, tenant_seen): (&mut Option<Incoming>, &mut Option<Arc<str>>),
    conn: &ConnInfo,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    if has_dot_segment(parts.uri.path()) {
        return Err(ProxyError::bad_request(
            "dot segments (`.`, `..`) are not allowed in the path",
        ));
    }
    let principal = telemetry::in_sync_span("authenticate", || {
        state.authority.authenticate(
            &parts.headers,
            parts.uri.query(),
            Some(&route.resource),
            &route.resource_metadata,
        )
    })?;
    let tenant = resolve_tenant(&principal, &parts.headers)?;
    telemetry::record_principal(&tenant, &principal.client_id);
    tracing::Span::current()
        .record("client_id", &*principal.client_id)
        .record("tenant", &*tenant);
    if state.metrics.tenant_label() {
        *tenant_seen = Some(tenant.clone());
    }
    authorize(&principal, route)?;
    let caller = state
        .authority
        .resolve_client(conn.peer.ip(), &parts.headers);
    if !principal.client.allows_ip(caller.addr) {
        return Err(ProxyError::Forbidden {
            message: "Source address not allowed for this client".into(),
            details: serde_json::json!({ "ip": caller.addr.to_string() }),
        });
    }
    live.rate_limits
        .acquire(&tenant, &principal.client_id)
        .await
        .inspect_err(|e| {
            if matches!(e, ProxyError::RateLimited { .. }) {
                state.metrics.count_rate_limited(&tenant);
            }
        })?;

    let limit = live.max_body_bytes;
    if declared_length(&parts.headers).is_some_and(|n| n > limit) {
        return Err(ProxyError::PayloadTooLarge { limit });
    }

    let credential = match telemetry::in_span(
        "credential lookup",
        state.credentials.get(&tenant, &route.integration),
    )
    .await
    {
        Ok(c) => c,
        // Boxed: rare, and the success path's future stays small.
        Err(e) => {
            let (t, i) = (&tenant, &route.integration);
            return Box::pin(crate::connect::consent_required(
                state, e, t, i, &parts, body,
            ))
            .await;
        }
    };
    let mut parts = upstream::upstream_parts(
        parts,
        &Forward {
            route,
            peer_ip: &conn.peer_ip,
            peer_trusted: caller.peer_trusted,
            proto: conn.proto(),
            request_id,
            credential: inject(route, &credential),
        },
    )?;

    let body = body.take().ok_or(ProxyError::Internal)?;
    // A small body is kept so the request can be replayed once after an
    // upstream 401 and a refresh; anything larger streams straight through.
    let replay_limit = live.max_replay_body_bytes.min(limit);
    // A client restricted to some tools, or a route with a tool policy, has
    // its JSON-RPC read and judged before anything goes up, whatever the
    // method or transfer encoding (docs/policy.md).
    let judge = mcp::Judge::new(route, &principal, &tenant);
    let keep = |body| read_body(body, replay_limit as usize, state.authority.body_timeout());
    let (kept, stream) = match http_body::Body::size_hint(&body).exact() {
        Some(n) if n <= replay_limit => (Some(keep(body).await?), None),
        _ if judge.is_some() => (Some(keep(body).await?), None),
        _ => (None, Some(body)),
    };
    let answer_filter = match &judge {
        Some(j) => j.check(
            &state.metrics,
            &state.audit,
            request_id.to_str().unwrap_or(""),
            &mut parts.headers,
            kept.as_deref(),
            limit,
        )?,
        None => None,
    };
    let retry_head = kept.as_ref().map(|_| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        )
    });
    let first_body = match (&kept, stream) {
        (Some(b), _) => full(b.clone()),
        (None, None) => crate::http::empty(),
        (None, Some(body)) => Limited::new(
            IdleTimeout::new(body, state.upstream.idle_timeout()),
            limit as usize,
        )
        .map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Box::new(BodyTooLarge(limit)) as crate::http::BoxError
            } else {
                e
            }
        })
        .boxed_unsync(),
    };
    let resp = send(state, route, Request::from_parts(parts, first_body)).await?;
    if resp.status() != StatusCode::UNAUTHORIZED {
        return mcp::filter_answer(answer_filter, resp);
    }
    // Boxed: rare, and its future would otherwise grow every request's.
    let retry = retry_head.map(|head| (head, kept.unwrap_or_default()));
    let resp = Box::pin(after_unauthorized(
        state,
        route,
        &tenant,
        credential.version,
        retry,
        resp,
    ))
    .await?;
    mcp::filter_answer(answer_filter, resp)
}

type RetryHead = (Method, http::Uri, http::HeaderMap);

/// Upstream 401: the credential was revoked or rotated behind our back.
/// Refreshes it, and sends the request again when its body was kept.
async fn after_unauthorized(
    state: &AppState,
    route: &Route,
    tenant: &Arc<str>,
    used: u64,
    retry: Option<(RetryHead, bytes::Bytes)>,
    resp: Response<Body>,
) -> Result<Response<Body>, ProxyError> {
    let Some(((method, uri, mut headers), kept)) = retry else {
        // Not replayable; refresh anyway so the caller's own retry succeeds.
        if let Err(e) = state
            .credentials
            .refresh_after_unauthorized(tenant, &route.integration, used)
            .await
        {
            tracing::debug!(error = %e, "refresh after upstream 401 failed");
        }
        return Ok(resp);
    };
    let fresh = match state
        .credentials
        .refresh_after_unauthorized(tenant, &route.integration, used)
        .await
    {
        Ok(Some(f)) => f,
        // Refreshed after a 401 moments ago: the upstream's 401 goes back.
        Ok(None) => return Ok(resp),
        Err(e) => {
            drop(resp);
            let i = &route.integration;
            return crate::connect::consent_required_kept(state, e, tenant, i, &method, &kept)
                .await;
        }
    };
    drop(resp);
    let (name, value) = inject(route, &fresh);
    headers.insert(name.clone(), value);
    let mut retry = Request::new(full(kept));
    *retry.method_mut() = method;
    *retry.uri_mut() = uri;
    *retry.headers_mut() = headers;
    send(state, route, retry).await
}

/// The header and value that carry the route's credential.
fn inject<'a>(route: &'a Route, c: &Cached) -> (&'a HeaderName, HeaderValue) {
    let value = match &route.inject {
        Inject::Mode(InjectMode::Bearer) => c.bearer.clone(),
        Inject::Mode(InjectMode::Basic) => c.basic.clone(),
        Inject::Header { .. } => c.raw.clone(),
    };
    (&route.inject_header, value)
}

async fn send(
    state: &AppState,
    route: &Route,
    mut req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let started = Instant::now();
    let span = telemetry::upstream_span(req.headers_mut());
    let resp = state.upstream.send(&route.upstream, req).await;
    telemetry::end(span, &resp);
    state
        .metrics
        .upstream_request_duration_seconds
        .with_label_values(&[&route.integration])
        .observe(started.elapsed().as_secs_f64());
    resp
}

fn declared_length(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// The tenant a request acts for (docs/http-api.md, "Proxied requests" step 3).
fn resolve_tenant(p: &Principal, headers: &http::HeaderMap) -> Result<Arc<str>, ProxyError> {
    let named = match headers.get(&X_TENANT_ID) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| ids::validate(s).ok())
                .ok_or_else(|| ProxyError::bad_request("invalid X-Tenant-Id"))?,
        ),
    };
    match (&p.tenants, named) {
        (Tenants::One(t), None) => Ok(t.clone()),
        (Tenants::One(t), Some(n)) if **t == *n => Ok(t.clone()),
        (Tenants::One(_), Some(_)) => Err(tenant_forbidden()),
        (Tenants::Many(_), None) => Err(ProxyError::bad_request(
            "X-Tenant-Id is required for a client with several tenants",
        )),
        (Tenants::Many(list), Some(n)) => list
            .iter()
            .find(|t| ***t == *n)
            .cloned()
            .ok_or_else(tenant_forbidden),
    }
}

fn tenant_forbidden() -> ProxyError {
    ProxyError::forbidden("Tenant not allowed for this client")
}

/// Scopes and allowed integrations (docs/http-api.md, "Proxied requests" step 4).
fn authorize(p: &Principal, route: &Route) -> Result<(), ProxyError> {
    if let Some(missing) = route.required_scopes.iter().find(|s| !p.has_scope(s)) {
        tracing::debug!(scope = %missing, "insufficient scope");
        return Err(ProxyError::InsufficientScope {
            scope: route.required_scopes.join(" "),
            resource_metadata: route.resource_metadata.clone(),
        });
    }
    if !p.client.allows_integration(&route.integration) {
        return Err(ProxyError::Forbidden {
            message: "Integration not allowed for this client".into(),
            details: serde_json::json!({ "integration": &*route.integration }),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_plain_or_encoded() {
        for bad in [
            "/a/../b",
            "/a/./b",
            "/..",
            "/.",
            "/a/%2e%2E/b",
            "/a/%2E/b",
            "/a/.%2e",
            "/a/%2e.",
        ] {
            assert!(has_dot_segment(bad), "{bad}");
        }
        for ok in [
            "/a/b",
            "/a/.b",
            "/a/..b",
            "/a/...",
            "/a/%2e%2e%2e",
            "/a/%2f",
            "/a/b.",
            "/%2",
            "/",
        ] {
            assert!(!has_dot_segment(ok), "{ok}");
        }
    }
}
