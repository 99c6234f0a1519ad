//! criterion micro-benchmarks of the proxied request's pieces, in the order
//! `proxy::handle` runs them: route → authenticate (cached / uncached) →
//! rate limit → credential (cache hit) → inject (upstream request head) →
//! metrics. Run: `cargo bench --bench hotpath`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use credgate::config::RateLimitConfig;
use credgate::ratelimit::RateLimits;
use credgate::upstream::{self, Forward};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use http::header::{self, HeaderValue};
use std::hint::black_box;

fn hot_path(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let state = rt.block_on(support::state(support::config(
        dir.path(),
        &support::embedded(dir.path()),
    )));
    let (id, secret) = rt.block_on(support::client(&state, "acme"));
    let token = rt.block_on(support::token(&state, &id, &secret));
    rt.block_on(support::credential(&state, "acme"));
    let live = state.live.load();
    let route = live.routes.find(None, "/github/mcp").expect("route");
    let headers = support::bearer_headers(&token);

    c.bench_function("route_find", |b| {
        b.iter(|| black_box(live.routes.find(black_box(None), black_box("/github/mcp"))))
    });

    let auth = || {
        state.authority.authenticate(
            &headers,
            None,
            Some(&route.resource),
            &route.resource_metadata,
        )
    };
    auth().expect("token accepted");
    c.bench_function("authenticate_cached", |b| b.iter(|| black_box(auth())));

    // Every iteration presents a token never seen before: signature check,
    // claim parsing and the cache insert. Tokens are issued outside the timing.
    let mut g = c.benchmark_group("authenticate_uncached");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    g.bench_function("eddsa", |b| {
        b.iter_custom(|iters| {
            let tokens: Vec<_> = (0..iters)
                .map(|_| {
                    support::bearer_headers(&rt.block_on(support::token(&state, &id, &secret)))
                })
                .collect();
            let start = Instant::now();
            for h in &tokens {
                black_box(
                    state
                        .authority
                        .authenticate(h, None, Some(&route.resource), &route.resource_metadata)
                        .expect("fresh token accepted"),
                );
            }
            start.elapsed()
        })
    });
    g.finish();

    let mut g = c.benchmark_group("token_issue");
    g.sample_size(20);
    g.bench_function("client_credentials", |b| {
        b.iter(|| black_box(rt.block_on(support::token(&state, &id, &secret))))
    });
    g.finish();

    let limits = RateLimits::new(&RateLimitConfig {
        default: credgate::config::RateLimit {
            per_second: 1_000_000,
            burst: 1_000_000,
        },
        ..Default::default()
    });
    let tenant: Arc<str> = "acme".into();
    c.bench_function("ratelimit_check/1_tenant", |b| {
        b.iter(|| black_box(limits.check(&tenant, "cg-client")))
    });
    let many: Vec<Arc<str>> = (0..100_000).map(|i| format!("t{i}").into()).collect();
    for t in &many {
        let _ = limits.check(t, "cg-client");
    }
    let mut i = 0usize;
    c.bench_function("ratelimit_check/100k_tenants", |b| {
        b.iter(|| {
            i = (i + 7919) % many.len();
            black_box(limits.check(&many[i], "cg-client"))
        })
    });

    let integration: Arc<str> = support::INTEGRATION.into();
    rt.block_on(state.credentials.get(&tenant, &integration))
        .expect("credential");
    c.bench_function("credential_get_hit", |b| {
        b.iter(|| black_box(rt.block_on(state.credentials.get(&tenant, &integration))))
    });

    let cached = rt
        .block_on(state.credentials.get(&tenant, &integration))
        .expect("credential");
    let peer_ip = http::HeaderValue::from_static("127.0.0.1");
    let request_id = HeaderValue::from_static("0123456789abcdef");
    c.bench_function("inject_upstream_parts", |b| {
        b.iter_batched(
            || {
                let (parts, ()) = http::Request::post("http://127.0.0.1:8080/github/mcp")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .header(header::CONTENT_TYPE, "application/json")
                    .header(header::ACCEPT, "application/json, text/event-stream")
                    .header("mcp-protocol-version", "2025-11-25")
                    .body(())
                    .expect("request")
                    .into_parts();
                parts
            },
            |parts| {
                black_box(upstream::upstream_parts(
                    parts,
                    &Forward {
                        route,
                        peer_ip: &peer_ip,
                        peer_trusted: false,
                        proto: "http",
                        request_id: &request_id,
                        credential: (&header::AUTHORIZATION, cached.bearer.clone()),
                    },
                ))
            },
            BatchSize::SmallInput,
        )
    });

    c.bench_function("metrics_finish", |b| {
        b.iter(|| {
            black_box(state.finish(
                &route.integration,
                Instant::now(),
                http::Response::new(credgate::http::empty()),
            ))
        })
    });
}

criterion_group!(benches, hot_path);
criterion_main!(benches);
