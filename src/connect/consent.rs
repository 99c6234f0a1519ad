//! The MCP-native consent answer: a proxied request that failed with
//! INTEGRATION_NOT_CONNECTED or REAUTHORIZATION_REQUIRED gets
//! `details.connect_url`, or, when it is one JSON-RPC request with an id,
//! HTTP 200 with JSON-RPC error -32042 (URL elicitation required, MCP
//! 2025-11-25) carrying the link (docs/connect.md). Called only once the
//! request already failed: the success path never comes here.

use http::{Method, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::{BODY_READ_TIMEOUT, MAX_RPC_BODY};
use crate::error::ProxyError;
use crate::http::{Body, read_body};
use crate::state::AppState;

/// Whether a proxied request's error is one a person can fix by connecting.
pub fn asks_for_consent(e: &ProxyError) -> bool {
    matches!(
        e,
        ProxyError::IntegrationNotConnected { .. } | ProxyError::ReauthorizationRequired { .. }
    )
}

/// Turns INTEGRATION_NOT_CONNECTED / REAUTHORIZATION_REQUIRED into what the
/// caller can act on: the error with `details.connect_url`, or, for one
/// JSON-RPC request with an id, HTTP 200 with JSON-RPC error -32042 (URL
/// elicitation required) carrying the link. Reads the request body only when
/// it is a small POST body of known length; anything else gets the plain 403.
/// Any other error is returned as it is.
pub async fn consent_required(
    state: &AppState,
    e: ProxyError,
    tenant: &str,
    integration: &str,
    parts: &http::request::Parts,
    body: &mut Option<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    if !asks_for_consent(&e) {
        return Err(e);
    }
    let (e, url) = with_connect_url(state, e, tenant, integration).await;
    let Some(url) = url else { return Err(e) };
    let small = body
        .as_ref()
        .and_then(|b| http_body::Body::size_hint(b).exact())
        .is_some_and(|n| n > 0 && n <= MAX_RPC_BODY);
    if parts.method != Method::POST || !small {
        return Err(e);
    }
    let Some(incoming) = body.take() else {
        return Err(e);
    };
    match read_body(incoming, MAX_RPC_BODY as usize, BODY_READ_TIMEOUT).await {
        Ok(bytes) => elicit(e, &bytes, &url, tenant, integration),
        Err(_) => Err(e),
    }
}

/// [`consent_required`] for a request whose body was kept (after an upstream
/// 401 whose refresh found the grant gone).
pub async fn consent_required_kept(
    state: &AppState,
    e: ProxyError,
    tenant: &str,
    integration: &str,
    method: &Method,
    kept: &[u8],
) -> Result<Response<Body>, ProxyError> {
    if !asks_for_consent(&e) {
        return Err(e);
    }
    let (e, url) = with_connect_url(state, e, tenant, integration).await;
    match url {
        Some(url) if method == Method::POST => elicit(e, kept, &url, tenant, integration),
        _ => Err(e),
    }
}

async fn with_connect_url(
    state: &AppState,
    e: ProxyError,
    tenant: &str,
    integration: &str,
) -> (ProxyError, Option<String>) {
    let url = state.connect.connect_url(state, tenant, integration).await;
    let e = match e {
        ProxyError::IntegrationNotConnected { .. } => ProxyError::IntegrationNotConnected {
            connect_url: url.clone(),
        },
        ProxyError::ReauthorizationRequired { .. } => ProxyError::ReauthorizationRequired {
            connect_url: url.clone(),
        },
        other => other,
    };
    (e, url)
}

/// The -32042 answer when `body` is one JSON-RPC request with an id, else `e`.
fn elicit(
    e: ProxyError,
    body: &[u8],
    url: &str,
    tenant: &str,
    integration: &str,
) -> Result<Response<Body>, ProxyError> {
    let Ok(serde_json::Value::Object(msg)) = serde_json::from_slice::<serde_json::Value>(body)
    else {
        return Err(e);
    };
    let id = match msg.get("id") {
        Some(id @ (serde_json::Value::String(_) | serde_json::Value::Number(_))) => id.clone(),
        _ => return Err(e),
    };
    if msg.get("jsonrpc").and_then(|v| v.as_str()) != Some("2.0")
        || !msg.get("method").is_some_and(|m| m.is_string())
    {
        return Err(e);
    }
    let message = if matches!(e, ProxyError::ReauthorizationRequired { .. }) {
        format!("Reconnect {integration}: its authorization for tenant {tenant} has ended.")
    } else {
        format!("Connect {integration} for tenant {tenant} to continue.")
    };
    let answer = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {
            "code": -32042,
            "message": "URL elicitation required",
            "data": { "elicitations": [{
                "mode": "url",
                "elicitationId": uuid::Uuid::new_v4().to_string(),
                "url": url,
                "message": message,
            }]},
        },
    });
    Ok(crate::http::json_response(StatusCode::OK, &answer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn not_connected() -> ProxyError {
        ProxyError::IntegrationNotConnected {
            connect_url: Some("https://g/connect/gh?link=x".into()),
        }
    }

    #[tokio::test]
    async fn one_request_with_an_id_gets_32042() {
        for (body, id) in [
            (
                r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#,
                json!(7),
            ),
            (r#"{"jsonrpc":"2.0","id":"a","method":"x"}"#, json!("a")),
        ] {
            let resp = elicit(not_connected(), body.as_bytes(), "https://u", "t", "gh").unwrap();
            assert_eq!(resp.status(), 200);
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["id"], id);
            assert_eq!(v["error"]["code"], -32042);
            let e = &v["error"]["data"]["elicitations"][0];
            assert_eq!(e["mode"], "url");
            assert_eq!(e["url"], "https://u");
            assert!(e["elicitationId"].as_str().is_some_and(|s| !s.is_empty()));
        }
    }

    #[test]
    fn anything_else_keeps_the_error() {
        for body in [
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
            r#"{"jsonrpc":"2.0","id":null,"method":"x"}"#,
            r#"[{"jsonrpc":"2.0","id":1,"method":"x"}]"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            "not json",
        ] {
            let e = elicit(not_connected(), body.as_bytes(), "https://u", "t", "gh").unwrap_err();
            assert!(
                matches!(e, ProxyError::IntegrationNotConnected { .. }),
                "{body}"
            );
        }
    }
}
