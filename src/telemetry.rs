//! OpenTelemetry traces over OTLP/HTTP (docs/scaling.md).

use serde::{Deserialize, Serialize};

/// `[tracing]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingConfig {
    /// The collector's OTLP/HTTP base URL (`/v1/traces` is appended);
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` when unset. Unset: tracing off.
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
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "tracing.otlp_endpoint `{url}` must be an http(s) URL"
            ));
        }
        Ok(())
    }
}
