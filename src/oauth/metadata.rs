//! Discovery documents: RFC 8414 authorization server metadata and RFC 9728
//! protected resource metadata, plus the JWKS response shape.
//!
//! `scopes_supported` is deliberately absent from the authorization server
//! document: the MCP SDK requests every scope it lists when the resource
//! document lists none, and a client lacking one of them would get
//! `invalid_scope`. Each route's resource document lists that route's
//! required scopes, which is safe: a client without them cannot use the
//! route anyway.

use http::{HeaderValue, Response, StatusCode, header};
use serde_json::{Value, json};

use super::Authority;
use super::assertion;
use crate::http::{Body, json_response};

const AS_WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";
const PR_WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";

/// A public, cacheable JSON document (readable cross-origin, like any
/// discovery document).
pub(crate) fn public_json(doc: &Value) -> Response<Body> {
    let mut resp = json_response(StatusCode::OK, doc);
    let h = resp.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=60"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    resp
}

/// The RFC 8414 path for `issuer`: the well-known prefix, then the issuer's
/// own path if it has one (§3.1).
pub(crate) fn is_as_metadata_path(path: &str, issuer: &str) -> bool {
    let issuer_path = issuer
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| &rest[i..]))
        .unwrap_or("");
    path.strip_prefix(AS_WELL_KNOWN) == Some(issuer_path)
        || (path == AS_WELL_KNOWN && issuer_path.is_empty())
}

pub(crate) fn authorization_server(auth: &Authority) -> Value {
    let iss = auth.issuer();
    json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/oauth/authorize"),
        "token_endpoint": format!("{iss}/oauth/token"),
        "jwks_uri": format!("{iss}/.well-known/jwks.json"),
        "introspection_endpoint": format!("{iss}/oauth/introspect"),
        "revocation_endpoint": format!("{iss}/oauth/revoke"),
        "grant_types_supported": ["client_credentials"],
        "response_types_supported": [],
        "token_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "introspection_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "revocation_endpoint_auth_methods_supported":
            ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": assertion::ALGORITHMS,
    })
}

/// The RFC 9728 document for `path` (`/.well-known/oauth-protected-resource`
/// plus a route prefix, or nothing for the root), `None` when no route has
/// that prefix. The root describes the `/` route if any, else the issuer.
pub(crate) fn protected_resource_path(auth: &Authority, path: &str) -> Option<Value> {
    let suffix = path.strip_prefix(PR_WELL_KNOWN)?;
    let prefix = if suffix.is_empty() { "/" } else { suffix };
    if !prefix.starts_with('/') {
        return None;
    }
    let resources = auth.resources.load();
    let route = resources.iter().find(|r| r.prefix == prefix);
    let mut doc = json!({
        "authorization_servers": [auth.issuer()],
        "bearer_methods_supported": ["header"],
    });
    match route {
        Some(r) => {
            doc["resource"] = json!(r.url);
            if !r.scopes.is_empty() {
                doc["scopes_supported"] = json!(r.scopes);
            }
        }
        None if prefix == "/" => doc["resource"] = json!(auth.issuer()),
        None => return None,
    }
    Some(doc)
}
