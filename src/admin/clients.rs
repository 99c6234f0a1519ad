//! Admin API for credgate's OAuth clients (docs/http-api.md, "Admin API"), under
//! `/api/admin/oauth/clients`:
//!
//! | method | path | does |
//! |---|---|---|
//! | `POST` | `/` | create; the secret is shown once |
//! | `GET` | `/` | list (no secrets) |
//! | `GET`, `PUT`, `DELETE` | `/{id}` | read, partial update (`{"active": false}` suspends), delete |
//! | `POST` | `/{id}/rotate-secret` | new secret, old one valid for `graceMinutes` |
//! | `POST` | `/{id}/generate-token` | static API key for `expirationDays` |
//!
//! The caller has already authenticated the admin; validation and storage
//! live in [`crate::oauth`].

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use time::format_description::well_known::Rfc3339;

use crate::error::ProxyError;
use crate::http::{Body, json_no_store, json_response};
use crate::ids;
use crate::oauth::{Authority, ClientUpdate, NewClient, is_client_id};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RotateSecret {
    grace_minutes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct GenerateToken {
    expiration_days: Option<u64>,
}

/// Handles one request. `rest` = the path segments after
/// `/api/admin/oauth/clients`, still percent-encoded; `actor` names the admin
/// for the audit log.
pub async fn handle(
    authority: &Authority,
    method: &Method,
    rest: &[&str],
    body: Bytes,
    actor: &str,
) -> Result<Response<Body>, ProxyError> {
    for segment in rest {
        // Encoded tricks (`%2e%2e`, `%2F`, `%00`) and dots never reach a store path.
        ids::validate(segment).map_err(|e| ProxyError::bad_request(e.to_string()))?;
    }
    match (rest, method) {
        ([], &Method::POST) => create(authority, &body, actor).await,
        ([], &Method::GET) => Ok(list(authority)),
        ([id], &Method::GET) => get(authority, id),
        ([id], &Method::PUT) => update(authority, id, &body, actor).await,
        ([id], &Method::DELETE) => delete(authority, id, actor).await,
        ([id, "rotate-secret"], &Method::POST) => rotate(authority, id, &body, actor).await,
        ([id, "generate-token"], &Method::POST) => generate(authority, id, &body, actor).await,
        ([] | [_], _) | ([_, "rotate-secret" | "generate-token"], _) => {
            Err(ProxyError::MethodNotAllowed)
        }
        _ => Err(ProxyError::NotFound),
    }
}

/// Parses a JSON body; an empty body is `{}` when `empty_ok`.
fn parse<T: DeserializeOwned + Default>(body: &[u8], empty_ok: bool) -> Result<T, ProxyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(T::default())
        } else {
            Err(ProxyError::bad_request("a JSON body is required"))
        };
    }
    serde_json::from_slice(body).map_err(|e| ProxyError::bad_request(format!("invalid body: {e}")))
}

/// Known ids only: a well-formed id that is not one of ours is simply absent.
fn known_id(id: &str) -> Result<&str, ProxyError> {
    if is_client_id(id) {
        Ok(id)
    } else {
        Err(ProxyError::NotFound)
    }
}

