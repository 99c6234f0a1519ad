//! `/api/admin/credentials/{tenant}/{integration}`: store, read metadata,
//! delete an upstream credential. Secrets go in, never out.

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;

use crate::audit::{AuditEvent, AuditKind};
use crate::credentials::{self, API_KEY_TYPE, Credential, Status};
use crate::error::ProxyError;
use crate::http::{Body, json_response};
use crate::ids;
use crate::refresh::Trigger;
use crate::state::AppState;
use crate::store::{Cas, StoreError};

/// An OAuth token response (RFC 6749 §5.1) as the provider returned it, or
/// `{ "apiKey": … }`. Other fields of a token response are ignored, so a
/// provider's answer can be pasted as is.
#[derive(Deserialize)]
struct PutBody {
    access_token: Option<SecretString>,
    refresh_token: Option<SecretString>,
    expires_in: Option<u64>,
    token_type: Option<String>,
    scope: Option<String>,
    #[serde(rename = "apiKey")]
    api_key: Option<SecretString>,
    #[serde(rename = "autoRefresh")]
    auto_refresh: Option<bool>,
}

pub async fn handle(
    state: &AppState,
    method: &Method,
    rest: &[&str],
    body: Bytes,
    actor: &str,
) -> Result<Response<Body>, ProxyError> {
    let (tenant, integration, action) = match rest {
        [t, i] => (*t, *i, None),
        [t, i, a] => (*t, *i, Some(*a)),
        _ => return Err(ProxyError::NotFound),
    };
    let tenant =
        ids::validate(tenant).map_err(|e| ProxyError::bad_request(format!("tenant: {e}")))?;
    let integration = ids::validate(integration)
        .map_err(|e| ProxyError::bad_request(format!("integration: {e}")))?;
    match (method, action) {
        (&Method::PUT, None) => put(state, tenant, integration, &body, actor).await,
        (&Method::GET, None) => get(state, tenant, integration).await,
        (&Method::DELETE, None) => delete(state, tenant, integration, actor).await,
        (&Method::POST, Some("refresh")) => refresh(state, tenant, integration).await,
        (_, None | Some("refresh")) => Err(ProxyError::MethodNotAllowed),
        (_, Some(_)) => Err(ProxyError::NotFound),
    }
}

/// Reads a token response (or `{apiKey}`) into a credential: what the PUT
/// takes, and what a connect callback's provider answer becomes.
pub(crate) fn parse(body: &[u8], actor: &str) -> Result<Credential, ProxyError> {
    let b: PutBody = serde_json::from_slice(body)
        .map_err(|e| ProxyError::bad_request(format!("invalid JSON body: {e}")))?;
    let now = OffsetDateTime::now_utc();
    let (access_token, token_type) = match (b.access_token, b.api_key) {
        (Some(t), None) => (t, b.token_type.unwrap_or_else(|| "Bearer".into())),
        (None, Some(k)) => (k, API_KEY_TYPE.into()),
        _ => {
            return Err(ProxyError::bad_request(
                "give exactly one of access_token or apiKey",
            ));
        }
    };
    for s in std::iter::once(&access_token).chain(b.refresh_token.as_ref()) {
        let v = secrecy::ExposeSecret::expose_secret(s);
        // It becomes a header value: visible ASCII only, no CR/LF smuggling.
        if v.is_empty() || v.len() > 16 * 1024 || !v.bytes().all(|c| (0x21..0x7f).contains(&c)) {
            return Err(ProxyError::bad_request(
                "tokens must be 1 to 16384 visible ASCII characters",
            ));
        }
    }
    // Past the year 9999 `OffsetDateTime` cannot count: refuse, never panic.
    let expires_at = b
        .expires_in
        .map(|s| {
            i64::try_from(s)
                .ok()
                .and_then(|s| now.checked_add(time::Duration::seconds(s)))
                .ok_or_else(|| ProxyError::bad_request("expires_in is out of range"))
        })
        .transpose()?;
    let auto_refresh = b
        .auto_refresh
        .unwrap_or(b.refresh_token.is_some() && expires_at.is_some());
    Ok(Credential {
        access_token,
        refresh_token: b.refresh_token,
        expires_at,
        scopes: b
            .scope
            .map(|s| s.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        token_type,
        created_by: actor.to_owned(),
        auto_refresh,
        refresh_count: 0,
        status: Status::Active,
    })
}

async fn put(
    state: &AppState,
    tenant: &str,
    integration: &str,
    body: &Bytes,
    actor: &str,
) -> Result<Response<Body>, ProxyError> {
    let credential = parse(body, actor)?;
    if !integration_in_use(state, integration) {
        return Err(ProxyError::bad_request(format!(
            "no route or [integrations] entry uses integration `{integration}`: a credential \
             stored for it would never be used (check the name, or add a route first)"
        )));
    }
    let (version, created) = store(
        state,
        tenant,
        integration,
        &credential,
        actor,
        AuditKind::CredentialStored,
    )
    .await?;
    // The answer is what a GET right after shows (same `updatedAt`).
    let store = state.credentials.store().as_ref();
    let meta = match credentials::load_summary(store, tenant, integration).await {
        Ok(Some(summary)) => summary.to_json(tenant, integration, OffsetDateTime::now_utc()),
        _ => credentials::Summary::of(&credential, version, String::new()).to_json(
            tenant,
            integration,
            OffsetDateTime::now_utc(),
        ),
    };
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &json!({ "success": true, "message": "Credential stored", "credential": meta }),
    ))
}

