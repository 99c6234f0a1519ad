//! The rewrite of a caller's request head into the upstream's, and header
//! hygiene both ways: hop-by-hop headers, credgate's own inputs and cookies,
//! the forwarding headers.

use bytes::Bytes;
use http::Uri;
use http::Version;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;

use crate::error::ProxyError;
use crate::routes::Route;

/// Request headers the caller may not pass on (RFC 9110 §7.6.1 hop-by-hop,
/// plus credgate's own inputs).
const STRIP_REQUEST: &[HeaderName] = &[
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    header::AUTHORIZATION,
    header::HOST,
];

/// Response headers that stop here. `WWW-Authenticate` describes the
/// upstream's own auth, which the caller neither holds nor may learn.
pub(super) const STRIP_RESPONSE: &[HeaderName] = &[
    header::WWW_AUTHENTICATE,
    header::CONNECTION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub static X_TENANT_ID: HeaderName = HeaderName::from_static("x-tenant-id");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// credgate's own cookies (the connect and settings pages) are named with
/// this prefix, bare or behind `__Host-`/`__Secure-`; they never go upstream.
pub const OWN_COOKIE_PREFIX: &str = "credgate";
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub(super) fn strip_hop_by_hop(h: &mut HeaderMap, fixed: &[HeaderName]) {
    // Usually there is none: one pass of cheap name comparisons instead of a
    // hashed removal per name.
    let hop = |k: &HeaderName| fixed.contains(k) || k == KEEP_ALIVE || k == PROXY_CONNECTION;
    if !h.keys().any(hop) {
        return;
    }
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named.iter().chain(fixed) {
        h.remove(n);
    }
    h.remove(&KEEP_ALIVE);
    h.remove(&PROXY_CONNECTION);
}

/// Removes credgate's own cookies from `Cookie`; the caller's other cookies
/// pass (an MCP server may keep its sessions in them). See
/// docs/RELIABILITY.md.
fn strip_own_cookies(h: &mut HeaderMap) {
    fn own(pair: &str) -> bool {
        let name = pair.split('=').next().unwrap_or("").trim();
        let name = name
            .strip_prefix("__Host-")
            .or_else(|| name.strip_prefix("__Secure-"))
            .unwrap_or(name);
        name.len() >= OWN_COOKIE_PREFIX.len()
            && name[..OWN_COOKIE_PREFIX.len()].eq_ignore_ascii_case(OWN_COOKIE_PREFIX)
    }
    if !h.contains_key(header::COOKIE) {
        return;
    }
    let kept: Vec<String> = h
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|pair| !pair.is_empty() && !own(pair))
        .map(str::to_owned)
        .collect();
    h.remove(header::COOKIE);
    if let Ok(v) = HeaderValue::from_str(&kept.join("; "))
        && !kept.is_empty()
    {
        h.insert(header::COOKIE, v);
    }
}

/// What the forwarded request needs besides the caller's request.
pub struct Forward<'a> {
    pub route: &'a Route,
    /// The caller's address, as `X-Forwarded-For` writes it.
    pub peer_ip: &'a HeaderValue,
    /// The TCP peer is one of `proxy.trusted_proxies`: its `Forwarded` and
    /// `X-Real-IP` pass; anyone else's are dropped (the upstream might
    /// believe them).
    pub peer_trusted: bool,
    /// `https` when the caller reached credgate over TLS.
    pub proto: &'static str,
    pub request_id: &'a HeaderValue,
    /// Header name and value carrying the upstream credential.
    pub credential: (&'a HeaderName, HeaderValue),
}

