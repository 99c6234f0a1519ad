//! Prometheus metric families (SPEC §10), registered once at start-up.
//!
//! Labels are bounded: route names come from config, results and reasons
//! from fixed enums. Tenants appear only with `metrics.tenant_label = true`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Buckets for request latencies: sub-millisecond up to a minute (streams).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

pub struct Metrics {
    registry: Registry,
    /// `route`, `status`.
    pub http_requests_total: IntCounterVec,
    /// `route`.
    pub http_request_duration_seconds: HistogramVec,
    /// `route`.
    pub upstream_request_duration_seconds: HistogramVec,
    /// `result`: `issued`, `denied`.
    pub tokens_issued_total: IntCounterVec,
    /// `reason`: see [`crate::error::AuthFailure::as_str`] and client auth failures.
    pub auth_failures_total: IntCounterVec,
    /// `result`: `hit`, `miss`, `stale`.
    pub credential_cache_requests_total: IntCounterVec,
    /// `integration`, `trigger`, `result`.
    pub credential_refresh_total: IntCounterVec,
    /// `integration`: refreshed pairs the store did not take at once.
    pub credential_persist_failures_total: IntCounterVec,
    pub rate_limited_total: IntCounter,
    /// `backend`, `op`, `result`.
    pub store_requests_total: IntCounterVec,
    /// `backend`, `op`.
    pub store_request_duration_seconds: HistogramVec,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                labels,
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let rate_limited_total = IntCounter::new(
            "credgate_rate_limited_total",
            "Requests refused by a rate limit",
        )
        .expect("valid metric");
        registry
            .register(Box::new(rate_limited_total.clone()))
            .expect("unique metric");
        Metrics {
            http_requests_total: counter(
                "credgate_http_requests_total",
                "HTTP requests answered, by route and status",
                &["route", "status"],
            ),
            http_request_duration_seconds: histogram(
                "credgate_http_request_duration_seconds",
                "Time to response headers, by route",
                &["route"],
            ),
            upstream_request_duration_seconds: histogram(
                "credgate_upstream_request_duration_seconds",
                "Upstream time to response headers, by route",
                &["route"],
            ),
            tokens_issued_total: counter(
                "credgate_tokens_issued_total",
                "Access tokens issued or denied at /oauth/token",
                &["result"],
            ),
            auth_failures_total: counter(
                "credgate_auth_failures_total",
                "Failed authentications, by reason",
                &["reason"],
            ),
            credential_cache_requests_total: counter(
                "credgate_credential_cache_requests_total",
                "Upstream credential lookups, by cache result",
                &["result"],
            ),
            credential_refresh_total: counter(
                "credgate_credential_refresh_total",
                "Upstream credential refreshes",
                &["integration", "trigger", "result"],
            ),
            credential_persist_failures_total: counter(
                "credgate_credential_persist_failures_total",
                "Refreshed credentials the store did not take at once (kept in memory, retried)",
                &["integration"],
            ),
            rate_limited_total,
            store_requests_total: counter(
                "credgate_store_requests_total",
                "Store operations, by backend, operation and result",
                &["backend", "op", "result"],
            ),
            store_request_duration_seconds: histogram(
                "credgate_store_request_duration_seconds",
                "Store operation latency",
                &["backend", "op"],
            ),
            registry,
        }
    }

    /// Creates the label sets known at start-up, so every family is present
    /// (at zero) from the first scrape rather than after its first event.
    pub fn preregister<'a>(&self, routes: impl IntoIterator<Item = &'a str> + Clone) {
        for route in routes.clone().into_iter().chain(["oauth", "admin", "none"]) {
            self.http_request_duration_seconds
                .with_label_values(&[route]);
        }
        for route in routes {
            self.upstream_request_duration_seconds
                .with_label_values(&[route]);
        }
        for result in ["issued", "denied"] {
            self.tokens_issued_total.with_label_values(&[result]);
        }
        for reason in crate::error::AuthFailure::ALL {
            self.auth_failures_total
                .with_label_values(&[reason.as_str()]);
        }
        for result in ["hit", "miss", "stale"] {
            self.credential_cache_requests_total
                .with_label_values(&[result]);
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_with_spec_names() {
        let m = Metrics::new();
        m.http_requests_total
            .with_label_values(&["github", "200"])
            .inc();
        m.tokens_issued_total.with_label_values(&["issued"]).inc();
        m.rate_limited_total.inc();
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(r#"credgate_http_requests_total{route="github",status="200"} 1"#));
        assert!(text.contains(r#"credgate_tokens_issued_total{result="issued"} 1"#));
        assert!(text.contains("credgate_rate_limited_total 1"));
    }
}