/// Stores a credential, replacing any earlier one, and schedules its refresh;
/// audits `kind`. Returns the new version and whether it is the first.
pub(crate) async fn store(
    state: &AppState,
    tenant: &str,
    integration: &str,
    credential: &Credential,
    actor: &str,
    kind: AuditKind,
) -> Result<(u64, bool), ProxyError> {
    let store = state.credentials.store().as_ref();
    let path = credentials::record_path(tenant, integration);
    let current = store.read(&path).await?;
    let cas = current
        .as_ref()
        .map_or(Cas::Absent, |r| Cas::Version(r.version));
    let version = credentials::save(store, tenant, integration, credential, cas)
        .await
        .map_err(|e| match e {
            StoreError::Conflict => {
                ProxyError::Conflict("the credential changed concurrently; retry".into())
            }
            e => e.into(),
        })?;
    state.credentials.invalidate(tenant, integration).await;
    state
        .credentials
        .refresher()
        .note_written(tenant, integration, credential);
    state.audit.record(
        kind,
        AuditEvent {
            tenant: Some(tenant),
            integration: Some(integration),
            actor: Some(actor),
            ..Default::default()
        },
    );
    Ok((version, current.is_none()))
}

/// Whether a route or an `[integrations]` entry names the integration.
fn integration_in_use(state: &AppState, integration: &str) -> bool {
    state.config.integrations.contains_key(integration)
        || state
            .live
            .load()
            .routes
            .iter()
            .any(|r| &*r.integration == integration)
}

async fn get(
    state: &AppState,
    tenant: &str,
    integration: &str,
) -> Result<Response<Body>, ProxyError> {
    // Metadata only: read the record, decrypt nothing.
    let summary =
        credentials::load_summary(state.credentials.store().as_ref(), tenant, integration)
            .await?
            .ok_or(ProxyError::NotFound)?;
    let meta = summary.to_json(tenant, integration, OffsetDateTime::now_utc());
    Ok(json_response(
        StatusCode::OK,
        &json!({ "success": true, "credential": meta }),
    ))
}

async fn refresh(
    state: &AppState,
    tenant: &str,
    integration: &str,
) -> Result<Response<Body>, ProxyError> {
    state
        .credentials
        .refresh(&tenant.into(), &integration.into(), None, Trigger::Admin)
        .await?;
    get(state, tenant, integration).await
}

async fn delete(
    state: &AppState,
    tenant: &str,
    integration: &str,
    actor: &str,
) -> Result<Response<Body>, ProxyError> {
    if !remove(state, tenant, integration, actor).await? {
        return Err(ProxyError::NotFound);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "success": true, "message": "Credential deleted" }),
    ))
}

/// Disconnects: revokes the credential at the provider when it has a
/// `revocation_url` (a failure is logged and audited), then deletes it.
/// Returns false when there was no credential.
pub(crate) async fn remove(
    state: &AppState,
    tenant: &str,
    integration: &str,
    actor: &str,
) -> Result<bool, ProxyError> {
    let store = state.credentials.store();
    let path = credentials::record_path(tenant, integration);
    if store.read(&path).await?.is_none() {
        return Ok(false);
    }
    crate::connect::flow::revoke(state, &state.connect, tenant, integration, actor).await;
    store.delete(&path).await?;
    state.credentials.invalidate(tenant, integration).await;
    state
        .credentials
        .refresher()
        .due()
        .set(tenant, integration, None);
    state.audit.record(
        AuditKind::CredentialDeleted,
        AuditEvent {
            tenant: Some(tenant),
            integration: Some(integration),
            actor: Some(actor),
            ..Default::default()
        },
    );
    Ok(true)
}
