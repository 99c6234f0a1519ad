//! The Vault (or OpenBao) store (docs/storage.md): records in KV v2, secrets
//! encrypted by Transit. The only code that talks to Vault.
//!
//! - A record at `path` is `{kv_mount}/data/{path}`; its `metadata` map is the
//!   key's KV v2 `custom_metadata`, written after the data (Vault takes it only
//!   on the metadata endpoint, and keeps one map per key, not per version).
//! - Every write carries the [`Cas`] condition as KV v2 `cas`; Vault's
//!   check-and-set mismatch is [`StoreError::Conflict`].
//! - Soft-deleted, destroyed and missing versions read as `None`; `delete`
//!   removes the key's metadata and every version.
//! - Each keyring is a Transit key (see [`transit`]); batches are one request.
//! - Connect errors, timeouts, 5xx and a sealed Vault are
//!   [`StoreError::Unavailable`]; each request is bounded by `timeout_ms`, and
//!   connect errors and 5xx are retried `max_retries` times with backoff.
//! - Layers, bottom up: [`failure`] (why a call failed, backoff, the mapping
//!   to [`StoreError`]); [`auth`] (token, AppRole, Kubernetes logins, the
//!   token's lease); [`endpoint`] (address, CA, the HTTP clients);
//!   [`client`] (sessions, requests, retries, re-login on 403); [`transit`]
//!   and [`renewal`] (the task that keeps the token alive) on top.

mod auth;
mod client;
mod endpoint;
mod failure;
mod renewal;
mod transit;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use http::Method;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};

use super::{Cas, Plaintext, Record, Store, StoreError};
use crate::config::{VaultAuth, VaultConfig};
use auth::Auth;
use client::Conn;
use failure::Failure;
use transit::Transit;

/// Environment variable holding the token for `auth = "token"`.
pub const ENV_VAULT_TOKEN: &str = "VAULT_TOKEN";

/// Record fields that hold Transit ciphertexts (rewrapped by
/// [`VaultStore::rewrap_tenant`]).
const SECRET_FIELDS: [&str; 2] = ["accessToken", "refreshToken"];

/// Attempts per record when a rewrap races another writer.
const REWRAP_ATTEMPTS: usize = 3;

/// Path segments keep only unreserved characters; ids are validated before
/// they get here, so this is defence in depth.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

fn encode_segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

fn encode_path(path: &str) -> String {
    path.split('/')
        .map(encode_segment)
        .collect::<Vec<_>>()
        .join("/")
}

/// Refuses paths that would break LIST: empty, or with empty segments.
fn validate_path(path: &str) -> Result<(), StoreError> {
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Err(StoreError::Refused(format!("invalid store path {path:?}")));
    }
    Ok(())
}

/// Token logins and renewals since open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthStats {
    pub logins: u64,
    pub renewals: u64,
}

/// The Vault-backed [`Store`].
pub struct VaultStore {
    conn: Arc<Conn>,
    kv: String,
    transit: Transit,
    address: String,
    keep_alive: tokio::task::JoinHandle<()>,
}

impl fmt::Debug for VaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultStore")
            .field("address", &self.address)
            .field("kv", &self.kv)
            .field("auth", &self.conn.auth.name())
            .finish_non_exhaustive()
    }
}

impl Drop for VaultStore {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

impl VaultStore {
    /// Opens the store; with `auth = "token"` the token is `token`
    /// (`VAULT_TOKEN`, from [`crate::secrets::Secrets`]). See
    /// [`VaultStore::open_with_token`].
    pub async fn open(
        config: &VaultConfig,
        token: Option<&SecretString>,
    ) -> Result<Self, StoreError> {
        let token = match config.auth {
            VaultAuth::Token => {
                let token = token.map(|t| t.expose_secret().trim()).unwrap_or_default();
                if token.is_empty() {
                    return Err(StoreError::Refused(format!(
                        "vault auth \"token\" needs {ENV_VAULT_TOKEN}"
                    )));
                }
                SecretString::from(token.to_owned())
            }
            VaultAuth::Approle | VaultAuth::Kubernetes => SecretString::from(String::new()),
        };
        Self::open_with_token(config, token).await
    }

