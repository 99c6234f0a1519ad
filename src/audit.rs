//! The audit log: one JSON line per security-relevant event (docs/metrics.md).
//!
//! Secret-free by construction: an event carries only identifiers, outcomes
//! and reasons chosen by the caller from bounded vocabularies — there is no
//! field a token or secret could be put in by accident.

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// What happened.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditKind {
    TokenIssued,
    TokenDenied,
    TokenRevoked,
    ClientCreated,
    ClientUpdated,
    ClientDeleted,
    ClientSecretRotated,
    StaticKeyIssued,
    SigningKeyRotated,
    CredentialStored,
    CredentialDeleted,
    /// A credential obtained through the connect flow (docs/connect.md).
    CredentialConnected,
    /// The provider did not confirm a disconnect's RFC 7009 revocation.
    RevocationFailed,
    RefreshSuccess,
    RefreshRetry,
    RefreshFailed,
    /// A refreshed pair the store did not take; kept in memory and retried.
    RefreshPersistFailed,
    AdminAuthFailed,
    /// A JSON-RPC request refused by the MCP policy (docs/policy.md).
    McpCallRefused,
}

/// One audit line. Every field is an identifier or a fixed word.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AuditEvent<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub integration: Option<&'a str>,
    /// Who acted: `admin-token`, a client id, `scheduler`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// A fixed reason word (`invalid_client`, `invalid_grant`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<&'a str>,
    /// Token id (`jti`), never the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<&'a str>,
    /// The MCP tool a refused call named (at most 128 characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool: Option<&'a str>,
}

enum Sink {
    Stdout,
    File(Mutex<std::fs::File>),
    Discard,
}

pub struct Audit {
    sink: Sink,
}

impl Audit {
    /// `-` writes to stdout, anything else appends to that file (created
    /// with mode 0600; an existing file keeps its mode).
    pub fn open(path: &str) -> std::io::Result<Self> {
        let sink = if path == "-" {
            Sink::Stdout
        } else {
            if let Some(dir) = std::path::Path::new(path).parent() {
                std::fs::create_dir_all(dir)?;
            }
            // Owner-only: the log names clients, tenants and addresses.
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)?;
            Sink::File(Mutex::new(file))
        };
        Ok(Audit { sink })
    }

    /// An audit log that drops everything (unit tests).
    pub fn discard() -> Self {
        Audit {
            sink: Sink::Discard,
        }
    }

    pub fn record(&self, kind: AuditKind, event: AuditEvent<'_>) {
        #[derive(Serialize)]
        struct Line<'a> {
            ts: String,
            event: AuditKind,
            #[serde(flatten)]
            fields: AuditEvent<'a>,
        }
        let ts = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        let mut line = match serde_json::to_vec(&Line {
            ts,
            event: kind,
            fields: event,
        }) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        let result = match &self.sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&line),
            Sink::File(f) => f
                .lock()
                .map_err(|_| std::io::Error::other("audit lock poisoned"))
                .and_then(|mut f| f.write_all(&line)),
            Sink::Discard => Ok(()),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot write audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_audit_file_is_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/audit.log");
        let audit = Audit::open(path.to_str().unwrap()).unwrap();
        audit.record(AuditKind::AdminAuthFailed, AuditEvent::default());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}
