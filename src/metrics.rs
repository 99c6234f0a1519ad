//! Prometheus metric families (docs/metrics.md), registered once at start-up.
//!
//! Labels are bounded: route names come from config, results and reasons
//! from fixed enums. Tenants appear only with `metrics.tenant_label = true`.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Buckets for request latencies: sub-millisecond up to a minute (streams).
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

pub struct Metrics {
    registry: Registry,
    /// `metrics.tenant_label`: the three families below carry `tenant`.
    tenant_label: bool,
    /// `route`, `status` (and `tenant` with `metrics.tenant_label`).
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
    /// `integration`, `trigger`, `result` (and `tenant` with `metrics.tenant_label`).
    pub credential_refresh_total: IntCounterVec,
    /// `integration`: refreshed pairs the store did not take at once.
    pub credential_persist_failures_total: IntCounterVec,
    /// Registered without `metrics.tenant_label` only.
    pub rate_limited_total: IntCounter,
    /// `tenant`; registered (as `credgate_rate_limited_total`) with `metrics.tenant_label` only.
    rate_limited_by_tenant: Option<IntCounterVec>,
    /// `backend`, `op`, `result`.
    pub store_requests_total: IntCounterVec,
    /// `route`, `method` (a fixed set), `result`: JSON-RPC messages judged.
    pub mcp_requests_total: IntCounterVec,
    /// `backend`, `op`.
    pub store_request_duration_seconds: HistogramVec,
    /// Rate-limit checks the shared backend could not answer (docs/scaling.md).
    pub rate_limit_backend_errors_total: IntCounter,
    /// `reason`: `queue_full`, `export_failed` (docs/scaling.md).
    pub trace_spans_dropped_total: IntCounterVec,
}

impl Metrics {
    /// Families without a `tenant` label.
    pub fn new() -> Self {
        Self::with_tenant_label(false)
    }