    /// Opens the store with an explicit token (tests, tools); ignored unless
    /// `auth = "token"`.
    ///
    /// A misconfiguration (bad address, missing files, a token or login that
    /// Vault rejects) is an error. An unreachable Vault is not: the store
    /// opens, requests fail with [`StoreError::Unavailable`], and login or
    /// token lookup is retried in the background.
    pub async fn open_with_token(
        config: &VaultConfig,
        token: SecretString,
    ) -> Result<Self, StoreError> {
        let auth = Auth::from_config(config)?;
        let token = if auth.can_login() {
            ""
        } else {
            token.expose_secret()
        };
        if !auth.can_login() && token.is_empty() {
            return Err(StoreError::Refused(
                "vault auth \"token\" needs a token".into(),
            ));
        }
        let conn = Arc::new(Conn::new(config, auth, token)?);
        // Learn the token's TTL (or log in) now, so bad credentials fail fast.
        let first = if conn.auth.can_login() {
            conn.relogin(0).await.map(drop)
        } else {
            renewal::lookup(&conn).await.map(drop)
        };
        if let Err(f) = first {
            match f.into_store_error() {
                StoreError::Unavailable(why) => {
                    tracing::warn!(error = %why, "vault is unavailable at start; will keep trying");
                }
                other => return Err(other),
            }
        }
        let keep_alive = tokio::spawn(renewal::keep_alive(Arc::downgrade(&conn)));
        Ok(VaultStore {
            kv: config.kv_mount.trim_matches('/').to_owned(),
            transit: Transit::new(&config.transit_mount),
            address: config.address.clone(),
            conn,
            keep_alive,
        })
    }

    /// Token logins and renewals so far.
    pub fn auth_stats(&self) -> AuthStats {
        AuthStats {
            logins: self.conn.stats.logins.load(Ordering::Relaxed),
            renewals: self.conn.stats.renewals.load(Ordering::Relaxed),
        }
    }

    fn data_path(&self, path: &str) -> String {
        format!("{}/data/{}", self.kv, encode_path(path))
    }

    fn metadata_path(&self, path: &str) -> String {
        format!("{}/metadata/{}", self.kv, encode_path(path))
    }

    /// Rewraps a tenant's credential records (`{tenant}/{name}`) under the
    /// latest version of its Transit key, after a rotation. Each record is
    /// written back with check-and-set; records already on the latest version
    /// are left alone. Returns how many records were rewritten.
    pub async fn rewrap_tenant_records(&self, tenant: &str) -> Result<usize, StoreError> {
        let Some(key) = self.transit.read_key(&self.conn, tenant).await? else {
            return Ok(0); // no key, so nothing was ever encrypted
        };
        let latest = format!("vault:v{}:", key.latest_version);
        let mut rewritten = 0;
        for name in self.list(tenant).await? {
            if name.ends_with('/') {
                continue;
            }
            let path = format!("{tenant}/{name}");
            if self.rewrap_record(tenant, &path, &latest).await? {
                rewritten += 1;
            }
        }
        tracing::info!(tenant, rewritten, "rewrapped credential records");
        Ok(rewritten)
    }

    async fn rewrap_record(
        &self,
        tenant: &str,
        path: &str,
        latest: &str,
    ) -> Result<bool, StoreError> {
        for _ in 0..REWRAP_ATTEMPTS {
            let Some(record) = self.read(path).await? else {
                return Ok(false);
            };
            let stale: Vec<(&str, &str)> = SECRET_FIELDS
                .iter()
                .filter_map(|f| Some((*f, record.data.get(*f)?.as_str()?)))
                .filter(|(_, ct)| !ct.starts_with(latest))
                .collect();
            if stale.is_empty() {
                return Ok(false);
            }
            let cts: Vec<&str> = stale.iter().map(|(_, ct)| *ct).collect();
            let fresh = self.transit.rewrap(&self.conn, tenant, path, &cts).await?;
            let mut data = record.data.clone();
            for ((field, _), ct) in stale.iter().zip(fresh) {
                data.insert((*field).to_owned(), Value::String(ct));
            }
            match self
                .write(
                    path,
                    data,
                    record.metadata.clone(),
                    Cas::Version(record.version),
                )
                .await
            {
                Ok(_) => return Ok(true),
                Err(StoreError::Conflict) => continue, // re-read: maybe already fresh
                Err(e) => return Err(e),
            }
        }
        Err(StoreError::Conflict)
    }

