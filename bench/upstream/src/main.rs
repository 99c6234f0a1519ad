//! The benchmark's upstream: answers every POST with a 300-byte JSON-RPC
//! result, as `application/json` (`/mcp`) or as one Server-Sent Event
//! (`/mcp-sse`), like a streamable-HTTP MCP server. One thread, HTTP/1.1
//! keep-alive, no logging: it should cost as little as possible.
//!
//! Usage: credgate-bench-upstream <127.0.0.1:port>

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Exactly 300 bytes of JSON-RPC result.
fn json_body() -> Bytes {
    let head = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":""#;
    let tail = r#""}],"isError":false}}"#;
    let pad = 300 - head.len() - tail.len();
    let body = format!("{head}{}{tail}", "x".repeat(pad));
    assert_eq!(body.len(), 300);
    Bytes::from(body)
}

async fn answer(
    req: Request<Incoming>,
    json: Bytes,
    sse: Bytes,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let sse_wanted = req.uri().path().ends_with("-sse");
    // Read the request body, as a real server would.
    let _ = req.into_body().collect().await;
    let (ctype, body) = if sse_wanted {
        ("text/event-stream", sse)
    } else {
        ("application/json", json)
    };
    Ok(Response::builder()
        .header("content-type", ctype)
        .header("cache-control", "no-cache")
        .body(Full::new(body))
        .expect("static response"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".into());
    let listener = TcpListener::bind(&addr).await?;
    let json = json_body();
    let sse = Bytes::from(format!(
        "event: message\ndata: {}\n\n",
        std::str::from_utf8(&json).expect("utf-8")
    ));
    eprintln!("upstream listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (json, sse) = (json.clone(), sse.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, json.clone(), sse.clone()));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
