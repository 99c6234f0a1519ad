//! The stored credential record (docs/storage.md): its layout, the plain
//! fields the admin API shows, and the reads and check-and-set writes that
//! encrypt and decrypt its tokens. Below both `refresh` and the cache.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::store::{Cas, Record, Store, StoreError};

/// A credential this close to expiry is treated as expired: it could lapse
/// before the upstream sees it.
pub const EXPIRY_SKEW_SECS: i64 = 10;

/// `tokenType` of a stored API key (injected as is, never refreshed).
pub const API_KEY_TYPE: &str = "api_key";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Active,
    ReauthorizationRequired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::ReauthorizationRequired => "reauthorization_required",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "reauthorization_required" => Status::ReauthorizationRequired,
            _ => Status::Active,
        }
    }
}

/// A decrypted upstream credential. `Debug` never shows the secrets.
#[derive(Debug, Clone)]
pub struct Credential {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub expires_at: Option<OffsetDateTime>,
    pub scopes: Vec<String>,
    pub token_type: String,
    pub created_by: String,
    pub auto_refresh: bool,
    pub refresh_count: u64,
    pub status: Status,
}

/// A credential as read from the store, with its version.
#[derive(Debug, Clone)]
pub struct Stored {
    pub credential: Credential,
    pub version: u64,
    pub updated_at: String,
}

/// Store path of a credential; both ids must be validated already.
pub fn record_path(tenant: &str, integration: &str) -> String {
    format!("{tenant}/{integration}")
}

/// Whether a credential expiring at `expires_at` may still be injected at `now`.
pub fn usable_at(expires_at: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    expires_at.is_none_or(|e| (e - now).whole_seconds() > EXPIRY_SKEW_SECS)
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A credential record's fields that are not secret: what the admin API
/// shows, readable without decrypting anything.
#[derive(Debug, Clone)]
pub struct Summary {
    pub expires_at: Option<OffsetDateTime>,
    pub scopes: Vec<String>,
    pub token_type: String,
    pub created_by: String,
    pub auto_refresh: bool,
    pub refresh_count: u64,
    pub status: Status,
    pub has_refresh_token: bool,
    pub version: u64,
    pub updated_at: String,
}

impl Summary {
    /// Parses the plain fields of a stored record (docs/storage.md).
    fn from_record(record: &Record, path: &str) -> Result<Self, StoreError> {
        let text = |k: &str| record.data.get(k).and_then(Value::as_str);
        let meta = |k: &str| record.metadata.get(k).map(String::as_str);
        let expires_at = match text("expiresAt") {
            Some(s) => Some(
                OffsetDateTime::parse(s, &Rfc3339)
                    .map_err(|_| StoreError::Corrupt(format!("{path}: expiresAt")))?,
            ),
            None => None,
        };
        Ok(Summary {
            expires_at,
            scopes: record
                .data
                .get("scopes")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
            token_type: text("tokenType").unwrap_or("Bearer").to_owned(),
            created_by: meta("createdBy").unwrap_or("").to_owned(),
            auto_refresh: meta("autoRefresh") == Some("true"),
            refresh_count: meta("refreshCount")
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            status: Status::parse(meta("status").unwrap_or("active")),
            has_refresh_token: text("refreshToken").is_some(),
            version: record.version,
            updated_at: record.updated_at.clone(),
        })
    }

    /// The summary of a credential about to be (or just) written.
    pub fn of(c: &Credential, version: u64, updated_at: String) -> Self {
        Summary {
            expires_at: c.expires_at,
            scopes: c.scopes.clone(),
            token_type: c.token_type.clone(),
            created_by: c.created_by.clone(),
            auto_refresh: c.auto_refresh,
            refresh_count: c.refresh_count,
            status: c.status,
            has_refresh_token: c.refresh_token.is_some(),
            version,
            updated_at,
        }
    }

    /// Metadata for `GET /api/admin/credentials/…` — never a secret.
    pub fn to_json(&self, tenant: &str, integration: &str, now: OffsetDateTime) -> Value {
        let status = match self.status {
            Status::Active if !usable_at(self.expires_at, now) => "expired",
            other => other.as_str(),
        };
        json!({
            "tenant": tenant,
            "integration": integration,
            "expiresAt": self.expires_at.map(rfc3339),
            "scopes": self.scopes,
            "tokenType": self.token_type,
            "version": self.version,
            "refreshCount": self.refresh_count,
            "updatedAt": self.updated_at,
            "autoRefresh": self.auto_refresh,
            "hasRefreshToken": self.has_refresh_token,
            "status": status,
        })
    }
}

/// Reads a credential's plain fields only: one store read, no decryption.
pub async fn load_summary(
    store: &dyn Store,
    tenant: &str,
    integration: &str,
) -> Result<Option<Summary>, StoreError> {
    let path = record_path(tenant, integration);
    match store.read(&path).await? {
        Some(record) => Summary::from_record(&record, &path).map(Some),
        None => Ok(None),
    }
}

/// Reads and decrypts one credential (one store read, one batch decrypt).
pub async fn load(
    store: &dyn Store,
    tenant: &str,
    integration: &str,
) -> Result<Option<Stored>, StoreError> {
    let path = record_path(tenant, integration);
    let Some(record) = store.read(&path).await? else {
        return Ok(None);
    };
    let summary = Summary::from_record(&record, &path)?;
    let corrupt = |what: &str| StoreError::Corrupt(format!("{path}: {what}"));
    let text = |k: &str| record.data.get(k).and_then(Value::as_str);
    let access = text("accessToken").ok_or_else(|| corrupt("no accessToken"))?;
    let mut ciphertexts = vec![access];
    if let Some(r) = text("refreshToken") {
        ciphertexts.push(r);
    }
    let mut plain = store
        .decrypt(tenant, &path, &ciphertexts)
        .await?
        .into_iter()
        .map(|p| String::from_utf8(p.to_vec()).map(SecretString::from))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| corrupt("token is not UTF-8"))?;
    let refresh_token = (plain.len() > 1).then(|| plain.remove(1));
    let access_token = plain.remove(0);
    let credential = Credential {
        access_token,
        refresh_token,
        expires_at: summary.expires_at,
        scopes: summary.scopes,
        token_type: summary.token_type,
        created_by: summary.created_by,
        auto_refresh: summary.auto_refresh,
        refresh_count: summary.refresh_count,
        status: summary.status,
    };
    Ok(Some(Stored {
        credential,
        version: summary.version,
        updated_at: summary.updated_at,
    }))
}