    /// The version of a key whose current version is deleted or destroyed
    /// (so a `cas` on it may recreate the record), `None` otherwise.
    async fn deleted_version(&self, path: &str) -> Result<Option<u64>, StoreError> {
        match self
            .conn
            .request(Method::GET, &self.data_path(path), None)
            .await
        {
            Ok(_) => Ok(None),
            Err(f) if f.is_not_found() => {
                let Failure::Status { body, .. } = &f else {
                    return Ok(None);
                };
                let meta = &body["data"]["metadata"];
                let gone = meta["destroyed"].as_bool() == Some(true)
                    || meta["deletion_time"]
                        .as_str()
                        .is_some_and(|t| !t.is_empty());
                Ok(meta["version"].as_u64().filter(|_| gone))
            }
            Err(f) => Err(f.into()),
        }
    }

    /// Replaces the key's `custom_metadata` when it differs.
    async fn set_metadata(
        &self,
        path: &str,
        version: u64,
        current: &Value,
        wanted: BTreeMap<String, String>,
    ) -> Result<(), StoreError> {
        let same = match current {
            Value::Object(m) => {
                m.len() == wanted.len()
                    && wanted
                        .iter()
                        .all(|(k, v)| m.get(k).and_then(Value::as_str) == Some(v))
            }
            _ => wanted.is_empty(),
        };
        if same {
            return Ok(());
        }
        let body = json!({ "custom_metadata": wanted });
        self.conn
            .request(Method::POST, &self.metadata_path(path), Some(&body))
            .await
            .map(drop)
            .map_err(|f| match f.into_store_error() {
                // The data is written; say so, so the caller re-reads.
                StoreError::Unavailable(why) => StoreError::Unavailable(format!(
                    "{path} version {version} written but its metadata not: {why}"
                )),
                other => other,
            })
    }
}

fn parse_record(data: &Value) -> Result<Option<Record>, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("vault kv reply: {what}"));
    let fields = match &data["data"] {
        Value::Object(m) => m.clone(),
        Value::Null => return Ok(None),
        _ => return Err(corrupt("data is not an object")),
    };
    let meta = &data["metadata"];
    let version = meta["version"]
        .as_u64()
        .ok_or_else(|| corrupt("no version"))?;
    let metadata = match &meta["custom_metadata"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                Ok((
                    k.clone(),
                    v.as_str().ok_or_else(|| corrupt("metadata"))?.to_owned(),
                ))
            })
            .collect::<Result<BTreeMap<_, _>, StoreError>>()?,
        _ => BTreeMap::new(),
    };
    Ok(Some(Record {
        version,
        data: fields,
        metadata,
        updated_at: meta["created_time"].as_str().unwrap_or_default().to_owned(),
    }))
}