/// Rewrites the caller's request head for the upstream (docs/http-api.md, "Proxied requests" step 8).
pub fn upstream_parts(
    mut parts: http::request::Parts,
    f: &Forward<'_>,
) -> Result<http::request::Parts, ProxyError> {
    let original_host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let path_and_query = f
        .route
        .upstream_path_and_query(parts.uri.path(), parts.uri.query());
    // Origin form: the connection already goes to the route's upstream.
    parts.uri = PathAndQuery::try_from(path_and_query)
        .map(Uri::from)
        .map_err(|_| ProxyError::bad_request("request path cannot be forwarded"))?;
    // h2 callers reach h1 upstreams; the client picks the wire version.
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    strip_hop_by_hop(h, STRIP_REQUEST);
    h.remove(&X_TENANT_ID);
    // A credential header of the caller's own (e.g. X-API-Key) never passes.
    h.remove(f.credential.0);
    if !f.peer_trusted {
        h.remove(&FORWARDED);
        h.remove(&X_REAL_IP);
    }
    strip_own_cookies(h);

    let xff = match h.get(&X_FORWARDED_FOR) {
        None => Some(f.peer_ip.clone()),
        Some(prior) => {
            let mut v = Vec::with_capacity(prior.len() + 2 + f.peer_ip.len());
            v.extend_from_slice(prior.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(f.peer_ip.as_bytes());
            HeaderValue::from_maybe_shared(Bytes::from(v)).ok()
        }
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(f.proto));
    if let Some(host) = original_host {
        h.insert(X_FORWARDED_HOST.clone(), host);
    }
    h.insert(X_REQUEST_ID.clone(), f.request_id.clone());
    h.insert(f.credential.0.clone(), f.credential.1.clone());
    h.insert(header::HOST, f.route.upstream.host.clone());
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::tests::routes as table;
    use http::Request;

    #[test]
    fn request_hygiene() {
        let routes = table(
            r#"
            [[routes]]
            integration = "github"
            path_prefix = "/github"
            upstream = "http://127.0.0.1:9000"
            strip_prefix = true
            "#,
        );
        let route = routes.find(None, "/github/mcp").unwrap();
        let req = Request::builder()
            .uri("/github/mcp?x=1")
            .header("host", "proxy.local")
            .header("authorization", "Bearer caller-token")
            .header("x-tenant-id", "t1")
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("proxy-authorization", "Basic abc")
            .header("x-forwarded-for", "10.0.0.1")
            .header("mcp-session-id", "s1")
            .header("mcp-protocol-version", "2025-11-25")
            .header("forwarded", "for=203.0.113.9")
            .header("x-real-ip", "203.0.113.9")
            .header("cookie", "session=abc; credgate_connect=x")
            .header("cookie", "__Host-credgate-csrf=y; theme=dark")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let trusted_parts = parts.clone();
        let rid = HeaderValue::from_static("rid-1");
        let f = Forward {
            route,
            peer_ip: &HeaderValue::from_static("127.0.0.1"),
            peer_trusted: false,
            proto: "http",
            request_id: &rid,
            credential: (
                &header::AUTHORIZATION,
                HeaderValue::from_static("Bearer up"),
            ),
        };
        let p = upstream_parts(parts, &f).unwrap();
        assert_eq!(p.uri, "/mcp?x=1");
        assert_eq!(p.headers["host"], "127.0.0.1:9000");
        let h = &p.headers;
        assert_eq!(h["authorization"], "Bearer up");
        assert_eq!(h.get_all("authorization").iter().count(), 1);
        for gone in [
            "x-tenant-id",
            "connection",
            "x-secret-hop",
            "keep-alive",
            "te",
            "proxy-authorization",
            "forwarded",
            "x-real-ip",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
        assert_eq!(h["cookie"], "session=abc; theme=dark");
        // From a trusted proxy, its forwarding headers pass.
        let f = Forward {
            peer_trusted: true,
            ..f
        };
        let t = upstream_parts(trusted_parts, &f).unwrap();
        assert_eq!(t.headers["forwarded"], "for=203.0.113.9");
        assert_eq!(t.headers["x-real-ip"], "203.0.113.9");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "proxy.local");
        assert_eq!(h["x-request-id"], "rid-1");
        assert_eq!(h["mcp-session-id"], "s1");
        assert_eq!(h["mcp-protocol-version"], "2025-11-25");
    }

    #[test]
    fn custom_header_injection_replaces_callers_copy() {
        let routes = table(
            r#"
            [[routes]]
            integration = "k"
            path_prefix = "/k"
            upstream = "http://127.0.0.1:9000"
            inject = { header = "X-API-Key" }
            "#,
        );
        let route = routes.find(None, "/k").unwrap();
        let req = Request::builder()
            .uri("/k")
            .header("x-api-key", "forged")
            .header("authorization", "Bearer caller")
            .body(())
            .unwrap();
        // Resolved from `inject = { header = … }` when the table was built.
        assert_eq!(route.inject_header, "x-api-key");
        let rid = HeaderValue::from_static("r");
        let f = Forward {
            route,
            peer_ip: &HeaderValue::from_static("127.0.0.1"),
            peer_trusted: false,
            proto: "http",
            request_id: &rid,
            credential: (&route.inject_header, HeaderValue::from_static("real")),
        };
        let p = upstream_parts(req.into_parts().0, &f).unwrap();
        assert_eq!(
            p.headers.get_all("x-api-key").iter().collect::<Vec<_>>(),
            ["real"]
        );
        assert!(!p.headers.contains_key("authorization"));
    }
}
