//! The proxied request, top to bottom (SPEC §3):
//! route → authenticate → tenant → authorize → rate limit → credential →
//! inject → forward.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::config::{Inject, InjectMode};
use crate::error::ProxyError;
use crate::http::Body;
use crate::ids;
use crate::oauth::{Principal, Tenants};
use crate::routes::Route;
use crate::state::AppState;
use crate::upstream::{self, Forward, X_TENANT_ID};

/// Marker error: the streamed request body passed `max_body_bytes`.
#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body over {} bytes", self.0)
    }
}

impl std::error::Error for BodyTooLarge {}

/// Answers a request that is not for credgate's own endpoints.
pub async fn handle(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
    proto: &'static str,
    request_id: &HeaderValue,
) -> Response<Body> {
    let started = Instant::now();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().host());
    let Some(route) = state.routes.find(host, req.uri().path()) else {
        return state.finish(
            "none",
            started,
            error_response(ProxyError::NotFound, request_id),
        );
    };
    let resp = match forward(state, route, req, peer, proto, request_id).await {
        Ok(resp) => resp,
        Err(e) => error_response(e, request_id),
    };
    state.finish(&route.integration, started, resp)
}

fn error_response(e: ProxyError, request_id: &HeaderValue) -> Response<Body> {
    e.into_response(request_id.to_str().unwrap_or(""))
}

async fn forward(
    state: &AppState,
    route: &Route,
    req: Request<Incoming>,
    peer: SocketAddr,
    proto: &'static str,
    request_id: &HeaderValue,
) -> Result<Response<Body>, ProxyError> {
    let principal = state.authority.authenticate(
        req.headers(),
        req.uri().query(),
        Some(&route.resource),
        &route.resource_metadata,
    )?;
    let tenant = resolve_tenant(&principal, req.headers())?;
    authorize(&principal, route)?;
    state
        .rate_limits
        .check(&tenant, &principal.client_id)
        .inspect_err(|_| state.metrics.rate_limited_total.inc())?;

    let limit = state.config.proxy.max_body_bytes;
    if declared_length(req.headers()).is_some_and(|n| n > limit) {
        return Err(ProxyError::PayloadTooLarge { limit });
    }

    let credential = state.credentials.get(&tenant, &route.integration).await?;
    let injected = match &route.inject {
        Inject::Mode(InjectMode::Bearer) => (&header::AUTHORIZATION, credential.bearer.clone()),
        Inject::Mode(InjectMode::Basic) => (&header::AUTHORIZATION, credential.basic.clone()),
        Inject::Header { .. } => (state.inject_header(route.index), credential.raw.clone()),
    };

    let (parts, body) = req.into_parts();
    let parts = upstream::upstream_parts(
        parts,
        &Forward {
            route,
            peer,
            proto,
            request_id,
            credential: injected,
        },
    )?;
    let body = Limited::new(body, limit as usize)
        .map_err(move |e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Box::new(BodyTooLarge(limit)) as crate::http::BoxError
            } else {
                e
            }
        })
        .boxed_unsync();

    let started = Instant::now();
    let resp = state.upstream.send(Request::from_parts(parts, body)).await;
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

/// The tenant a request acts for (SPEC §3 step 2).
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

/// Scopes and allowed integrations (SPEC §3 step 3).
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

/// Header names for `inject = { header = … }`, parsed once per route.
pub fn inject_headers(routes: &crate::routes::Routes) -> Vec<HeaderName> {
    routes
        .iter()
        .map(|r| match &r.inject {
            Inject::Header { header } => {
                HeaderName::from_bytes(header.as_bytes()).expect("validated header name")
            }
            Inject::Mode(_) => header::AUTHORIZATION,
        })
        .collect()
}
