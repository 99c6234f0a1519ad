//! Revocation (RFC 7009) and introspection (RFC 7662).
//!
//! Revoked token ids live at `_credgate/revocations/{jti}` (`{exp, clientId,
//! revokedAt}`) and in memory, where every request checks them. A record
//! outlives its token by the validation leeway, then the sync loop removes it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, header};
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::jwt::{self, LEEWAY_SECS, Verified};
use super::request::{self, TokenRequest};
use super::sync::Changes;
use super::token::authenticate_client;
use super::{Authority, Tenants};
use crate::audit::{AuditEvent, AuditKind};
use crate::client_addr::Resolved;
use crate::error::{AuthFailure, OAuthError, OAuthErrorCode};
use crate::http::{Body, BoxError, json_no_store};
use crate::store::{Store, StoreError};

pub(crate) const REVOCATIONS_PREFIX: &str = "_credgate/revocations";

/// Token ids credgate mints: 32 lowercase hex digits.
fn is_jti(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Revoked token ids and their expiry (unix seconds).
#[derive(Debug, Default)]
pub(crate) struct Revocations {
    by_jti: RwLock<HashMap<Arc<str>, u64>>,
}

impl Revocations {
    pub(crate) fn is_revoked(&self, jti: &str) -> bool {
        self.by_jti
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(jti)
    }

    /// Records a revocation in the store, then in memory.
    pub(crate) async fn revoke(
        &self,
        store: &dyn Store,
        changes: &Changes,
        v: &Verified,
    ) -> Result<(), StoreError> {
        let mut data = Map::new();
        data.insert("exp".into(), json!(v.exp));
        data.insert("clientId".into(), json!(&*v.client_id));
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        data.insert("revokedAt".into(), json!(now));
        let path = format!("{REVOCATIONS_PREFIX}/{}", v.jti);
        // Revoking twice is harmless, so the last writer may win.
        crate::store::overwrite(store, &path, data).await?;
        self.by_jti
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(v.jti.clone(), v.exp);
        changes.announce(store).await;
        Ok(())
    }

    /// Loads revocations made anywhere; drops (and deletes) expired ones.
    pub(crate) async fn reload(&self, store: &dyn Store, now: u64) -> Result<(), StoreError> {
        let known = self
            .by_jti
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut next = HashMap::new();
        for name in store.list(REVOCATIONS_PREFIX).await? {
            if !is_jti(&name) {
                continue;
            }
            let exp = match known.get(name.as_str()) {
                Some(exp) => *exp,
                None => {
                    let path = format!("{REVOCATIONS_PREFIX}/{name}");
                    match store.read(&path).await? {
                        Some(rec) => rec
                            .data
                            .get("exp")
                            .and_then(Value::as_u64)
                            .unwrap_or(u64::MAX),
                        None => continue,
                    }
                }
            };
            if exp.saturating_add(LEEWAY_SECS) < now {
                let _ = store.delete(&format!("{REVOCATIONS_PREFIX}/{name}")).await;
                continue;
            }
            next.insert(Arc::from(name), exp);
        }
        *self.by_jti.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }
}

/// Reads the body of a `/oauth/revoke` or `/oauth/introspect` request.
async fn read<B>(auth: &Authority, headers: &HeaderMap, body: B) -> Result<TokenRequest, OAuthError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let body = request::read_body(body, auth.body_timeout).await?;
    request::parse(headers, &body)
}

/// A client whose `allowedIps` do not admit the caller.
fn address_refused() -> Response<Body> {
    OAuthError::new(OAuthErrorCode::AccessDenied, "source address not allowed").into_response()
}