#[async_trait]
impl Store for VaultStore {
    fn backend(&self) -> &'static str {
        "vault"
    }

    async fn rewrap_tenant(&self, tenant: &str) -> Result<usize, StoreError> {
        self.rewrap_tenant_records(tenant).await
    }

    async fn read(&self, path: &str) -> Result<Option<Record>, StoreError> {
        validate_path(path)?;
        match self
            .conn
            .request(Method::GET, &self.data_path(path), None)
            .await
        {
            Ok(reply) => parse_record(reply.data()),
            // Missing (`{"errors":[]}`) or deleted/destroyed (envelope).
            Err(f) if f.is_not_found() => Ok(None),
            Err(f) => Err(f.into()),
        }
    }

    async fn write(
        &self,
        path: &str,
        data: Map<String, Value>,
        metadata: BTreeMap<String, String>,
        cas: Cas,
    ) -> Result<u64, StoreError> {
        validate_path(path)?;
        let absent = matches!(cas, Cas::Absent | Cas::Version(0));
        let mut body = json!({ "data": data });
        let mut cas_version = match cas {
            Cas::Any => None,
            Cas::Absent => Some(0),
            Cas::Version(n) => Some(n),
        };
        let mut retried = false;
        let reply = loop {
            if let Some(n) = cas_version {
                body["options"] = json!({ "cas": n });
            }
            match self
                .conn
                .request(Method::POST, &self.data_path(path), Some(&body))
                .await
            {
                Ok(reply) => break reply,
                Err(f) if f.says("check-and-set parameter did not match") => {
                    // `read` says a soft-deleted record is absent, so `Absent`
                    // may write over it (cas = its current version).
                    if absent
                        && !retried
                        && let Some(v) = self.deleted_version(path).await?
                    {
                        cas_version = Some(v);
                        retried = true;
                        continue;
                    }
                    return Err(StoreError::Conflict);
                }
                Err(f) => return Err(f.into()),
            }
        };
        let written = reply.data();
        let version = written["version"]
            .as_u64()
            .ok_or_else(|| StoreError::Corrupt("vault kv write reply has no version".into()))?;
        self.set_metadata(path, version, &written["custom_metadata"], metadata)
            .await?;
        Ok(version)
    }

    async fn delete(&self, path: &str) -> Result<(), StoreError> {
        validate_path(path)?;
        match self
            .conn
            .request(Method::DELETE, &self.metadata_path(path), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(f) if f.is_not_found() => Ok(()),
            Err(f) => Err(f.into()),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let prefix = prefix.trim_end_matches('/');
        if !prefix.is_empty() {
            validate_path(prefix)?;
        }
        let dir = if prefix.is_empty() {
            format!("{}/metadata/", self.kv)
        } else {
            format!("{}/", self.metadata_path(prefix))
        };
        let reply = match self
            .conn
            .request(Method::GET, &format!("{dir}?list=true"), None)
            .await
        {
            Ok(reply) => reply,
            Err(f) if f.is_not_found() => return Ok(Vec::new()),
            Err(f) => return Err(f.into()),
        };
        let mut keys: Vec<String> = reply.data()["keys"]
            .as_array()
            .ok_or_else(|| StoreError::Corrupt("vault list reply has no keys".into()))?
            .iter()
            .filter_map(|k| k.as_str().map(str::to_owned))
            .collect();
        keys.sort();
        Ok(keys)
    }

    async fn encrypt(
        &self,
        keyring: &str,
        context: &str,
        plaintexts: &[&[u8]],
    ) -> Result<Vec<String>, StoreError> {
        self.transit
            .encrypt(&self.conn, keyring, context, plaintexts)
            .await
    }

    async fn decrypt(
        &self,
        keyring: &str,
        context: &str,
        ciphertexts: &[&str],
    ) -> Result<Vec<Plaintext>, StoreError> {
        self.transit
            .decrypt(&self.conn, keyring, context, ciphertexts)
            .await
    }

    async fn health(&self) -> Result<(), StoreError> {
        let (code, body) = self.conn.health().await.map_err(StoreError::from)?;
        if code == 200 {
            return Ok(());
        }
        let state = match code {
            503 => "sealed",
            501 => "not initialized",
            472 => "a disaster-recovery secondary",
            429 => "a standby",
            _ if body["sealed"].as_bool() == Some(true) => "sealed",
            _ => "unhealthy",
        };
        Err(StoreError::Unavailable(format!(
            "vault is {state} (HTTP {code})"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_validated_and_encoded() {
        for bad in ["", "/a", "a/", "a//b", "a/../b", "."] {
            assert!(validate_path(bad).is_err(), "{bad:?}");
        }
        assert!(validate_path("_credgate/clients/abc").is_ok());
        assert_eq!(encode_path("t1/git hub"), "t1/git%20hub");
        assert_eq!(encode_path("_credgate/a-b.c~d"), "_credgate/a-b.c~d");
        assert_eq!(encode_path("t1/a?b#c"), "t1/a%3Fb%23c");
    }

    #[test]
    fn kv_replies_become_records() {
        let data = json!({
            "data": {"accessToken": "vault:v1:x", "scopes": ["a"]},
            "metadata": {
                "version": 3,
                "created_time": "2026-01-02T03:04:05.123456789Z",
                "deletion_time": "",
                "destroyed": false,
                "custom_metadata": {"createdBy": "admin"}
            }
        });
        let r = parse_record(&data).unwrap().unwrap();
        assert_eq!(r.version, 3);
        assert_eq!(r.updated_at, "2026-01-02T03:04:05.123456789Z");
        assert_eq!(r.metadata["createdBy"], "admin");
        assert_eq!(r.data["scopes"], json!(["a"]));

        let deleted = json!({"data": null, "metadata": {"version": 2}});
        assert_eq!(parse_record(&deleted).unwrap(), None);
        let no_meta = json!({"data": {}, "metadata": {"version": 1, "custom_metadata": null}});
        assert!(parse_record(&no_meta).unwrap().unwrap().metadata.is_empty());
    }
}
