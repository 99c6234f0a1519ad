//! What the optional shared pieces (docs/scaling.md) cost per request:
//! a rate-limit check in Redis (against a local `redis-server` started here)
//! next to the in-process one, and the tracing hooks of one proxied request
//! with tracing off and on (spans exported to a local OTLP sink).
//! Run: `cargo bench --bench shared` (needs `redis-server` on PATH).

use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use credgate::config::{RateLimit, RateLimitBackend, RateLimitConfig};
use credgate::metrics::Metrics;
use credgate::ratelimit::RateLimits;
use credgate::telemetry::{self, TracingConfig};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderValue, Request, Response};
use http_body_util::Full;
use std::hint::black_box;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn redis_server(port: u16) -> Redis {
    // Held by `Redis` at once, so Drop kills and waits for it on every path.
    let redis = Redis(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH"),
    );
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return redis;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("redis-server did not start");
}

/// The work `proxy::handle` adds for tracing: server span, authenticate,
/// credential lookup, upstream span with traceparent, ends.
async fn traced_request(parts: &http::request::Parts, request_id: &HeaderValue) {
    let trace = telemetry::server_span(parts, "/github", "github", request_id);
    let work = async {
        let _ = telemetry::in_sync_span("authenticate", || Ok::<_, ()>(()));
        telemetry::record_principal("acme", "cg-client");
        let _ = telemetry::in_span("credential lookup", async { Ok::<_, ()>(()) }).await;
        let mut headers = http::HeaderMap::new();
        let span = telemetry::upstream_span(&mut headers);
        let resp: Result<Response<credgate::http::Body>, _> =
            Ok(Response::new(credgate::http::empty()));
        telemetry::end(span, &resp);
        resp
    };
    let result = match &trace {
        None => work.await,
        Some(cx) => telemetry::within(cx, work).await,
    };
    telemetry::end(trace, &result);
}

fn shared(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let big = RateLimit {
        per_second: 1_000_000,
        burst: 1_000_000,
    };
    let tenant: Arc<str> = "acme".into();

    let local = RateLimits::new(&RateLimitConfig {
        default: big,
        ..Default::default()
    });
    c.bench_function("ratelimit/local_acquire", |b| {
        b.iter(|| black_box(rt.block_on(local.acquire(&tenant, "cg-client"))))
    });

    let port = free_port();
    let _redis = redis_server(port);
    let mut config = RateLimitConfig {
        default: big,
        backend: RateLimitBackend::Redis,
        ..Default::default()
    };
    config.redis.url = Some(format!("redis://127.0.0.1:{port}").into());
    config.redis.timeout_ms = 1000;
    let metrics = Metrics::new();
    let shared = rt.block_on(async {
        RateLimits::with_backend(&config, metrics.rate_limit_backend_errors_total.clone())
            .expect("redis limiter")
    });
    rt.block_on(shared.acquire(&tenant, "cg-client"))
        .expect("redis answers");
    c.bench_function("ratelimit/redis_acquire", |b| {
        b.iter(|| black_box(rt.block_on(shared.acquire(&tenant, "cg-client"))))
    });
    assert_eq!(metrics.rate_limit_backend_errors_total.get(), 0);

    let (parts, ()) = Request::post("http://127.0.0.1:8080/github/mcp")
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .body(())
        .expect("request")
        .into_parts();
    let request_id = HeaderValue::from_static("0123456789abcdef");
    c.bench_function("tracing/request_hooks_off", |b| {
        b.iter(|| rt.block_on(traced_request(&parts, &request_id)))
    });

    // A sink answering every OTLP post with 200.
    let sink = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((io, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|_req| async {
                        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(io), svc)
                        .await;
                });
            }
        });
        addr
    });
    let tracing = TracingConfig {
        otlp_endpoint: Some(format!("http://{sink}")),
        sample_ratio: 1.0,
    };
    let _telemetry = rt.block_on(async { telemetry::init(&tracing, &metrics).expect("init") });
    c.bench_function("tracing/request_hooks_on", |b| {
        b.iter(|| rt.block_on(traced_request(&parts, &request_id)))
    });
    let dropped = metrics
        .trace_spans_dropped_total
        .with_label_values(&["queue_full"])
        .get();
    println!("spans dropped (queue full) during the run: {dropped}");
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = shared
}
criterion_main!(benches);
