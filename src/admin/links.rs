//! `POST /api/admin/tenants/{tenant}/integrations/{integration}/connect-link`
//! and `POST /api/admin/tenants/{tenant}/settings-link`: signed, expiring
//! links a person of the tenant opens in a browser (docs/connect.md).

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use time::format_description::well_known::Rfc3339;

use crate::connect::{DEFAULT_LINK_MINUTES, MAX_LINK_MINUTES};
use crate::error::ProxyError;
use crate::http::{Body, json_response};
use crate::ids;
use crate::state::AppState;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct LinkBody {
    expires_in_minutes: Option<u64>,
}

fn minutes(body: &Bytes) -> Result<u64, ProxyError> {
    let b: LinkBody = if body.iter().all(u8::is_ascii_whitespace) {
        LinkBody::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ProxyError::bad_request(format!("invalid JSON body: {e}")))?
    };
    match b.expires_in_minutes.unwrap_or(DEFAULT_LINK_MINUTES) {
        m @ 1..=MAX_LINK_MINUTES => Ok(m),
        _ => Err(ProxyError::bad_request(format!(
            "expiresInMinutes must be 1 to {MAX_LINK_MINUTES}"
        ))),
    }
}

/// Mints a connect link (`integration` given) or a settings link.
pub async fn mint(
    state: &AppState,
    tenant: &str,
    integration: Option<&str>,
    body: &Bytes,
) -> Result<Response<Body>, ProxyError> {
    let tenant =
        ids::validate(tenant).map_err(|e| ProxyError::bad_request(format!("tenant: {e}")))?;
    if let Some(i) = integration {
        ids::validate(i).map_err(|e| ProxyError::bad_request(format!("integration: {e}")))?;
        if !state.connect.can_connect(i) {
            return Err(ProxyError::bad_request(format!(
                "integration `{i}` has no authorize_url (and token_url, client_id) configured"
            )));
        }
    }
    let minutes = minutes(body)?;
    let (url, expires) = state
        .connect
        .mint(state, tenant, integration, minutes)
        .await?;
    Ok(json_response(
        StatusCode::CREATED,
        &json!({
            "success": true,
            "url": url,
            "expiresAt": expires.format(&Rfc3339).unwrap_or_default(),
        }),
    ))
}
