//! Why a Vault call failed, whether it is worth another try (and after how
//! long), and how it becomes a [`StoreError`]. Shared by the connection,
//! the login methods, Transit and the renewal task; depends on none of them.

use std::time::Duration;

use serde_json::Value;
use vaultrs::error::ClientError;

use crate::store::StoreError;

/// First retry delay; doubles per attempt.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest delay between two retries.
const RETRY_CAP: Duration = Duration::from_secs(2);

/// What KV v2 answers (HTTP 400) while it upgrades a mount's storage, e.g.
/// right after the mount is created or Vault is unsealed: a pause, not an
/// error of ours.
const KV_UPGRADING: &str = "Upgrading from non-versioned to versioned data";

/// Why a Vault call failed, before it becomes a [`StoreError`].
#[derive(Debug, Clone)]
pub(super) enum Failure {
    /// No HTTP reply: refused, reset, TLS failure, timeout.
    Transport {
        connect: bool,
        timeout: bool,
        detail: String,
    },
    /// A reply outside 2xx. `errors` is Vault's `errors` array (empty when
    /// the body had none, e.g. a deleted KV version or a Transit batch).
    Status {
        code: u16,
        errors: Vec<String>,
        body: Value,
    },
    /// A 2xx reply that is not what Vault sends.
    Malformed(String),
    /// A local problem: unreadable credential files, bad settings.
    Local(String),
}

impl Failure {
    /// Connect errors and 5xx are worth another try; timeouts are not (the
    /// caller already waited the whole budget).
    pub(super) fn retriable(&self) -> bool {
        match self {
            Failure::Transport {
                connect, timeout, ..
            } => *connect && !*timeout,
            Failure::Status { code, .. } => *code >= 500 || self.says(KV_UPGRADING),
            Failure::Malformed(_) | Failure::Local(_) => false,
        }
    }

