//! Listeners: the proxy (OAuth, admin, proxied traffic) and ops ports,
//! HTTP/1.1 and h2c through hyper-util's auto builder, graceful shutdown with
//! a drain limit.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::error::ProxyError;
use crate::http::{Body, request_id};
use crate::state::AppState;
use crate::upstream::X_REQUEST_ID;
use crate::{admin, ops, proxy};

/// A slow client gets this long to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Listeners {
    pub proxy: TcpListener,
    pub ops: TcpListener,
}

impl Listeners {
    pub async fn bind(state: &AppState) -> std::io::Result<Self> {
        Ok(Listeners {
            proxy: TcpListener::bind(state.config.proxy.listen).await?,
            ops: TcpListener::bind(state.config.ops.listen).await?,
        })
    }
}

/// Serves both listeners until `shutdown` turns true, then stops accepting
/// and waits up to `shutdown.drain_seconds` for in-flight requests.
pub async fn serve(
    state: Arc<AppState>,
    listeners: Listeners,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let graceful = Arc::new(GracefulShutdown::new());
    let proxy_state = state.clone();
    let proxy = accept_loop(
        listeners.proxy,
        graceful.clone(),
        shutdown.clone(),
        move |req, peer| {
            let state = proxy_state.clone();
            async move { Ok::<_, Infallible>(handle_proxy(&state, req, peer).await) }
        },
    );
    let ops_state = state.clone();
    let ops = accept_loop(
        listeners.ops,
        graceful.clone(),
        shutdown.clone(),
        move |req, _peer| {
            let state = ops_state.clone();
            async move { Ok::<_, Infallible>(ops::handle(&state, req).await) }
        },
    );
    tokio::try_join!(proxy, ops)?;

    let drain = Duration::from_secs(state.config.shutdown.drain_seconds);
    let graceful = Arc::try_unwrap(graceful).unwrap_or_else(|_| GracefulShutdown::new());
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections drained"),
        () = tokio::time::sleep(drain) => tracing::warn!("drain limit reached; closing remaining connections"),
    }
    Ok(())
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    graceful: Arc<GracefulShutdown>,
    mut shutdown: watch::Receiver<bool>,
    handler: F,
) -> std::io::Result<()>
where
    F: Fn(Request<Incoming>, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
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
        let svc = service_fn(move |req| handler(req, peer));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with error");
            }
        });
    }
}

/// Dispatch on the proxy port: credgate's own endpoints first, then routes.
async fn handle_proxy(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<Body> {
    let rid = request_id(req.headers());
    let span = tracing::info_span!("request", request_id = ?rid, method = %req.method(), path = %req.uri().path());
    let mut resp = dispatch(state, req, peer, &rid).instrument(span).await;
    resp.headers_mut().insert(X_REQUEST_ID.clone(), rid);
    resp
}

async fn dispatch(
    state: &AppState,
    req: Request<Incoming>,
    peer: SocketAddr,
    rid: &http::HeaderValue,
) -> Response<Body> {
    let path = req.uri().path();
    if path.starts_with("/oauth/") || path.starts_with("/.well-known/") {
        let started = Instant::now();
        let resp = match state
            .authority
            .handle(req, peer, rid.to_str().unwrap_or(""))
            .await
        {
            Some(r) => r,
            None => ProxyError::NotFound.into_response(rid.to_str().unwrap_or("")),
        };
        state.finish("oauth", started, resp)
    } else if path == "/api/admin" || path.starts_with("/api/admin/") {
        admin::handle(state, req, peer, rid).await
    } else {
        proxy::handle(state, req, peer, "http", rid).await
    }
}