fn ok(status: StatusCode, value: Value) -> Response<Body> {
    json_response(status, &value)
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

async fn create(a: &Authority, body: &[u8], actor: &str) -> Result<Response<Body>, ProxyError> {
    let spec: NewClient = serde_json::from_slice(body)
        .map_err(|e| ProxyError::bad_request(format!("invalid body: {e}")))?;
    let (client, secret) = a.create_client(spec, actor).await?;
    let mut shown = serde_json::to_value(client.view()).map_err(|_| ProxyError::Internal)?;
    // A client registered with a public key authenticates only with signed
    // assertions (private_key_jwt): it has no usable secret to show.
    let message = if client.jwks.is_some() {
        "Client created. It authenticates with private_key_jwt only."
    } else {
        shown["clientSecret"] = json!(secret.expose_secret());
        "Client created. Store the clientSecret now: it is not shown again."
    };
    Ok(json_no_store(
        StatusCode::CREATED,
        &json!({ "success": true, "message": message, "client": shown }),
    ))
}

fn list(a: &Authority) -> Response<Body> {
    let clients: Vec<_> = a.clients().list();
    let views: Vec<_> = clients.iter().map(|c| c.view()).collect();
    ok(StatusCode::OK, json!({ "success": true, "clients": views }))
}

fn get(a: &Authority, id: &str) -> Result<Response<Body>, ProxyError> {
    let client = a.clients().get(known_id(id)?).ok_or(ProxyError::NotFound)?;
    Ok(ok(
        StatusCode::OK,
        json!({ "success": true, "client": client.view() }),
    ))
}

async fn update(
    a: &Authority,
    id: &str,
    body: &[u8],
    actor: &str,
) -> Result<Response<Body>, ProxyError> {
    let patch: ClientUpdate = parse(body, false)?;
    let suspending = patch.active == Some(false);
    let client = a.update_client(known_id(id)?, patch, actor).await?;
    let message = if suspending {
        "Client suspended: its tokens no longer work."
    } else {
        "Client updated."
    };
    Ok(ok(
        StatusCode::OK,
        json!({ "success": true, "message": message, "client": client.view() }),
    ))
}

async fn delete(a: &Authority, id: &str, actor: &str) -> Result<Response<Body>, ProxyError> {
    a.delete_client(known_id(id)?, actor).await?;
    Ok(ok(
        StatusCode::OK,
        json!({ "success": true, "message": "Client deleted." }),
    ))
}

async fn rotate(
    a: &Authority,
    id: &str,
    body: &[u8],
    actor: &str,
) -> Result<Response<Body>, ProxyError> {
    let req: RotateSecret = parse(body, true)?;
    let (client, secret, rotated_at) = a
        .rotate_secret(known_id(id)?, req.grace_minutes, actor)
        .await?;
    Ok(json_no_store(
        StatusCode::OK,
        &json!({
            "success": true,
            "message": "Secret rotated. Store the clientSecret now: it is not shown again.",
            "clientId": &*client.client_id,
            "clientSecret": secret.expose_secret(),
            "rotatedAt": rfc3339(rotated_at),
            "previousSecretValidUntil": client.previous_secret_valid_until().map(rfc3339),
        }),
    ))
}

async fn generate(
    a: &Authority,
    id: &str,
    body: &[u8],
    actor: &str,
) -> Result<Response<Body>, ProxyError> {
    let req: GenerateToken = parse(body, true)?;
    let key = a
        .static_key(known_id(id)?, req.expiration_days, actor)
        .await?;
    Ok(json_no_store(
        StatusCode::OK,
        &json!({
            "success": true,
            "message": "Static API key created. Store it now: it is not shown again.",
            "api_key": key.api_key.expose_secret(),
            "token_type": "Bearer",
            "expires_in": key.expires_in,
            "expires_at": rfc3339(key.expires_at),
            "scope": key.scope,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::testing::authority;
    use http_body_util::BodyExt;

    async fn call(
        a: &Authority,
        method: Method,
        rest: &[&str],
        body: Value,
    ) -> Result<(StatusCode, http::HeaderMap, Value), ProxyError> {
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let resp = handle(a, &method, rest, body, "admin-token").await?;
        let (status, headers) = (resp.status(), resp.headers().clone());
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        Ok((status, headers, serde_json::from_slice(&bytes).unwrap()))
    }

    fn bad_request<T: std::fmt::Debug>(r: Result<T, ProxyError>) -> bool {
        matches!(r, Err(ProxyError::BadRequest(_)))
    }

    #[tokio::test]
    async fn create_shows_the_secret_once_and_list_get_never() {
        let (a, _) = authority().await;
        let body = json!({"name": "agent", "description": "d", "tenant": "tenant-1",
            "scopes": ["mcp"], "allowedIntegrations": ["github"], "allowedTools": ["echo"],
            "allowedIps": ["10.0.0.0/8", "127.0.0.1"], "tokenExpirationMinutes": 30});
        let (status, headers, v) = call(&a, Method::POST, &[], body).await.unwrap();
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(v["success"], true);
        let id = v["client"]["clientId"].as_str().unwrap().to_owned();
        let secret = v["client"]["clientSecret"].as_str().unwrap().to_owned();
        assert!(secret.len() >= 43);
        assert_eq!(
            v["client"]["allowedIps"],
            json!(["10.0.0.0/8", "127.0.0.1/32"])
        );
        assert_eq!(v["client"]["tenant"], "tenant-1");

        let (_, _, list) = call(&a, Method::GET, &[], Value::Null).await.unwrap();
        let (_, _, one) = call(&a, Method::GET, &[&id], Value::Null).await.unwrap();
        assert_eq!(one["client"]["name"], "agent");
        assert_eq!(list["clients"][0]["clientId"], json!(id));
        for doc in [list.to_string(), one.to_string()] {
            assert!(!doc.contains(&secret) && !doc.contains("clientSecret"));
            assert!(!doc.contains("sha256") && !doc.contains("secretHash"));
        }
    }

    #[tokio::test]
    async fn create_validation() {
        let (a, _) = authority().await;
        for body in [
            json!({"name": "n", "tenant": "Bad Tenant"}),
            json!({"name": "n"}),
            json!({"name": "n", "tenant": "a", "tenants": ["b"]}),
            json!({"name": "n", "tenants": []}),
            json!({"name": "n", "tenant": "a", "tokenExpirationMinutes": 1441}),
            json!({"name": "n", "tenant": "a", "tokenExpirationMinutes": 0}),
            json!({"name": "n", "tenant": "a", "surprise": 1}),
            json!({"name": "n", "tenant": "a", "allowedIps": ["nowhere"]}),
            json!({"name": "n", "tenant": "a", "allowedIntegrations": ["../x"]}),
            json!({"name": "n", "tenant": "a", "scopes": ["a b"]}),
            json!({"name": "", "tenant": "a"}),
            json!({"tenant": "a"}),
        ] {
            assert!(
                bad_request(call(&a, Method::POST, &[], body.clone()).await),
                "{body}"
            );
        }
        assert!(bad_request(call(&a, Method::POST, &[], Value::Null).await));
    }

    #[tokio::test]
    async fn path_segments_are_checked() {
        let (a, _) = authority().await;
        for seg in ["%2e%2e", "..", "a%2Fb", "a\0", "A", "a.b", ""] {
            assert!(
                bad_request(call(&a, Method::GET, &[seg], Value::Null).await),
                "{seg:?}"
            );
        }
        let absent = call(&a, Method::GET, &["cg-00000000000000000000"], Value::Null).await;
        assert!(matches!(absent, Err(ProxyError::NotFound)));
        let foreign = call(&a, Method::GET, &["tenant-1"], Value::Null).await;
        assert!(matches!(foreign, Err(ProxyError::NotFound)));
        let wrong = call(&a, Method::PATCH, &[], Value::Null).await;
        assert!(matches!(wrong, Err(ProxyError::MethodNotAllowed)));
    }

    #[tokio::test]
    async fn update_rotate_generate_delete() {
        let (a, _) = authority().await;
        let body = json!({"name": "agent", "tenant": "t", "scopes": ["mcp"]});
        let (_, _, v) = call(&a, Method::POST, &[], body).await.unwrap();
        let id = v["client"]["clientId"].as_str().unwrap().to_owned();

        let (_, _, v) = call(&a, Method::PUT, &[&id], json!({"active": false}))
            .await
            .unwrap();
        assert_eq!(v["client"]["active"], false);
        assert!(v["client"]["suspendedAt"].is_string());
        assert!(bad_request(
            call(&a, Method::POST, &[&id, "generate-token"], Value::Null).await
        ));
        let (_, _, v) = call(
            &a,
            Method::PUT,
            &[&id],
            json!({"active": true, "name": "x"}),
        )
        .await
        .unwrap();
        assert_eq!(
            (
                v["client"]["active"].as_bool(),
                v["client"]["name"].as_str()
            ),
            (Some(true), Some("x"))
        );
        assert!(bad_request(
            call(&a, Method::PUT, &[&id], json!({"bogus": 1})).await
        ));

        let (_, h, v) = call(
            &a,
            Method::POST,
            &[&id, "rotate-secret"],
            json!({"graceMinutes": 5}),
        )
        .await
        .unwrap();
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(v["clientId"], json!(id));
        assert!(v["clientSecret"].is_string() && v["previousSecretValidUntil"].is_string());
        let (_, _, v) = call(&a, Method::POST, &[&id, "rotate-secret"], Value::Null)
            .await
            .unwrap();
        assert!(v["rotatedAt"].is_string());

        let (_, _, v) = call(
            &a,
            Method::POST,
            &[&id, "generate-token"],
            json!({"expirationDays": 10}),
        )
        .await
        .unwrap();
        assert_eq!(v["expires_in"], 864_000);
        assert_eq!(
            (v["token_type"].as_str(), v["scope"].as_str()),
            (Some("Bearer"), Some("mcp"))
        );
        let key = v["api_key"].as_str().unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            format!("Bearer {key}").parse().unwrap(),
        );
        let rm: std::sync::Arc<str> = "http://x".into();
        assert!(a.authenticate(&h, None, None, &rm).is_ok());
        let too_long = json!({"expirationDays": 366});
        assert!(bad_request(
            call(&a, Method::POST, &[&id, "generate-token"], too_long).await
        ));

        call(&a, Method::DELETE, &[&id], Value::Null).await.unwrap();
        assert!(a.authenticate(&h, None, None, &rm).is_err());
        let gone = call(&a, Method::DELETE, &[&id], Value::Null).await;
        assert!(matches!(gone, Err(ProxyError::NotFound)));
    }
}
