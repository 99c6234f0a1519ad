//! Where a connect link lands: `GET /connect/{integration}?link=…` shows the
//! page with the Connect button (and starts nothing: link previewers fetch it
//! too); the button's POST checks the link and the CSRF token again and starts
//! the flow.

use std::collections::BTreeMap;

use http::{HeaderMap, Response, StatusCode, header};

use super::link::{self, Kind, Signer};
use super::{
    CSRF_COOKIE, PageError, cookie, flow, key, link_error, now, pages, query_param, set_cookie,
};
use crate::http::Body;
use crate::state::AppState;

/// `GET /connect/{integration}?link=…`: the page with the Connect button. Starts nothing.
pub async fn page(
    state: &AppState,
    integration: &str,
    query: Option<&str>,
    headers: &HeaderMap,
) -> Result<Response<Body>, PageError> {
    let key = key(state).await?;
    let value = query_param(query, "link").ok_or(link_error(link::LinkError::Malformed))?;
    let claims =
        Signer::verify(key, &value, Kind::Connect, Some(integration), now()).map_err(link_error)?;
    if !state.connect.can_connect(integration) {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            "This link does not work",
            "This integration cannot be connected here.",
        ));
    }
    let (secret, fresh) = match cookie(headers, CSRF_COOKIE).filter(|v| v.len() == 43) {
        Some(v) => (v.to_owned(), false),
        None => (link::random_token(32), true),
    };
    let csrf = Signer::csrf(key, "connect", &secret);
    let mut resp = pages::html(
        StatusCode::OK,
        pages::connect(integration, &claims.t, &value, &csrf),
    );
    if fresh {
        resp.headers_mut().append(
            header::SET_COOKIE,
            set_cookie(
                CSRF_COOKIE,
                &secret,
                "/connect",
                3600,
                "Strict",
                state.connect.secure_cookies,
            ),
        );
    }
    Ok(resp)
}

/// `POST /connect/{integration}`: the Connect button. Checks the link and the
/// CSRF token again, then starts the flow.
pub async fn connect(
    state: &AppState,
    integration: &str,
    form: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Result<Response<Body>, PageError> {
    let key = key(state).await?;
    let value = form
        .get("link")
        .ok_or(link_error(link::LinkError::Malformed))?;
    let claims =
        Signer::verify(key, value, Kind::Connect, Some(integration), now()).map_err(link_error)?;
    let csrf_ok = match (cookie(headers, CSRF_COOKIE), form.get("csrf")) {
        (Some(secret), Some(token)) => Signer::csrf_ok(key, "connect", secret, token),
        _ => false,
    };
    if !csrf_ok {
        return Err(PageError::new(
            StatusCode::FORBIDDEN,
            "Please start again",
            "This form did not come from credgate's connect page in this browser. Open the link again.",
        ));
    }
    flow::start(
        state,
        &state.connect,
        &claims.t,
        integration,
        headers,
        false,
    )
    .await
}
