//! Admin API for credgate's OAuth clients (SPEC §6), under
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
    shown["clientSecret"] = json!(secret.expose_secret());
    Ok(json_no_store(
        StatusCode::CREATED,
        &json!({
            "success": true,
            "message": "Client created. Store the clientSecret now: it is not shown again.",
            "client": shown,
        }),
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
            "previousSecretValidUntil": client.previous_secret_valid_until.map(rfc3339),
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
