//! The ops port: `/metrics`, `/healthz`, `/readyz`.

use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::json;

use crate::error::ProxyError;
use crate::http::{Body, full, json_response, request_id};
use crate::state::AppState;

/// Errors have the same body as the proxy port's (docs/errors.md).
fn error(e: ProxyError, req: &Request<Incoming>) -> Response<Body> {
    let rid = request_id(req.headers());
    let mut resp = e.into_response(rid.to_str().unwrap_or(""));
    resp.headers_mut().insert("x-request-id", rid);
    resp
}

pub async fn handle(state: &AppState, req: Request<Incoming>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error(ProxyError::MethodNotAllowed, &req);
    }
    match req.uri().path() {
        "/healthz" => json_response(StatusCode::OK, &json!({ "status": "ok" })),
        "/readyz" => readyz(state).await,
        "/metrics" => {
            let mut resp = Response::new(full(state.metrics.render()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        _ => error(ProxyError::NotFound, &req),
    }
}

/// Ready when the config is loaded (it is, or we would not be serving) and the
/// store answers. The body names each component.
async fn readyz(state: &AppState) -> Response<Body> {
    let store = match tokio::time::timeout(std::time::Duration::from_secs(2), state.store.health())
        .await
    {
        Ok(Ok(())) => json!({ "status": "ok", "backend": state.store.backend() }),
        // The store's own words (addresses, paths, Vault messages) go to
        // the log only; the ops port says which component fails.
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: store check failed");
            json!({ "status": "failing", "backend": state.store.backend() })
        }
        Err(_) => {
            tracing::warn!("readiness: store check timed out");
            json!({ "status": "failing", "backend": state.store.backend(), "reason": "timeout" })
        }
    };
    let ok = store["status"] == "ok";
    json_response(
        if ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        &json!({
            "status": if ok { "ready" } else { "not_ready" },
            "components": { "config": { "status": "ok" }, "store": store },
        }),
    )
}
