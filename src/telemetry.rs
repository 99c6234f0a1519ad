//! OpenTelemetry traces over OTLP/HTTP (docs/scaling.md).
//!
//! With `[tracing] otlp_endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) set,
//! every proxied request gets a server span continuing the caller's W3C
//! `traceparent`, with child spans for authentication, the credential lookup
//! (cache or store), a refresh and the upstream call; the upstream receives a
//! `traceparent` naming credgate's upstream span. Unset, every helper here is
//! one failed `OnceLock` read: no span, no allocation, no context switch.
//!
//! The tracer is a process-wide `OnceLock` rather than a field of `AppState`
//! because spans are opened in modules that never see the state (the
//! credential cache's refresh), the way `tracing`'s dispatcher is global.
//!
//! Export never blocks a request: ended spans go to the SDK's batch
//! processor (its own thread) through a bounded queue; when the queue is
//! full the span is dropped and counted in
//! `credgate_trace_spans_dropped_total{reason="queue_full"}`, and a batch the
//! collector refuses in `{reason="export_failed"}`. The batches travel on
//! credgate's Tokio runtime through a hyper client, not a second HTTP stack.
//!
//! Attributes name the route, method, status, request id, tenant and client
//! id, never a header value, token, credential or query string.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{FutureExt, SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector, HttpClient, HttpError};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter, SpanProcessor,
};
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};

use crate::error::ProxyError;
use crate::http::Body;
use crate::metrics::Metrics;

/// Ended spans waiting for export; past this they are dropped and counted.
pub const QUEUE_SIZE: usize = 2048;
/// Bound on one export request to the collector.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// A collector's answer is read up to this size.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended unless
    /// already there); `OTEL_EXPORTER_OTLP_ENDPOINT` when unset. Unset:
    /// tracing off.
    pub otlp_endpoint: Option<String>,
    /// Share of new traces recorded; a caller's sampled flag is followed.
    pub sample_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            sample_ratio: 1.0,
        }
    }
}

impl TracingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err("tracing.sample_ratio must be between 0.0 and 1.0".into());
        }
        if let Some(url) = &self.otlp_endpoint
            && (!(url.starts_with("http://") || url.starts_with("https://"))
                || url.parse::<http::Uri>().is_err())
        {
            return Err(format!(
                "tracing.otlp_endpoint `{url}` must be an http(s) URL"
            ));
        }
        Ok(())
    }

    /// The URL spans are posted to.
    fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        })
    }
}

/// The tracer provider; [`Telemetry::shutdown`] flushes what is queued.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Exports the spans still queued (bounded), off the runtime's workers.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(3), flush).await {
            tracing::warn!(error = %e, "trace export at shutdown failed");
        }
    }
}

/// Starts tracing when an endpoint is configured. Call once, inside the
/// Tokio runtime (exports run on it).
pub fn init(config: &TracingConfig, metrics: &Metrics) -> Result<Option<Telemetry>, String> {
    let Some(url) = config.traces_url() else {
        return Ok(None);
    };
    let tls = crate::tls::client_config(None).map_err(|e| e.to_string())?;
    let client = OtlpHttp::new(tls, tokio::runtime::Handle::current());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(client)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url.as_str())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("tracing: {e}"))?;
    let queued = Arc::new(AtomicUsize::new(0));
    let dropped = &metrics.trace_spans_dropped_total;
    let exporter = Counting {
        inner: exporter,
        queued: queued.clone(),
        failed: dropped.with_label_values(&["export_failed"]),
    };
    let batch = BatchSpanProcessor::builder(exporter)
        .with_batch_config(
            BatchConfigBuilder::default()
                .with_max_queue_size(QUEUE_SIZE)
                .build(),
        )
        .build();
    let processor = Bounded {
        inner: batch,
        queued,
        dropped: dropped.with_label_values(&["queue_full"]),
    };
    let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio)));
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler)
        .with_resource(
            Resource::builder()
                .with_service_name("credgate")
                .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
                .build(),
        )
        .build();
    TRACER
        .set(provider.tracer("credgate"))
        .map_err(|_| "tracing initialised twice".to_owned())?;
    tracing::info!(endpoint = %url, sample_ratio = config.sample_ratio, "exporting traces over OTLP/HTTP");
    Ok(Some(Telemetry { provider }))
}

/// Opens the server span of a proxied request, continuing the caller's
/// `traceparent`. None when tracing is off.
pub fn server_span(
    parts: &http::request::Parts,
    route_prefix: &str,
    integration: &str,
    request_id: &HeaderValue,
) -> Option<Context> {
    let tracer = TRACER.get()?;
    let parent = TraceContextPropagator::new().extract(&HeaderExtractor(&parts.headers));
    let method = parts.method.as_str().to_owned();
    let span = tracer
        .span_builder(format!("{method} {route_prefix}"))
        .with_kind(SpanKind::Server)
        .with_attributes([
            KeyValue::new("http.request.method", method),
            KeyValue::new("http.route", route_prefix.to_owned()),
            KeyValue::new("credgate.integration", integration.to_owned()),
            KeyValue::new(
                "credgate.request_id",
                request_id.to_str().unwrap_or("").to_owned(),
            ),
        ])
        .start_with_context(tracer, &parent);
    Some(parent.with_span(span))
}

