//! The benchmark's floor: the leanest hyper 1.x reverse proxy we can write,
//! to measure credgate against (issue 18). Per downstream connection: one
//! hyper server connection and one hyper client connection
//! (`hyper::client::conn::http1`) to the upstream, opened at accept. Each
//! request is forwarded with its body streamed as is, its `Host` set to the
//! upstream and its `Authorization` replaced by the upstream credential; the
//! response is streamed back as is. HTTP/1.1 only; no pool, no routing, no
//! auth check, no metrics, no logging. Same runtime as credgate (tokio's
//! default multi-thread runtime) and the system allocator.
//!
//! Usage: credgate-bench-floor <listen 127.0.0.1:port> <upstream 127.0.0.1:port> [authorization]

use std::future::poll_fn;
use std::sync::{Arc, Mutex};

use hyper::body::Incoming;
use hyper::client::conn::http1 as client;
use hyper::header::{AUTHORIZATION, HOST, HeaderValue};
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

type Sender = Arc<Mutex<client::SendRequest<Incoming>>>;

async fn forward(
    mut req: Request<Incoming>,
    upstream: Sender,
    host: HeaderValue,
    auth: HeaderValue,
) -> Result<Response<Incoming>, hyper::Error> {
    let headers = req.headers_mut();
    headers.insert(HOST, host);
    headers.insert(AUTHORIZATION, auth);
    // HTTP/1 serves one request at a time, so the lock is never contended;
    // it is only there because the service is shared by reference.
    poll_fn(|cx| upstream.lock().expect("not poisoned").poll_ready(cx)).await?;
    let response = upstream.lock().expect("not poisoned").send_request(req);
    response.await
}

async fn serve(
    downstream: TcpStream,
    upstream_addr: Arc<str>,
    host: HeaderValue,
    auth: HeaderValue,
) {
    let Ok(up) = TcpStream::connect(&*upstream_addr).await else {
        return;
    };
    let _ = up.set_nodelay(true);
    let Ok((sender, conn)) = client::handshake::<_, Incoming>(TokioIo::new(up)).await else {
        return;
    };
    tokio::spawn(conn);
    let sender: Sender = Arc::new(Mutex::new(sender));
    let svc = service_fn(move |req| forward(req, sender.clone(), host.clone(), auth.clone()));
    let _ = server::Builder::new()
        .serve_connection(TokioIo::new(downstream), svc)
        .await;
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:18085".into());
    let upstream: Arc<str> = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:18081".into())
        .into();
    let auth = args
        .next()
        .unwrap_or_else(|| "Bearer upstream-token".into());
    let host = HeaderValue::from_str(&upstream).expect("upstream is a valid host header");
    let auth = HeaderValue::from_str(&auth).expect("authorization is a valid header value");
    let listener = TcpListener::bind(&listen).await?;
    eprintln!("floor listening on {listen}, forwarding to {upstream}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve(stream, upstream.clone(), host.clone(), auth.clone()));
    }
}
