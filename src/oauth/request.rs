//! Parsing of `/oauth/token`, `/oauth/revoke` and `/oauth/introspect`
//! requests: the body (form or JSON) and the one client authentication method.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use bytes::Bytes;
use http::{HeaderMap, header};
use secrecy::SecretString;
use serde_json::Value;

use super::assertion;
use crate::error::{OAuthError, OAuthErrorCode, ProxyError};
use crate::http::BoxError;

/// Standard base64 that tolerates missing padding (some clients strip it).
const BASIC_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// How the client authenticated.
#[derive(Debug)]
pub(crate) enum ClientAuth {
    None,
    /// An `Authorization` header that is not valid Basic credentials.
    Malformed,
    Basic {
        id: String,
        secret: SecretString,
    },
    Post {
        id: String,
        secret: SecretString,
    },
    /// `private_key_jwt`; `id` is the optional `client_id` parameter.
    Assertion {
        id: Option<String>,
        assertion: SecretString,
    },
}

/// A parsed token request.
#[derive(Debug)]
pub(crate) struct TokenRequest {
    pub(crate) grant_type: Option<String>,
    pub(crate) scope: Option<String>,
    pub(crate) resource: Option<String>,
    /// The `token` parameter of `/oauth/revoke` and `/oauth/introspect`.
    pub(crate) token: Option<SecretString>,
    pub(crate) auth: ClientAuth,
}

pub(crate) fn invalid_request(msg: &str) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidRequest, msg)
}

/// Buffers an `/oauth/*` body: at most 64 KiB, arriving within `deadline`
/// (408 `request_timeout` after, and the connection is closed).
pub(crate) async fn read_body<B>(
    body: B,
    deadline: std::time::Duration,
) -> Result<Bytes, OAuthError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    crate::http::read_body(body, super::MAX_OAUTH_BODY, deadline)
        .await
        .map_err(|e| match e {
            ProxyError::RequestTimeout => OAuthError::new(
                OAuthErrorCode::RequestTimeout,
                "request body not received in time",
            ),
            _ => invalid_request("request body unreadable or over 64 KiB"),
        })
}

/// Parses the body (form or JSON) and the client authentication.
pub(crate) fn parse(headers: &HeaderMap, body: &[u8]) -> Result<TokenRequest, OAuthError> {
    let mut params = params(headers, body)?;
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .nth(1)
        .is_some()
    {
        return Err(invalid_request("more than one Authorization header"));
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .map(|v| parse_basic(v.as_bytes()));
    let body_id = params.remove("client_id");
    let body_secret = params.remove("client_secret").map(SecretString::from);
    let assertion = params.remove("client_assertion").map(SecretString::from);
    let assertion_type = params.remove("client_assertion_type");
    if assertion.is_some() != assertion_type.is_some()
        || assertion_type.is_some_and(|t| t != assertion::ASSERTION_TYPE)
    {
        return Err(invalid_request(
            "client_assertion needs client_assertion_type jwt-bearer",
        ));
    }
    let methods = [basic.is_some(), body_secret.is_some(), assertion.is_some()];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(invalid_request(
            "use exactly one client authentication method",
        ));
    }
    let auth = match (basic, body_secret, assertion) {
        (_, _, Some(assertion)) => ClientAuth::Assertion {
            id: body_id,
            assertion,
        },
        (Some(Some((id, secret))), _, None) => {
            if body_id.as_ref().is_some_and(|b| *b != id) {
                return Err(invalid_request(
                    "client_id differs from the Basic credentials",
                ));
            }
            ClientAuth::Basic { id, secret }
        }
        (Some(None), _, None) => ClientAuth::Malformed,
        (None, Some(secret), None) => {
            let id = body_id.ok_or_else(|| invalid_request("client_secret without client_id"))?;
            ClientAuth::Post { id, secret }
        }
        (None, None, None) => ClientAuth::None,
    };
    Ok(TokenRequest {
        grant_type: params.remove("grant_type"),
        scope: params.remove("scope"),
        resource: params.remove("resource"),
        token: params.remove("token").map(SecretString::from),
        auth,
    })
}

/// Body parameters. Repeated parameters are refused (RFC 6749 §3.2); empty
/// ones count as absent (§3.1).
fn params(headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let media = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        });
    let pairs: Vec<(String, String)> = match media.as_deref() {
        Some("application/x-www-form-urlencoded") => serde_urlencoded::from_bytes(body)
            .map_err(|_| invalid_request("malformed form body"))?,
        Some("application/json") => {
            let map: serde_json::Map<String, Value> = serde_json::from_slice(body)
                .map_err(|_| invalid_request("body must be a JSON object"))?;
            let mut pairs = Vec::with_capacity(map.len());
            for (k, v) in map {
                match v {
                    Value::String(s) => pairs.push((k, s)),
                    Value::Null => {}
                    _ => return Err(invalid_request("parameters must be strings")),
                }
            }
            pairs
        }
        None if body.is_empty() => Vec::new(),
        _ => {
            return Err(invalid_request(
                "content type must be application/x-www-form-urlencoded or application/json",
            ));
        }
    };
    let mut out = HashMap::with_capacity(pairs.len());
    for (k, v) in pairs {
        if v.is_empty() {
            continue;
        }
        if out.contains_key(&k) {
            return Err(invalid_request("a parameter is repeated"));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))` (RFC 6749 §2.3.1).
/// `None` for anything else, including other schemes.
fn parse_basic(value: &[u8]) -> Option<(String, SecretString)> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, b64) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = zeroize::Zeroizing::new(BASIC_B64.decode(b64.trim()).ok()?);
    let text = std::str::from_utf8(&decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let form_decode = |s: &str| -> Option<String> {
        let s = s.replace('+', " ");
        percent_encoding::percent_decode_str(&s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    let id = form_decode(id)?;
    let secret = SecretString::from(form_decode(secret)?);
    (!id.is_empty()).then_some((id, secret))
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
