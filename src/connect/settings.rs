//! The tenant settings page: a settings link opens a session (a signed cookie,
//! SameSite=Strict, 8 hours, naming one tenant), `/settings` lists every
//! integration with its status, and POST forms (CSRF token bound to the
//! session) connect, refresh or disconnect. A session only ever reads and
//! changes its own tenant's credentials.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use time::OffsetDateTime;
use time::macros::format_description;

use super::link::{Claims, Kind, Signer, random_token};
use super::{PageError, cookie, flow, key, link_error, now, pages, query_param, set_cookie};
use crate::credentials::{self, Status, usable_at};
use crate::http::Body;
use crate::refresh::Trigger;
use crate::state::AppState;

const SESSION_COOKIE: &str = "credgate_session";
/// A session lasts at most this long (seconds).
const SESSION_SECS: i64 = 8 * 3600;

fn no_session() -> PageError {
    PageError::new(
        StatusCode::UNAUTHORIZED,
        "Sign-in needed",
        "This browser has no settings session, or it has ended. Open your settings link again.",
    )
}

/// `GET /settings/open?link=…`: opens a session for the link's tenant.
pub async fn open(state: &AppState, query: Option<&str>) -> Result<Response<Body>, PageError> {
    let key = key(state).await?;
    let value = query_param(query, "link").ok_or(link_error(super::link::LinkError::Malformed))?;
    let link = Signer::verify(key, &value, Kind::Settings, None, now()).map_err(link_error)?;
    let session = Signer::sign(
        key,
        &Claims {
            k: Kind::Session,
            t: link.t,
            i: None,
            e: now() + SESSION_SECS,
            s: Some(random_token(16)),
        },
    );
    let mut resp = pages::html(StatusCode::OK, pages::opening_settings());
    resp.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(
            SESSION_COOKIE,
            &session,
            "/settings",
            SESSION_SECS,
            "Strict",
            state.connect.secure_cookies,
        ),
    );
    Ok(resp)
}

/// The session's tenant and id, or the 401 page.
async fn session(state: &AppState, headers: &HeaderMap) -> Result<(String, String), PageError> {
    let key = key(state).await?;
    let value = cookie(headers, SESSION_COOKIE).ok_or_else(no_session)?;
    let claims =
        Signer::verify(key, value, Kind::Session, None, now()).map_err(|_| no_session())?;
    let sid = claims.s.ok_or_else(no_session)?;
    Ok((claims.t, sid))
}

fn when(t: Option<OffsetDateTime>) -> String {
    match t {
        Some(t) => t
            .format(format_description!(
                "[year]-[month]-[day] [hour]:[minute] UTC"
            ))
            .unwrap_or_default(),
        None => "—".into(),
    }
}

/// `GET /settings`.
pub async fn page(
    state: &AppState,
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Response<Body>, PageError> {
    let (tenant, sid) = session(state, headers).await?;
    let key = key(state).await?;
    let store = state.store.as_ref();
    let now = OffsetDateTime::now_utc();
    let mut rows = Vec::new();
    let apps = state.connect.apps();
    for integration in &apps.integrations {
        let summary = credentials::load_summary(store, &tenant, integration)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "settings: store read failed");
                PageError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Try again shortly",
                    "credgate cannot reach its credential store right now.",
                )
            })?;
        let (status, expires, updated, connected) = match &summary {
            None => ("not connected", "—".into(), "—".into(), false),
            Some(s) => {
                let status = match s.status {
                    Status::ReauthorizationRequired => "reauthorization required",
                    Status::Active if !usable_at(s.expires_at, now) && !s.has_refresh_token => {
                        "expired"
                    }
                    Status::Active => "connected",
                };
                let updated = if s.refresh_count > 0 {
                    time::OffsetDateTime::parse(
                        &s.updated_at,
                        &time::format_description::well_known::Rfc3339,
                    )
                    .map(|t| when(Some(t)))
                    .unwrap_or_else(|_| s.updated_at.clone())
                } else {
                    "not yet".into()
                };
                (status, when(s.expires_at), updated, true)
            }
        };
        rows.push(pages::Row {
            integration: integration.clone(),
            status,
            expires,
            updated,
            can_connect: state.connect.can_connect(integration),
            connected,
            refreshable: summary.as_ref().is_some_and(|s| s.has_refresh_token),
            elsewhere: state
                .connect
                .app(integration)
                .and_then(|a| a.cfg.connect_url.clone()),
        });
    }
    let notice = match query_param(query, "done").as_deref() {
        Some("refreshed") => Some(("Credential refreshed.", true)),
        Some("disconnected") => Some((
            "Disconnected. The provider was asked to revoke access.",
            true,
        )),
        Some("refresh-failed") => Some((
            "The refresh failed. Reconnect the integration if it keeps failing.",
            false,
        )),
        _ => None,
    };
    let csrf = Signer::csrf(key, "settings", &sid);
    Ok(pages::html(
        StatusCode::OK,
        pages::settings(&tenant, &rows, &csrf, notice),
    ))
}

fn back_to_settings(done: &str) -> Response<Body> {
    let mut resp = Response::new(crate::http::empty());
    *resp.status_mut() = StatusCode::SEE_OTHER;
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::try_from(format!("/settings?done={done}")).expect("fixed words"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `POST /settings/{integration}/{connect|refresh|disconnect}`.
pub async fn action(
    state: &AppState,
    integration: &str,
    action: &str,
    form: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response<Body>, PageError> {
    let (tenant, sid) = session(state, headers).await?;
    let key = key(state).await?;
    if !form
        .get("csrf")
        .is_some_and(|t| Signer::csrf_ok(key, "settings", &sid, t))
    {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Please try again",
            "This form did not come from your settings page. Reload it and try again.",
        ));
    }
    if !state
        .connect
        .apps()
        .integrations
        .iter()
        .any(|i| i == integration)
    {
        return Err(PageError::new(
            StatusCode::NOT_FOUND,
            "Unknown integration",
            "There is no such integration.",
        ));
    }
    match action {
        "connect" => flow::start(state, &state.connect, &tenant, integration, headers, true).await,
        "refresh" => {
            let result = state
                .credentials
                .refresh(
                    &tenant.as_str().into(),
                    &integration.into(),
                    None,
                    Trigger::Admin,
                )
                .await;
            Ok(back_to_settings(if result.is_ok() {
                "refreshed"
            } else {
                "refresh-failed"
            }))
        }
        "disconnect" => {
            crate::admin::credentials::remove(state, &tenant, integration, "settings")
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "settings: disconnect failed");
                    PageError::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "Try again shortly",
                        "credgate could not remove the credential.",
                    )
                })?;
            Ok(back_to_settings("disconnected"))
        }
        _ => Err(PageError::new(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no page here.",
        )),
    }
}
