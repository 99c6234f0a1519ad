//! The upstream client against real HTTP/1.1 servers on 127.0.0.1: keep-alive
//! reuse, an upstream that drops idle connections, streamed bodies driven by
//! the response, concurrency, and an upstream that dies mid-body.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use credgate::config::Config;
use credgate::http::{Body, full};
use credgate::upstream::{Client, Target};
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn client() -> Client {
    let cfg = Config::from_toml_with_env("", Vec::new()).expect("default config");
    let tls = credgate::tls::client_config(None).expect("tls");
    Client::new(&cfg.proxy, tls)
}

fn target(addr: std::net::SocketAddr) -> Target {
    Target::new(
        http::uri::Scheme::HTTP,
        addr.to_string().parse().expect("authority"),
    )
}

fn request(addr: std::net::SocketAddr, path: &str, body: Body) -> Request<Body> {
    Request::post(path)
        .header("host", addr.to_string())
        .body(body)
        .expect("request")
}

/// A hyper server answering with `answer`; counts accepted connections.
async fn serve<F, Fut>(answer: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let answer = answer.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, accepted)
}

async fn echo(req: Request<Incoming>) -> Response<Body> {
    let host = req.headers()["host"].to_str().unwrap_or("").to_owned();
    let uri = req.uri().to_string();
    let body = req.into_body().collect().await.expect("body").to_bytes();
    Response::new(full(format!("{uri} {host} {}", body.len())))
}

async fn text(resp: Response<Body>) -> String {
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (addr, accepted) = serve(echo).await;
    let c = client();
    let t = target(addr);
    for i in 0..20 {
        let resp = c
            .send(&t, request(addr, "/mcp?x=1", full(vec![b'a'; i])))
            .await
            .expect("answer");
        assert_eq!(resp.status(), 200);
        assert_eq!(text(resp).await, format!("/mcp?x=1 {addr} {i}"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "keep-alive reuse");
}

#[tokio::test]
async fn concurrent_requests_all_answered_and_pooled() {
    let (addr, accepted) = serve(|req| async move {
        tokio::time::sleep(Duration::from_millis(20)).await;
        echo(req).await
    })
    .await;
    let c = client();
    let t = target(addr);
    for _round in 0..3 {
        let calls = (0..16).map(|i| {
            let (c, t) = (c.clone(), t.clone());
            async move {
                let resp = c
                    .send(&t, request(addr, &format!("/r{i}"), full("x")))
                    .await
                    .expect("answer");
                assert_eq!(text(resp).await, format!("/r{i} {addr} 1"));
            }
        });
        futures_util::future::join_all(calls).await;
    }
    let n = accepted.load(Ordering::SeqCst);
    assert!(
        (1..=16).contains(&n),
        "{n} connections for 16 concurrent callers"
    );
}

/// Answers one request per connection, then closes it without saying so
/// (no `Connection: close`), like an upstream whose keep-alive timeout is
/// shorter than ours.
async fn forgetful_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn connections_the_upstream_closed_are_not_reused() {
    let (addr, accepted) = forgetful_upstream().await;
    let c = client();
    let t = target(addr);
    for _ in 0..10 {
        // No pause: the close may or may not have arrived when the next
        // request takes the pooled connection; both must work.
        let resp = c
            .send(&t, request(addr, "/", full("")))
            .await
            .expect("a fresh connection when the pooled one is gone");
        assert_eq!(text(resp).await, "ok");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 10);
}

#[tokio::test]
async fn streamed_response_is_driven_by_its_body() {
    let (addr, _) = serve(|_req| async move {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<Frame<Bytes>, credgate::http::BoxError>>(1);
        tokio::spawn(async move {
            for i in 0..5 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let event = format!("data: {i}\n\n");
                if tx.send(Ok(Frame::data(Bytes::from(event)))).await.is_err() {
                    return;
                }
            }
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        Response::builder()
            .header("content-type", "text/event-stream")
            .body(StreamBody::new(stream).boxed_unsync())
            .expect("response")
    })
    .await;
    let c = client();
    let t = target(addr);
    let resp = c
        .send(&t, request(addr, "/sse", full("")))
        .await
        .expect("head");
    let mut body = resp.into_body();
    let mut events = Vec::new();
    while let Some(frame) = body.frame().await {
        let data = frame.expect("frame").into_data().expect("data");
        events.push(String::from_utf8(data.to_vec()).expect("utf-8"));
    }
    assert_eq!(
        events.concat(),
        "data: 0\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n"
    );
    assert!(
        events.len() >= 2,
        "events arrive as they are sent: {events:?}"
    );
    // The connection went back to the pool and serves the next request.
    let resp = c
        .send(&t, request(addr, "/sse", full("")))
        .await
        .expect("again");
    assert!(text(resp).await.starts_with("data: 0"));
}

#[tokio::test]
async fn an_upstream_dying_mid_body_fails_the_body() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial")
            .await;
        drop(s);
    });
    let c = client();
    let resp = c
        .send(&target(addr), request(addr, "/", full("")))
        .await
        .expect("head");
    let err = resp.into_body().collect().await;
    assert!(
        err.is_err(),
        "a truncated body is an error, not a short answer"
    );
}
