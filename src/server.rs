//! Listeners: the proxy (OAuth, admin, proxied traffic) and ops ports,
//! HTTP/1.1 and HTTP/2 (h2c, or ALPN h2 with TLS) through hyper-util's auto
//! builder, a cap on concurrent connections, header size and read-time
//! limits (every connection is supervised by [`crate::conn_limits`]),
//! graceful shutdown with a drain limit.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

use crate::config::Config;
use crate::conn_limits::{self, Activity, InFlight, Tracked};
use crate::error::ProxyError;
use crate::http::{Body, ConnInfo, request_id};
use crate::state::AppState;
use crate::tls::{self, ReloadingCert, TlsError};
use crate::upstream::X_REQUEST_ID;
use crate::{admin, ops, proxy};

/// A TLS handshake must finish within this (and within the header timeout,
/// which counts from the accept).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound socket and how to serve it.
pub struct Listener {
    tcp: TcpListener,
    tls: Option<(TlsAcceptor, Arc<ReloadingCert>)>,
}

impl Listener {
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

pub struct Listeners {
    pub proxy: Listener,
    pub ops: Listener,
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("bind {addr}: {source}")]
    Io {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

async fn bind_one(
    addr: SocketAddr,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<Listener, BindError> {
    let tls = match (cert, key) {
        (Some(c), Some(k)) => {
            let cert = Arc::new(ReloadingCert::load(c, k)?);
            let acceptor = TlsAcceptor::from(tls::server_config(cert.clone())?);
            Some((acceptor, cert))
        }
        _ => None,
    };
    let tcp = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError::Io { addr, source })?;
    Ok(Listener { tcp, tls })
}

impl Listeners {
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        let (p, o) = (&config.proxy, &config.ops);
        Ok(Listeners {
            proxy: bind_one(p.listen, p.tls_cert.as_deref(), p.tls_key.as_deref()).await?,
            ops: bind_one(o.listen, o.tls_cert.as_deref(), o.tls_key.as_deref()).await?,
        })
    }
}

/// Limits applied to every connection of a listener.
#[derive(Clone, Copy)]
struct Limits {
    max_connections: usize,
    header_read_timeout: Duration,
    max_header_bytes: usize,
}

/// Serves both listeners until `shutdown` turns true, then stops accepting
/// and waits up to `shutdown.drain_seconds` for in-flight requests.
pub async fn serve(
    state: Arc<AppState>,
    listeners: Listeners,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let p = &state.config.proxy;
    let limits = Limits {
        max_connections: p.max_connections,
        header_read_timeout: Duration::from_secs(p.header_read_timeout_seconds),
        max_header_bytes: p.max_header_bytes,
    };
    for l in [&listeners.proxy, &listeners.ops] {
        if let Some((_, cert)) = &l.tls {
            tokio::spawn(watch_cert(cert.clone(), shutdown.clone()));
        }
    }
    let graceful = GracefulShutdown::new();
    let proxy_state = state.clone();
    let proxy = accept_loop(
        listeners.proxy,
        limits,
        &graceful,
        shutdown.clone(),
        move |req, conn| {
            let state = proxy_state.clone();
            async move { Ok::<_, Infallible>(handle_proxy(&state, req, conn).await) }
        },
    );
    let ops_state = state.clone();
    let ops = accept_loop(
        listeners.ops,
        limits,
        &graceful,
        shutdown.clone(),
        move |req, _conn| {
            let state = ops_state.clone();
            async move { Ok::<_, Infallible>(ops::handle(&state, req).await) }
        },
    );
    tokio::try_join!(proxy, ops)?;

    let drain = Duration::from_secs(state.config.shutdown.drain_seconds);
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(drain) => tracing::warn!("drain limit reached; closing remaining connections"),
    }
    Ok(())
}

/// Picks up a renewed certificate without a restart.
async fn watch_cert(cert: Arc<ReloadingCert>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(tls::CERT_POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        match cert.reload_if_changed() {
            Ok(true) => tracing::info!("TLS certificate reloaded"),
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "new TLS certificate refused; keeping the old one")
            }
        }
    }
}

