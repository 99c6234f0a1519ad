//! Talking to upstreams: the pooled client, the rewrite of a caller's request
//! into the upstream's (header hygiene), and the response's hop-by-hop
//! clean-up. Bodies stream both ways; nothing here buffers.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tower_service::Service;

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
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
/// credgate's own cookies (the connect and settings pages) are named with
/// this prefix, bare or behind `__Host-`/`__Secure-`; they never go upstream.
pub const OWN_COOKIE_PREFIX: &str = "credgate";
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// How long an upstream connection may sit idle in the pool: between two and
/// three sweeps of [`SWEEP`].
const SWEEP: Duration = Duration::from_secs(30);
const IDLE_SWEEPS: u64 = 3;
/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

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
        // Boxed once for its lifetime: it moves between pool, request and
        // body, and its buffers are large.
        Ok(Box::new(Conn {
            tx,
            conn,
            idle_since: 0,
            done: false,
        }))
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

/// One upstream connection: the request half and the connection state,
/// which the current user polls.
struct Conn {
    tx: http1::SendRequest<Body>,
    conn: http1::Connection<Io, Body>,
    /// The pool's sweep count when the connection went idle.
    idle_since: u64,
    /// The connection future has completed and must not be polled again.
    done: bool,
}

impl Conn {
    /// Sends one request, driving the connection until the response head
    /// is in.
    async fn request(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        let mut answer = std::pin::pin!(self.tx.try_send_request(req));
        std::future::poll_fn(|cx| {
            // Writes the request and reads the answer; when the connection
            // ends first, the answer carries the reason.
            self.drive(cx);
            answer.as_mut().poll(cx)
        })
        .await
    }

    /// Polls the connection; false once it has ended (closed or failed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done && Pin::new(&mut self.conn).poll(cx).is_ready() {
            self.done = true;
        }
        !self.done
    }

    /// Lets the connection finish the exchange; true when it is idle and
    /// can take another request.
    fn settle(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop())) && self.tx.is_ready()
    }
}

/// Idle connections by upstream (`Target::key`), newest last. Boxed: a
/// connection moves between pool, request and body; a box moves as a
/// pointer.
#[derive(Default)]
struct Pool {
    #[allow(clippy::vec_box)]
    idle: Mutex<HashMap<Arc<str>, Vec<Box<Conn>>>>,
    sweeps: AtomicU64,
}

impl Pool {
    /// A usable idle connection, if any.
    fn checkout(&self, key: &str) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().expect("pool lock");
        let conns = idle.get_mut(key)?;
        while let Some(mut conn) = conns.pop() {
            if conn.settle() {
                return Some(conn);
            }
        }
        None
    }

    fn checkin(&self, key: &Arc<str>, mut conn: Box<Conn>) {
        conn.idle_since = self.sweeps.load(Ordering::Relaxed);
        let mut idle = self.idle.lock().expect("pool lock");
        let conns = match idle.get_mut(&**key) {
            Some(conns) => conns,
            None => idle.entry(key.clone()).or_default(),
        };
        if conns.len() < MAX_IDLE_PER_UPSTREAM {
            conns.push(conn);
        }
    }
}

/// Closes connections idle too long or closed by the upstream, until the
/// client is gone.
async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = pool.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        let mut idle = pool.idle.lock().expect("pool lock");
        for conns in idle.values_mut() {
            conns.retain_mut(|c| now - c.idle_since < IDLE_SWEEPS && c.settle());
        }
    }
}

/// An upstream response body. It drives its connection and hands the
/// connection back to the pool when the body ends.
struct UpstreamBody {
    body: Incoming,
    conn: Option<Box<Conn>>,
    pool: Arc<Pool>,
    key: Arc<str>,
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(c) = this.conn.as_mut()
            && !c.drive(cx)
        {
            // Closed or broken: what it read is in `body`, or its error is.
            this.conn = None;
        }
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !this.body.is_end_stream() => {}
            Some(Err(_)) => this.conn = None,
            _ => {
                if let Some(mut conn) = this.conn.take()
                    && conn.settle()
                {
                    this.pool.checkin(&this.key, conn);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
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

/// Removes hop-by-hop headers, including those the `Connection` header names.
fn strip_hop_by_hop(h: &mut HeaderMap, fixed: &[HeaderName]) {
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
            peer_ip: &HeaderValue::from_static("127.0.0.1"),
            peer_trusted: false,
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
