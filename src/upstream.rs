//! Talking to upstreams: the pooled client, the rewrite of a caller's request
//! into the upstream's (header hygiene), and the response's hop-by-hop
//! clean-up. Bodies stream both ways; nothing here buffers.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, Uri, Version};
use http_body_util::BodyExt;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::http::{Body, IdleTimeout};
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
const STRIP_RESPONSE: &[HeaderName] = &[
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
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The pooled HTTP(S) client for all upstreams.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpsConnector<HttpConnector>, Body>,
    response_timeout: Duration,
    idle_timeout: Duration,
}

impl Client {
    pub fn new(proxy: &ProxyConfig, tls: rustls::ClientConfig) -> Self {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(
            proxy.upstream_connect_timeout_seconds,
        )));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(connector);
        Client {
            inner,
            response_timeout: Duration::from_secs(proxy.upstream_timeout_seconds),
            idle_timeout: Duration::from_secs(proxy.stream_idle_timeout_seconds),
        }
    }

    /// How long a streamed body may stay silent.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Sends the request; errors are already classified for the caller.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Body>, ProxyError> {
        let resp = match tokio::time::timeout(self.response_timeout, self.inner.request(req)).await
        {
            Err(_) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(e)) => return Err(classify(&e)),
            Ok(Ok(r)) => r,
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, STRIP_RESPONSE);
        Ok(Response::from_parts(
            parts,
            IdleTimeout::new(body, self.idle_timeout).boxed_unsync(),
        ))
    }
}

fn classify(e: &hyper_util::client::legacy::Error) -> ProxyError {
    // A body that broke the size limit while streaming surfaces here.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(limit) = s.downcast_ref::<crate::proxy::BodyTooLarge>() {
            return ProxyError::PayloadTooLarge { limit: limit.0 };
        }
        source = s.source();
    }
    tracing::warn!(error = %e, connect = e.is_connect(), "upstream request failed");
    ProxyError::UpstreamUnavailable
}

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap, fixed: &[HeaderName]) {
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

/// What the forwarded request needs besides the caller's request.
pub struct Forward<'a> {
    pub route: &'a Route,
    pub peer: SocketAddr,
    /// `https` when the caller reached credgate over TLS.
    pub proto: &'static str,
    pub request_id: &'a HeaderValue,
    /// Header name and value carrying the upstream credential.
    pub credential: (&'a HeaderName, HeaderValue),
}

/// Rewrites the caller's request head for the upstream (SPEC §3 step 5).
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
    parts.uri = Uri::builder()
        .scheme(f.route.upstream_scheme.clone())
        .authority(f.route.upstream_authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| ProxyError::bad_request("request path cannot be forwarded"))?;
    // h2 callers reach h1 upstreams; the client picks the wire version.
    parts.version = Version::HTTP_11;

    let h = &mut parts.headers;
    strip_hop_by_hop(h, STRIP_REQUEST);
    h.remove(&X_TENANT_ID);
    // A credential header of the caller's own (e.g. X-API-Key) never passes.
    h.remove(f.credential.0);

    let peer_ip = f.peer.ip().to_string();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prior) => format!("{prior}, {peer_ip}"),
        None => peer_ip,
    };
    if let Ok(v) = HeaderValue::try_from(xff) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(f.proto));
    if let Some(host) = original_host {
        h.insert(X_FORWARDED_HOST.clone(), host);
    }
    h.insert(X_REQUEST_ID.clone(), f.request_id.clone());
    h.insert(f.credential.0.clone(), f.credential.1.clone());
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::routes::Routes;

    #[test]
    fn request_hygiene() {
        let cfg = Config::from_toml_with_env(
            r#"
            [[routes]]
            integration = "github"
            path_prefix = "/github"
            upstream = "http://127.0.0.1:9000"
            strip_prefix = true
            "#,
            Vec::new(),
        )
        .unwrap();
        let routes = Routes::from_config(&cfg);
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
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let rid = HeaderValue::from_static("rid-1");
        let f = Forward {
            route,
            peer: "127.0.0.1:5555".parse().unwrap(),
            proto: "http",
            request_id: &rid,
            credential: (
                &header::AUTHORIZATION,
                HeaderValue::from_static("Bearer up"),
            ),
        };
        let p = upstream_parts(parts, &f).unwrap();
        assert_eq!(p.uri, "http://127.0.0.1:9000/mcp?x=1");
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
            "host",
        ] {
            assert!(!h.contains_key(gone), "{gone} should be stripped");
        }
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "proxy.local");
        assert_eq!(h["x-request-id"], "rid-1");
        assert_eq!(h["mcp-session-id"], "s1");
        assert_eq!(h["mcp-protocol-version"], "2025-11-25");
    }

    #[test]
    fn custom_header_injection_replaces_callers_copy() {
        let cfg = Config::from_toml_with_env(
            r#"
            [[routes]]
            integration = "k"
            path_prefix = "/k"
            upstream = "http://127.0.0.1:9000"
            inject = { header = "X-API-Key" }
            "#,
            Vec::new(),
        )
        .unwrap();
        let routes = Routes::from_config(&cfg);
        let route = routes.find(None, "/k").unwrap();
        let req = Request::builder()
            .uri("/k")
            .header("x-api-key", "forged")
            .header("authorization", "Bearer caller")
            .body(())
            .unwrap();
        let name = HeaderName::from_static("x-api-key");
        let rid = HeaderValue::from_static("r");
        let f = Forward {
            route,
            peer: "127.0.0.1:1".parse().unwrap(),
            proto: "http",
            request_id: &rid,
            credential: (&name, HeaderValue::from_static("real")),
        };
        let p = upstream_parts(req.into_parts().0, &f).unwrap();
        assert_eq!(
            p.headers.get_all("x-api-key").iter().collect::<Vec<_>>(),
            ["real"]
        );
        assert!(!p.headers.contains_key("authorization"));
    }
}