/// `POST /oauth/revoke`: a client revokes one of its own tokens. Always 200
/// once the client is authenticated, whatever the token (RFC 7009 §2.2).
pub(crate) async fn revoke<B>(
    auth: &Authority,
    req: Request<B>,
    caller: Resolved,
    request_id: &str,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = req.into_parts();
    let request = match read(auth, &parts.headers, body).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let client = match authenticate_client(auth, &request.auth, caller.throttle_key()) {
        Ok(c) => c,
        Err(denied) => return denied.error.into_response(),
    };
    if !client.allows_ip(caller.addr) {
        return address_refused();
    }
    let Some(token) = request.token else {
        return OAuthError::new(OAuthErrorCode::InvalidRequest, "token is required")
            .into_response();
    };
    let ok = || json_no_store(StatusCode::OK, &json!({}));
    let Ok(v) = jwt::verify(token.expose_secret(), &auth.keys(), &auth.issuer) else {
        return ok();
    };
    // Only the client's own, still-valid tokens are worth a record.
    if v.client_id != client.client_id || jwt::check_time(&v, jwt::unix_now()).is_err() {
        return ok();
    }
    if let Err(e) = auth
        .revocations
        .revoke(&*auth.store, &auth.changes, &v)
        .await
    {
        tracing::warn!(error = %e, "cannot record a revocation");
        return OAuthError::new(
            OAuthErrorCode::TemporarilyUnavailable,
            "revocation could not be recorded; retry",
        )
        .into_response();
    }
    auth.audit.record(
        AuditKind::TokenRevoked,
        AuditEvent {
            client_id: Some(&client.client_id),
            actor: Some(&client.client_id),
            source_ip: Some(caller.addr.to_string()),
            request_id: Some(request_id),
            jti: Some(&v.jti),
            ..Default::default()
        },
    );
    ok()
}

/// `POST /oauth/introspect`: for a client holding scope `introspect`
/// (Basic or post credentials) or an admin bearer token.
pub(crate) async fn introspect<B>(
    auth: &Authority,
    req: Request<B>,
    caller: Resolved,
) -> Response<Body>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "));
    let mut caller_ok = false;
    if bearer {
        // Checked from the headers, before any body is read.
        let key = caller.throttle_key();
        if let Some(wait) = auth.admin_auth_blocked(key) {
            return super::token::slow_down(auth, wait).into_response();
        }
        let now = jwt::unix_now();
        let authn = auth.authenticate_at(&parts.headers, None, None, now);
        // Only guesses count against the address, not expired real tokens.
        let guess = matches!(
            authn,
            Err(AuthFailure::Malformed | AuthFailure::BadSignature)
        );
        let admin = authn.ok().filter(|p| p.has_scope("admin"));
        if let Some(p) = &admin
            && !p.client.allows_ip(caller.addr)
        {
            return address_refused();
        }
        caller_ok = admin.is_some() || auth.is_bootstrap_admin(&parts.headers);
        if !caller_ok {
            if let Some(wait) = guess.then(|| auth.admin_auth_failed(key)).flatten() {
                return super::token::slow_down(auth, wait).into_response();
            }
            return OAuthError::new(OAuthErrorCode::InvalidClient, "admin token required")
                .into_response();
        }
        parts.headers.remove(header::AUTHORIZATION);
    }
    let request = match read(auth, &parts.headers, body).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    if !caller_ok {
        match authenticate_client(auth, &request.auth, caller.throttle_key()) {
            Ok(c) if !c.allows_ip(caller.addr) => return address_refused(),
            Ok(c) if c.active && c.scopes.iter().any(|s| &**s == "introspect") => {}
            Ok(_) => {
                return OAuthError::new(OAuthErrorCode::AccessDenied, "scope introspect required")
                    .into_response();
            }
            Err(denied) => return denied.error.into_response(),
        }
    }
    let Some(token) = request.token else {
        return OAuthError::new(OAuthErrorCode::InvalidRequest, "token is required")
            .into_response();
    };
    let answer = match auth.introspection(token.expose_secret(), jwt::unix_now()) {
        Some(v) => v,
        None => json!({ "active": false }),
    };
    json_no_store(StatusCode::OK, &answer)
}

impl Authority {
    /// The RFC 7662 answer for a valid token, `None` otherwise. Audience is
    /// not checked: the question is whether the token is valid at all.
    pub(crate) fn introspection(&self, token: &str, now: u64) -> Option<Value> {
        let v = self.verify_token(token).ok()?;
        jwt::check_time(&v, now).ok()?;
        self.usable_client(&v).ok()?;
        let scopes: Vec<&str> = v.scopes.iter().map(|s| &**s).collect();
        let mut doc = json!({
            "active": true,
            "client_id": &*v.client_id,
            "scope": scopes.join(" "),
            "scopes": scopes,
            "exp": v.exp,
            "iat": v.iat,
            "nbf": v.nbf,
            "sub": &*v.client_id,
            "aud": &*v.aud,
            "iss": &*self.issuer,
            "jti": &*v.jti,
            "token_type": "Bearer",
        });
        match &v.tenants {
            Tenants::One(t) => doc["tenant"] = json!(&**t),
            Tenants::Many(ts) => {
                doc["tenants"] = json!(ts.iter().map(|t| &**t).collect::<Vec<_>>())
            }
        }
        Some(doc)
    }
}