    pub(super) fn code(&self) -> Option<u16> {
        match self {
            Failure::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Vault's error text, without the multierror decoration.
    pub(super) fn message(&self) -> String {
        match self {
            Failure::Status { code, errors, .. } => {
                let text: Vec<&str> = errors
                    .iter()
                    .map(|e| {
                        e.trim()
                            .trim_start_matches("1 error occurred:")
                            .trim()
                            .trim_start_matches("* ")
                    })
                    .filter(|e| !e.is_empty())
                    .collect();
                if text.is_empty() {
                    format!("HTTP {code}")
                } else {
                    format!("HTTP {code}: {}", text.join("; "))
                }
            }
            Failure::Transport { detail, .. } => detail.clone(),
            Failure::Malformed(m) | Failure::Local(m) => m.clone(),
        }
    }

    /// Whether Vault's error text contains `needle`.
    pub(super) fn says(&self, needle: &str) -> bool {
        matches!(self, Failure::Status { errors, .. } if errors.iter().any(|e| e.contains(needle)))
    }

    /// A 404 that means "no such record" (`{"errors":[]}` or a full envelope
    /// without `errors`), as opposed to "no such mount or route".
    pub(super) fn is_not_found(&self) -> bool {
        matches!(self, Failure::Status { code: 404, errors, .. } if errors.is_empty())
    }

    pub(super) fn from_reqwest(e: &reqwest::Error, timeout_ms: u64) -> Self {
        let timeout = e.is_timeout();
        let detail = if timeout {
            format!("vault did not answer within {timeout_ms} ms")
        } else {
            format!("cannot reach vault: {}", error_chain(e))
        };
        Failure::Transport {
            connect: e.is_connect(),
            timeout,
            detail,
        }
    }

    pub(super) fn from_vaultrs(e: ClientError, timeout_ms: u64) -> Self {
        match e {
            ClientError::APIError { code, errors } => Failure::Status {
                code,
                errors,
                body: Value::Null,
            },
            ClientError::RestClientError { source } => match source {
                rustify::errors::ClientError::ServerResponseError { code, content } => {
                    let body = content
                        .as_deref()
                        .and_then(|c| serde_json::from_str(c).ok())
                        .unwrap_or(Value::Null);
                    Failure::Status {
                        code,
                        errors: Vec::new(),
                        body,
                    }
                }
                rustify::errors::ClientError::RequestError { source, .. } => {
                    match source.downcast_ref::<reqwest::Error>() {
                        Some(e) => Failure::from_reqwest(e, timeout_ms),
                        None => Failure::Transport {
                            connect: false,
                            timeout: false,
                            detail: format!("cannot reach vault: {source:#}"),
                        },
                    }
                }
                other => Failure::Malformed(format!("unexpected reply from vault: {other}")),
            },
            ClientError::FileReadError { path, .. }
            | ClientError::FileNotFoundError { path }
            | ClientError::ParseCertificateError { path, .. } => {
                Failure::Local(format!("cannot use CA certificate {path}"))
            }
            other => Failure::Malformed(format!("unexpected reply from vault: {other}")),
        }
    }

    /// The default mapping; operations map their expected statuses first.
    pub(super) fn into_store_error(self) -> StoreError {
        match &self {
            Failure::Transport { .. } => StoreError::Unavailable(self.message()),
            Failure::Status { code: 503, .. } if self.says("sealed") => {
                StoreError::Unavailable("vault is sealed".into())
            }
            Failure::Status { code, .. }
                if *code >= 500 || *code == 429 || *code == 412 || self.says(KV_UPGRADING) =>
            {
                StoreError::Unavailable(format!("vault: {}", self.message()))
            }
            Failure::Status { code: 403, .. } => {
                StoreError::Refused(format!("vault permission denied: {}", self.message()))
            }
            Failure::Status { .. } => StoreError::Refused(format!("vault: {}", self.message())),
            Failure::Malformed(m) => StoreError::Corrupt(m.clone()),
            Failure::Local(m) => StoreError::Refused(m.clone()),
        }
    }
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> Self {
        f.into_store_error()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Delay before retry number `attempt` (0-based): exponential, capped, with
/// up to 25% jitter so replicas do not retry in step.
pub(super) fn backoff(attempt: u32, jitter_seed: u32) -> Duration {
    let base = RETRY_BASE
        .saturating_mul(1 << attempt.min(16))
        .min(RETRY_CAP);
    let jitter = base / 4 * (jitter_seed % 1000) / 1000;
    base + jitter
}

pub(super) fn jitter_seed() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_then_caps_with_bounded_jitter() {
        assert_eq!(backoff(0, 0), Duration::from_millis(100));
        assert_eq!(backoff(1, 0), Duration::from_millis(200));
        assert_eq!(backoff(2, 0), Duration::from_millis(400));
        assert_eq!(backoff(10, 0), RETRY_CAP);
        assert_eq!(backoff(40, 0), RETRY_CAP);
        assert!(backoff(0, 999) < Duration::from_millis(125));
    }

    #[test]
    fn only_connect_errors_and_5xx_are_retried() {
        let status = |code| Failure::Status {
            code,
            errors: vec![],
            body: Value::Null,
        };
        let transport = |connect, timeout| Failure::Transport {
            connect,
            timeout,
            detail: String::new(),
        };
        assert!(transport(true, false).retriable());
        assert!(!transport(true, true).retriable());
        assert!(!transport(false, true).retriable());
        assert!(status(500).retriable());
        assert!(status(503).retriable());
        for code in [400, 403, 404, 412, 429] {
            assert!(!status(code).retriable(), "{code}");
        }
        let upgrading = Failure::Status {
            code: 400,
            errors: vec![format!(
                "{KV_UPGRADING}. This backend will be unavailable for a brief period and will resume service shortly."
            )],
            body: Value::Null,
        };
        assert!(upgrading.retriable());
        assert!(matches!(
            upgrading.into_store_error(),
            StoreError::Unavailable(_)
        ));
    }

    #[test]
    fn failures_map_to_store_errors() {
        let status = |code, e: &str| Failure::Status {
            code,
            errors: vec![e.to_owned()],
            body: Value::Null,
        };
        assert!(matches!(
            status(503, "Vault is sealed").into_store_error(),
            StoreError::Unavailable(m) if m == "vault is sealed"
        ));
        assert!(matches!(
            status(500, "internal").into_store_error(),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            status(403, "1 error occurred:\n\t* permission denied\n\n").into_store_error(),
            StoreError::Refused(m) if m == "vault permission denied: HTTP 403: permission denied"
        ));
        assert!(matches!(
            status(400, "bad").into_store_error(),
            StoreError::Refused(_)
        ));
        assert!(status(404, "x").code() == Some(404));
        assert!(!status(404, "no handler for route").is_not_found());
        assert!(
            Failure::Status {
                code: 404,
                errors: vec![],
                body: Value::Null
            }
            .is_not_found()
        );
    }
}