async fn accept_loop<F, Fut>(
    listener: Listener,
    limits: Limits,
    graceful: &GracefulShutdown,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>, ConnInfo) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes.try_into().unwrap_or(u32::MAX))
        // A peer that stops answering pings is gone: its streams are closed.
        .keep_alive_interval(limits.header_read_timeout)
        .keep_alive_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let tls = listener.tls.map(|(acceptor, _)| acceptor);
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => s.expect("semaphore never closed"),
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.tcp.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let builder = builder.clone();
        // Registered now, so shutdown waits for this connection's handshake too.
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // The first request head is due this long after the accept,
            // TLS handshake included.
            let head_due = tokio::time::Instant::now() + limits.header_read_timeout;
            let conn = ConnInfo {
                peer,
                peer_ip: http::HeaderValue::try_from(peer.ip().to_string())
                    .expect("an IP is a header value"),
                tls: tls.is_some(),
            };
            let activity = Arc::new(Activity::default());
            let requests = activity.clone();
            let svc = service_fn(move |req| {
                let in_flight = InFlight::start(&requests);
                let answer = handler(req, conn.clone());
                async move {
                    let resp = answer.await?;
                    Ok::<_, Infallible>(resp.map(|body| Tracked::new(body, in_flight)))
                }
            });
            let supervision = (
                activity.as_ref(),
                head_due,
                limits.header_read_timeout,
                stop,
            );
            match tls {
                None => serve_conn(&builder, watcher, stream, svc, supervision).await,
                Some(acceptor) => {
                    let handshake = TLS_HANDSHAKE_TIMEOUT
                        .min(head_due.saturating_duration_since(tokio::time::Instant::now()));
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => serve_conn(&builder, watcher, s, svc, supervision).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

/// Serves one connection under the limits of [`conn_limits`]. `watcher`
/// is held until the connection ends, so shutdown's drain waits for it.
async fn serve_conn<I, S>(
    builder: &Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    svc: S,
    (activity, head_due, idle, stop): (
        &Activity,
        tokio::time::Instant,
        Duration,
        watch::Receiver<bool>,
    ),
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Tracked<Body>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let _watcher = watcher;
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let graceful = |c: Pin<&mut _>| {
        hyper_util::server::conn::auto::UpgradeableConnection::graceful_shutdown(c)
    };
    if let Err(e) = conn_limits::supervise(conn, graceful, activity, head_due, idle, stop).await {
        tracing::debug!(error = %e, "connection ended with error");
    }
}

/// Dispatch on the proxy port: credgate's own endpoints first, then routes.
async fn handle_proxy(state: &AppState, req: Request<Incoming>, conn: ConnInfo) -> Response<Body> {
    let started = Instant::now();
    let rid = request_id(req.headers());
    // `route`, `client_id` and `tenant` are recorded as they become known; the access
    // log line below carries them (docs/http-api.md, "Access log"). Nothing is
    // formatted when the span and the event are disabled.
    let span = tracing::info_span!(
        "request",
        request_id = rid.to_str().unwrap_or_default(),
        method = %req.method(),
        path = %req.uri().path(),
        route = tracing::field::Empty,
        client_id = tracing::field::Empty,
        tenant = tracing::field::Empty,
    );
    let mut resp = dispatch(state, req, conn, &rid)
        .instrument(span.clone())
        .await;
    span.in_scope(|| {
        tracing::info!(
            target: "credgate::access",
            status = resp.status().as_u16(),
            duration_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
            "request"
        )
    });
    resp.headers_mut().insert(X_REQUEST_ID.clone(), rid);
    resp
}

async fn dispatch(
    state: &AppState,
    req: Request<Incoming>,
    conn: ConnInfo,
    rid: &http::HeaderValue,
) -> Response<Body> {
    let path = req.uri().path();
    if path.starts_with("/oauth/") || path.starts_with("/.well-known/") {
        let started = Instant::now();
        // Boxed, like the admin branch: the proxy branch's future is moved
        // with every proxied request and must not be as large as theirs.
        let resp = match Box::pin(state.authority.handle(
            req,
            conn.peer,
            rid.to_str().unwrap_or(""),
        ))
        .await
        {
            Some(r) => r,
            None => ProxyError::NotFound.into_response(rid.to_str().unwrap_or("")),
        };
        state.finish("oauth", started, resp)
    } else if path == "/api/admin" || path.starts_with("/api/admin/") {
        Box::pin(admin::handle(state, req, conn.peer, rid)).await
    } else if crate::connect::is_own_path(path) {
        Box::pin(crate::connect::handle(state, req)).await
    } else {
        proxy::handle(state, req, &conn, rid).await
    }
}