/// Runs `fut` with `cx` as the current context (boxed: only traced
/// requests pay for the wrapper).
pub fn within<F: Future>(cx: &Context, fut: F) -> Pin<Box<impl Future<Output = F::Output>>> {
    Box::pin(fut.with_context(cx.clone()))
}

/// Ends a request or upstream span with the outcome.
pub fn end(cx: Option<Context>, result: &Result<Response<Body>, ProxyError>) {
    let Some(cx) = cx else { return };
    let span = cx.span();
    match result {
        Ok(resp) => {
            let status = resp.status();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            if status.is_server_error() {
                span.set_status(Status::error(""));
            }
        }
        Err(e) => {
            let (status, code) = e.status_and_code();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status.as_u16()),
            ));
            span.set_attribute(KeyValue::new("error.type", code));
            span.set_status(Status::error(code));
        }
    }
    span.end();
}

/// Names the tenant and client on the current request span.
pub fn record_principal(tenant: &str, client_id: &str) {
    if TRACER.get().is_none() {
        return;
    }
    let cx = Context::current();
    let span = cx.span();
    span.set_attribute(KeyValue::new("credgate.tenant", tenant.to_owned()));
    span.set_attribute(KeyValue::new("credgate.client_id", client_id.to_owned()));
}

/// Sets an attribute on the current span, when tracing.
pub fn attribute(key: &'static str, value: &'static str) {
    if TRACER.get().is_some() {
        Context::current()
            .span()
            .set_attribute(KeyValue::new(key, value));
    }
}

/// A child of the current span; None when off or outside a traced request
/// (background refreshes open no orphan traces).
fn child(name: &'static str, kind: SpanKind) -> Option<Context> {
    let tracer = TRACER.get()?;
    let parent = Context::current();
    if !parent.has_active_span() {
        return None;
    }
    let span = tracer
        .span_builder(name)
        .with_kind(kind)
        .start_with_context(tracer, &parent);
    Some(parent.with_span(span))
}

fn finish<T, E>(cx: Context, result: &Result<T, E>) {
    let span = cx.span();
    if result.is_err() {
        span.set_status(Status::error(""));
    }
    span.end();
}

/// `f` inside a child span named `name`.
pub fn in_sync_span<T, E>(name: &'static str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
    let Some(cx) = child(name, SpanKind::Internal) else {
        return f();
    };
    let result = f();
    finish(cx, &result);
    result
}

/// `fut` inside a child span named `name`, current while it runs.
pub async fn in_span<T, E>(
    name: &'static str,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let Some(cx) = child(name, SpanKind::Internal) else {
        return fut.await;
    };
    let result = fut.with_context(cx.clone()).await;
    finish(cx, &result);
    result
}

/// Opens the client span of an upstream call and writes its `traceparent`
/// (and the caller's `tracestate`) into the upstream request. End it with
/// [`end`].
pub fn upstream_span(headers: &mut HeaderMap) -> Option<Context> {
    let cx = child("upstream", SpanKind::Client)?;
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
    Some(cx)
}

/// Counts spans between `on_end` and export, refusing past [`QUEUE_SIZE`]:
/// the SDK's own queue then never fills, and every drop is counted here.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    dropped: IntCounter,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= QUEUE_SIZE {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, releasing queue slots and counting refused batches.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
    failed: IntCounter,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.queued.fetch_sub(n, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        if result.is_err() {
            self.failed.inc_by(n as u64);
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

type Connector = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// OTLP/HTTP requests on credgate's runtime through hyper. The batch
/// processor's thread awaits the spawned task, so no second runtime or HTTP
/// stack is needed.
#[derive(Debug, Clone)]
struct OtlpHttp {
    client: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
}

impl OtlpHttp {
    fn new(tls: rustls::ClientConfig, runtime: tokio::runtime::Handle) -> Self {
        let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector);
        OtlpHttp { client, runtime }
    }
}

#[async_trait::async_trait]
impl HttpClient for OtlpHttp {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let exchange = async move {
            let resp = client.request(request.map(Full::new)).await?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await?
                .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        // The timer is made inside the task: this thread has no runtime.
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(EXPORT_TIMEOUT, exchange).await });
        match task.await? {
            Ok(result) => result,
            Err(_) => Err("OTLP export timed out".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_and_ratio_are_checked() {
        let mut c = TracingConfig::default();
        c.validate().unwrap();
        assert_eq!(c.traces_url(), None);
        c.otlp_endpoint = Some("http://collector:4318/".into());
        assert_eq!(c.traces_url().unwrap(), "http://collector:4318/v1/traces");
        c.otlp_endpoint = Some("http://collector:4318/v1/traces".into());
        assert_eq!(c.traces_url().unwrap(), "http://collector:4318/v1/traces");
        c.otlp_endpoint = Some("collector:4318".into());
        assert!(c.validate().is_err());
        c.otlp_endpoint = None;
        c.sample_ratio = 1.5;
        assert!(c.validate().is_err());
    }

    #[test]
    fn helpers_do_nothing_when_off() {
        assert!(TRACER.get().is_none());
        assert!(upstream_span(&mut HeaderMap::new()).is_none());
        assert_eq!(in_sync_span("x", || Ok::<_, ()>(1)), Ok(1));
    }
}
