//! Talking to upstreams: the pooled client ([`pool`]), the rewrite of a
//! caller's request into the upstream's with its header hygiene
//! ([`request`]), and the response's hop-by-hop clean-up. Bodies stream both
//! ways; nothing here buffers.

mod pool;
mod request;

use std::sync::Arc;
use std::time::Duration;

use http::header::HeaderValue;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::config::ProxyConfig;
use crate::error::ProxyError;
use crate::http::{Body, IdleTimeout};
use pool::{Conn, Pool, UpstreamBody, sweep};
pub use request::{
    Forward, OWN_COOKIE_PREFIX, X_FORWARDED_FOR, X_REQUEST_ID, X_TENANT_ID, upstream_parts,
};
use request::{STRIP_RESPONSE, strip_hop_by_hop};

/// The HTTP(S) client for all upstreams: HTTP/1.1 keep-alive connections,
/// pooled per upstream. A connection is driven by the task of the request
/// using it (while the response head is awaited, then by the response body),
/// not by a task of its own: a proxied request costs no extra task wake-ups
/// or channel hops, and a response that arrived in one read is written to
/// the caller in one write.
#[derive(Clone)]
pub struct Client {
    connector: HttpsConnector<HttpConnector>,
    pool: Arc<Pool>,
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
        let pool = Arc::new(Pool::default());
        // Outside a runtime (some unit tests) nothing sweeps; a checkout
        // still drops connections the upstream closed.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep(Arc::downgrade(&pool)));
        }
        Client {
            connector,
            pool,
            response_timeout: Duration::from_secs(proxy.upstream_timeout_seconds),
            idle_timeout: Duration::from_secs(proxy.stream_idle_timeout_seconds),
        }
    }

    /// How long a streamed body may stay silent.
    pub fn idle_timeout(&self) -> Duration {
        self.idle_timeout
    }

    /// Sends the request (origin-form URI, `Host` set: see
    /// [`upstream_parts`]) to `target`; errors are already classified for
    /// the caller.
    pub async fn send(
        &self,
        target: &Target,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        match tokio::time::timeout(self.response_timeout, self.exchange(target, req)).await {
            Err(_) => Err(ProxyError::UpstreamTimeout),
            Ok(r) => r,
        }
    }

    async fn exchange(
        &self,
        target: &Target,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let key = &target.key;
        let pooled = self.pool.checkout(key);
        let (mut conn, resp) = match pooled {
            Some(mut conn) => match conn.request(req).await {
                Ok(resp) => (conn, resp),
                // The upstream closed the idle connection as we took it, before
                // anything was sent: safe to send again on a fresh one.
                Err(mut e) => match e.take_message() {
                    Some(req) => Box::pin(self.fresh(target, req)).await?,
                    None => return Err(classify(e.error())),
                },
            },
            // Boxed: connecting (DNS, TCP, TLS) is a large future and rare.
            None => Box::pin(self.fresh(target, req)).await?,
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers, STRIP_RESPONSE);
        // An answer without a body leaves the connection idle at once.
        let conn = if body.is_end_stream() {
            if conn.settle() {
                self.pool.checkin(key, conn);
            }
            None
        } else {
            Some(conn)
        };
        let body = UpstreamBody {
            body,
            conn,
            pool: self.pool.clone(),
            key: key.clone(),
        };
        Ok(Response::from_parts(
            parts,
            IdleTimeout::new(body, self.idle_timeout).boxed_unsync(),
        ))
    }

    async fn fresh(
        &self,
        target: &Target,
        req: Request<Body>,
    ) -> Result<(Box<Conn>, Response<Incoming>), ProxyError> {
        let mut conn = self.connect(target).await?;
        match conn.request(req).await {
            Ok(resp) => Ok((conn, resp)),
            Err(e) => Err(classify(e.error())),
        }
    }

    async fn connect(&self, target: &Target) -> Result<Box<Conn>, ProxyError> {
        let uri = Uri::builder()
            .scheme(target.scheme.clone())
            .authority(target.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| ProxyError::Internal)?;
        let io = self.connector.clone().call(uri).await.map_err(|e| {
            tracing::warn!(error = %e, upstream = %target.authority, "upstream connect failed");
            ProxyError::UpstreamUnavailable
        })?;
        let (tx, conn) = http1::handshake(io).await.map_err(|e| classify(&e))?;
        Ok(Conn::new(tx, conn))
    }
}

/// An upstream server, prepared once per route: its pool key and the
/// `Host` its requests carry.
#[derive(Debug, Clone)]
pub struct Target {
    scheme: Scheme,
    authority: Authority,
    /// `scheme://authority`, lower-case: which pool a connection belongs to.
    key: Arc<str>,
    host: HeaderValue,
}

impl Target {
    pub fn new(scheme: Scheme, authority: Authority) -> Self {
        let default = if scheme == Scheme::HTTPS { 443 } else { 80 };
        // The authority without the scheme's default port.
        let host = match authority.port_u16() {
            Some(p) if p != default => authority.as_str(),
            _ => authority.host(),
        };
        Target {
            key: format!("{scheme}://{authority}")
                .to_ascii_lowercase()
                .into(),
            host: HeaderValue::from_str(host).expect("an authority is a valid header value"),
            scheme,
            authority,
        }
    }

    /// `scheme://authority`, lower-case.
    pub fn key(&self) -> &str {
        &self.key
    }
}

fn classify(e: &hyper::Error) -> ProxyError {
    // A body that broke the size limit while streaming surfaces here.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(limit) = s.downcast_ref::<crate::http::BodyTooLarge>() {
            return ProxyError::PayloadTooLarge { limit: limit.0 };
        }
        source = s.source();
    }
    tracing::warn!(error = %e, "upstream request failed");
    ProxyError::UpstreamUnavailable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_host_drops_default_port_only() {
        let t = |s: &str, a: &str| Target::new(s.parse().unwrap(), a.parse().unwrap());
        assert_eq!(t("https", "API.Example:443").host, "API.Example");
        assert_eq!(t("http", "api.example:80").host, "api.example");
        assert_eq!(t("http", "api.example:443").host, "api.example:443");
        assert_eq!(t("https", "10.0.0.1:8443").host, "10.0.0.1:8443");
        assert_eq!(
            t("https", "API.Example:443").key(),
            "https://api.example:443"
        );
    }
}