/// Encrypts and writes a credential with check-and-set; returns the version.
pub async fn save(
    store: &dyn Store,
    tenant: &str,
    integration: &str,
    c: &Credential,
    cas: Cas,
) -> Result<u64, StoreError> {
    let path = record_path(tenant, integration);
    let mut secrets: Vec<&[u8]> = vec![c.access_token.expose_secret().as_bytes()];
    if let Some(r) = &c.refresh_token {
        secrets.push(r.expose_secret().as_bytes());
    }
    let mut ct = store.encrypt(tenant, &path, &secrets).await?;
    if ct.len() != secrets.len() {
        return Err(StoreError::Corrupt("encrypt returned a short batch".into()));
    }
    let mut data = Map::new();
    if ct.len() > 1 {
        data.insert("refreshToken".into(), Value::String(ct.remove(1)));
    }
    data.insert("accessToken".into(), Value::String(ct.remove(0)));
    if let Some(e) = c.expires_at {
        data.insert("expiresAt".into(), Value::String(rfc3339(e)));
    }
    data.insert("scopes".into(), json!(c.scopes));
    data.insert("tokenType".into(), Value::String(c.token_type.clone()));
    data.insert("integration".into(), Value::String(integration.to_owned()));
    let metadata = BTreeMap::from([
        ("createdBy".to_owned(), c.created_by.clone()),
        ("integration".to_owned(), integration.to_owned()),
        ("autoRefresh".to_owned(), c.auto_refresh.to_string()),
        ("refreshCount".to_owned(), c.refresh_count.to_string()),
        ("status".to_owned(), c.status.as_str().to_owned()),
    ]);
    store.write(&path, data, metadata, cas).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn expiry_math_uses_skew() {
        let now = datetime!(2026-01-01 0:00 UTC);
        assert!(usable_at(None, now));
        assert!(usable_at(Some(now + time::Duration::seconds(60)), now));
        assert!(!usable_at(
            Some(now + time::Duration::seconds(EXPIRY_SKEW_SECS)),
            now
        ));
        assert!(!usable_at(Some(now - time::Duration::seconds(1)), now));
    }
}