    /// With `tenant_label`, `credgate_http_requests_total`,
    /// `credgate_rate_limited_total` and `credgate_credential_refresh_total`
    /// carry a `tenant` label (`metrics.tenant_label`; see docs/metrics.md).
    pub fn with_tenant_label(tenant_label: bool) -> Self {
        let registry = Registry::new();
        let with_tenant = |labels: &'static [&'static str], extended: &'static [&'static str]| {
            if tenant_label { extended } else { labels }
        };
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
        const RATE_LIMITED: &str = "credgate_rate_limited_total";
        const RATE_LIMITED_HELP: &str = "Requests refused by a rate limit";
        let rate_limited_total =
            IntCounter::new(RATE_LIMITED, RATE_LIMITED_HELP).expect("valid metric");
        let rate_limited_by_tenant = if tenant_label {
            Some(counter(RATE_LIMITED, RATE_LIMITED_HELP, &["tenant"]))
        } else {
            registry
                .register(Box::new(rate_limited_total.clone()))
                .expect("unique metric");
            None
        };
        let rate_limit_backend_errors_total = IntCounter::new(
            "credgate_rate_limit_backend_errors_total",
            "Rate-limit checks the shared backend could not answer",
        )
        .expect("valid metric");
        registry
            .register(Box::new(rate_limit_backend_errors_total.clone()))
            .expect("unique metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "credgate_build_info",
                "Always 1; the running version in `version`",
            ),
            &["version"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry
            .register(Box::new(build_info))
            .expect("unique metric");
        Metrics {
            rate_limit_backend_errors_total,
            trace_spans_dropped_total: counter(
                "credgate_trace_spans_dropped_total",
                "Trace spans not exported: export queue full, or export failed",
                &["reason"],
            ),
            http_requests_total: counter(
                "credgate_http_requests_total",
                "HTTP requests answered, by route and status",
                with_tenant(&["route", "status"], &["route", "status", "tenant"]),
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
                with_tenant(
                    &["integration", "trigger", "result"],
                    &["integration", "trigger", "result", "tenant"],
                ),
            ),
            credential_persist_failures_total: counter(
                "credgate_credential_persist_failures_total",
                "Refreshed credentials the store did not take at once (kept in memory, retried)",
                &["integration"],
            ),
            rate_limited_total,
            rate_limited_by_tenant,
            store_requests_total: counter(
                "credgate_store_requests_total",
                "Store operations, by backend, operation and result",
                &["backend", "op", "result"],
            ),
            mcp_requests_total: counter(
                "credgate_mcp_requests_total",
                "JSON-RPC messages judged by the MCP policy, by route, method and result",
                &["route", "method", "result"],
            ),
            store_request_duration_seconds: histogram(
                "credgate_store_request_duration_seconds",
                "Store operation latency",
                &["backend", "op"],
            ),
            registry,
            tenant_label,
        }
    }

    /// Whether the tenant families carry `tenant` (callers skip finding the
    /// tenant when not).
    pub fn tenant_label(&self) -> bool {
        self.tenant_label
    }

    /// One answered request; `tenant` counts only with `metrics.tenant_label`.
    pub fn count_request(&self, route: &str, status: &str, tenant: Option<&str>) {
        if self.tenant_label {
            self.http_requests_total
                .with_label_values(&[route, status, tenant.unwrap_or("")])
                .inc();
        } else {
            self.http_requests_total
                .with_label_values(&[route, status])
                .inc();
        }
    }

    /// One request refused by a rate limit.
    pub fn count_rate_limited(&self, tenant: &str) {
        match &self.rate_limited_by_tenant {
            Some(v) => v.with_label_values(&[tenant]).inc(),
            None => self.rate_limited_total.inc(),
        }
    }

    /// One credential refresh (`tenant` is empty for integration-wide tokens).
    pub fn count_refresh(&self, integration: &str, trigger: &str, result: &str, tenant: &str) {
        if self.tenant_label {
            self.credential_refresh_total
                .with_label_values(&[integration, trigger, result, tenant])
                .inc();
        } else {
            self.credential_refresh_total
                .with_label_values(&[integration, trigger, result])
                .inc();
        }
    }

    /// Creates the label sets known at start-up, so every family is present
    /// (at zero) from the first scrape rather than after its first event.
    pub fn preregister<'a>(&self, routes: impl IntoIterator<Item = &'a str> + Clone) {
        for route in routes
            .clone()
            .into_iter()
            .chain(["oauth", "admin", "none", "connect"])
        {
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
        let client_auth = ["invalid_client", "throttled"];
        for reason in crate::error::AuthFailure::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(client_auth)
        {
            self.auth_failures_total.with_label_values(&[reason]);
        }
        for result in ["hit", "miss", "stale"] {
            self.credential_cache_requests_total
                .with_label_values(&[result]);
        }
        for reason in ["queue_full", "export_failed"] {
            self.trace_spans_dropped_total.with_label_values(&[reason]);
        }
    }

    /// Refresh outcomes of the integrations known at start-up (bounded: the
    /// triggers and results are fixed lists, see docs/metrics.md).
    /// Not with `metrics.tenant_label`: the tenants are not known ahead.
    pub fn preregister_refresh<'a>(&self, integrations: impl IntoIterator<Item = &'a str>) {
        if self.tenant_label {
            return;
        }
        for integration in integrations {
            for trigger in ["upstream_401", "expired", "scheduled", "admin"] {
                for result in ["success", "error", "reauthorization_required"] {
                    self.credential_refresh_total.with_label_values(&[
                        integration,
                        trigger,
                        result,
                    ]);
                }
            }
        }
    }

    /// Store operations of the configured backend.
    pub fn preregister_store(&self, backend: &str) {
        let ops = [
            "read", "write", "delete", "list", "encrypt", "decrypt", "health", "rewrap",
        ];
        for op in ops {
            self.store_request_duration_seconds
                .with_label_values(&[backend, op]);
            for result in ["ok", "conflict", "unavailable", "error"] {
                self.store_requests_total
                    .with_label_values(&[backend, op, result]);
            }
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
        assert!(!text.contains("tenant="));
        let build = format!(
            "credgate_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
    }

    #[test]
    fn bounded_label_values_exist_before_first_use() {
        let m = Metrics::new();
        m.preregister(["github"]);
        m.preregister_refresh(["github"]);
        m.preregister_store("embedded");
        let text = String::from_utf8(m.render()).unwrap();
        for want in [
            r#"credgate_credential_refresh_total{integration="github",result="success",trigger="scheduled"} 0"#,
            r#"credgate_store_requests_total{backend="embedded",op="write",result="conflict"} 0"#,
            r#"credgate_auth_failures_total{reason="throttled"} 0"#,
            r#"credgate_tokens_issued_total{result="denied"} 0"#,
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }

    #[test]
    fn tenant_label_adds_tenant_to_three_families() {
        let m = Metrics::with_tenant_label(true);
        m.count_request("github", "200", Some("t1"));
        m.count_rate_limited("t1");
        m.count_refresh("github", "scheduled", "success", "t1");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains(
            r#"credgate_http_requests_total{route="github",status="200",tenant="t1"} 1"#
        ));
        assert!(text.contains(r#"credgate_rate_limited_total{tenant="t1"} 1"#));
        assert!(text.contains(r#"credgate_credential_refresh_total{integration="github",result="success",tenant="t1",trigger="scheduled"} 1"#));
        let off = Metrics::new();
        off.count_request("github", "200", Some("t1"));
        off.count_rate_limited("t1");
        off.count_refresh("github", "scheduled", "success", "t1");
        let text = String::from_utf8(off.render()).unwrap();
        assert!(!text.contains("tenant="), "{text}");
    }
}
