//! Transit: one key per keyring (a tenant id, or `_credgate`), and batch
//! encrypt, decrypt and rewrap, one round trip per batch.
//!
//! Keys credgate creates are derived: the context (base64 of the record
//! path) feeds the key derivation, so a ciphertext moved to another path does
//! not decrypt. A key that already exists non-derived is used without context.
//! Whether a key is derived is read once and cached.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use http::Method;
use serde_json::{Map, Value, json};
use vaultrs::api::transit::requests::CreateKeyRequest;
use zeroize::{Zeroize, Zeroizing};

use super::client::Conn;
use super::encode_segment;
use super::failure::Failure;
use crate::store::{Plaintext, StoreError};

/// What credgate needs to know about a Transit key.
#[derive(Debug, Clone, Copy)]
pub(super) struct KeyInfo {
    pub(super) derived: bool,
    pub(super) latest_version: u64,
}

pub(super) struct Transit {
    mount: String,
    /// keyring → derived.
    derived: Mutex<HashMap<String, bool>>,
}

impl Transit {
    pub(super) fn new(mount: &str) -> Self {
        Transit {
            mount: mount.trim_matches('/').to_owned(),
            derived: Mutex::new(HashMap::new()),
        }
    }

    fn path(&self, op: &str, keyring: &str) -> String {
        format!("{}/{op}/{}", self.mount, encode_segment(keyring))
    }

    fn cached(&self, keyring: &str) -> Option<bool> {
        self.derived
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(keyring)
            .copied()
    }

    fn remember(&self, keyring: &str, derived: bool) {
        self.derived
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(keyring.to_owned(), derived);
    }

    /// Drops the cached mode, e.g. after the key was replaced behind our back.
    fn forget(&self, keyring: &str) {
        self.derived
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(keyring);
    }

    /// `GET transit/keys/:name`; `None` if there is no such key.
    pub(super) async fn read_key(
        &self,
        conn: &Conn,
        keyring: &str,
    ) -> Result<Option<KeyInfo>, StoreError> {
        check_key_name(keyring)?;
        let reply = match conn
            .request(Method::GET, &self.path("keys", keyring), None)
            .await
        {
            Ok(reply) => reply,
            Err(f) if f.is_not_found() => return Ok(None),
            Err(f) => return Err(f.into()),
        };
        let data = reply.data();
        let derived = data["derived"]
            .as_bool()
            .ok_or_else(|| StoreError::Corrupt(format!("transit key {keyring}: no `derived`")))?;
        let info = KeyInfo {
            derived,
            latest_version: data["latest_version"].as_u64().unwrap_or(1),
        };
        self.remember(keyring, derived);
        Ok(Some(info))
    }

    /// Whether the keyring's key is derived; creates it (derived) if missing
    /// and `create` holds, else `None` when missing.
    async fn mode(
        &self,
        conn: &Conn,
        keyring: &str,
        create: bool,
    ) -> Result<Option<bool>, StoreError> {
        if let Some(derived) = self.cached(keyring) {
            return Ok(Some(derived));
        }
        if let Some(key) = self.read_key(conn, keyring).await? {
            if !key.derived {
                tracing::warn!(
                    keyring,
                    "transit key is not derived: its ciphertexts are not bound to their record path"
                );
            }
            return Ok(Some(key.derived));
        }
        if !create {
            return Ok(None);
        }
        // An existing key (a concurrent creator won) is left as it is.
        conn.typed(|s| async move {
            let mut options = CreateKeyRequest::builder();
            options.derived(true);
            vaultrs::transit::key::create(&s.client, &self.mount, keyring, Some(&mut options)).await
        })
        .await
        .map_err(StoreError::from)?;
        tracing::info!(keyring, "created a derived transit key");
        // Read back rather than assume: the creator that won may differ.
        match self.read_key(conn, keyring).await? {
            Some(key) => Ok(Some(key.derived)),
            None => Err(StoreError::Corrupt(format!(
                "transit key {keyring} vanished after creation"
            ))),
        }
    }

    fn batch<'a>(
        derived: bool,
        context: &str,
        field: &str,
        items: impl Iterator<Item = String> + 'a,
    ) -> Value {
        let context = derived.then(|| B64.encode(context));
        let items: Vec<Value> = items
            .map(|v| {
                let mut item = Map::new();
                item.insert(field.to_owned(), Value::String(v));
                if let Some(c) = &context {
                    item.insert("context".into(), Value::String(c.clone()));
                }
                Value::Object(item)
            })
            .collect();
        json!({ "batch_input": items })
    }

    /// The batch results, one per input, each checked for an item error.
    fn results(reply: &Value, expected: usize) -> Result<&Vec<Value>, Failure> {
        let results = reply["data"]["batch_results"]
            .as_array()
            .ok_or_else(|| Failure::Malformed("transit reply has no batch_results".into()))?;
        if results.len() != expected {
            return Err(Failure::Malformed(format!(
                "transit answered {} results for {expected} inputs",
                results.len()
            )));
        }
        Ok(results)
    }

    fn item_error(results: &[Value]) -> Option<String> {
        results
            .iter()
            .filter_map(|r| r["error"].as_str())
            .find(|e| !e.is_empty())
            .map(str::to_owned)
    }

    pub(super) async fn encrypt(
        &self,
        conn: &Conn,
        keyring: &str,
        context: &str,
        plaintexts: &[&[u8]],
    ) -> Result<Vec<String>, StoreError> {
        check_key_name(keyring)?;
        if plaintexts.is_empty() {
            return Ok(Vec::new());
        }
        let derived = self.mode(conn, keyring, true).await?.unwrap_or(true);
        let mut body = Self::batch(
            derived,
            context,
            "plaintext",
            plaintexts.iter().map(|p| B64.encode(p)),
        );
        let sent = conn
            .request(Method::POST, &self.path("encrypt", keyring), Some(&body))
            .await;
        wipe_strings(&mut body);
        let reply = match sent {
            Ok(reply) => reply,
            Err(f) if f.code() == Some(400) => {
                self.forget(keyring);
                let why = Self::item_error(f_results(&f)).unwrap_or_else(|| f.message());
                return Err(StoreError::Refused(format!("transit encrypt: {why}")));
            }
            Err(f) => {
                if f.code() == Some(403) {
                    self.forget(keyring);
                }
                return Err(f.into());
            }
        };
        let results = Self::results(&reply.body, plaintexts.len())?;
        if let Some(why) = Self::item_error(results) {
            self.forget(keyring);
            return Err(StoreError::Refused(format!("transit encrypt: {why}")));
        }
        results
            .iter()
            .map(|r| {
                r["ciphertext"]
                    .as_str()
                    .filter(|c| c.starts_with("vault:v"))
                    .map(str::to_owned)
                    .ok_or_else(|| StoreError::Corrupt("transit returned no ciphertext".into()))
            })
            .collect()
    }

    pub(super) async fn decrypt(
        &self,
        conn: &Conn,
        keyring: &str,
        context: &str,
        ciphertexts: &[&str],
    ) -> Result<Vec<Plaintext>, StoreError> {
        if check_key_name(keyring).is_err() {
            return Err(StoreError::Decrypt);
        }
        if ciphertexts.is_empty() {
            return Ok(Vec::new());
        }
        let Some(derived) = self.mode(conn, keyring, false).await? else {
            return Err(StoreError::Decrypt); // no key: nothing decrypts
        };
        let body = Self::batch(
            derived,
            context,
            "ciphertext",
            ciphertexts.iter().map(|c| (*c).to_owned()),
        );
        let mut reply = self
            .ciphertext_call(conn, "decrypt", keyring, &body, ciphertexts.len())
            .await?;
        let results = reply["data"]["batch_results"]
            .as_array_mut()
            .ok_or(StoreError::Decrypt)?;
        let mut out = Vec::with_capacity(results.len());
        for r in results {
            let Some(Value::String(b64)) = r.get_mut("plaintext") else {
                return Err(StoreError::Decrypt);
            };
            let plain = B64.decode(b64.as_bytes());
            b64.zeroize();
            out.push(Zeroizing::new(plain.map_err(|_| {
                StoreError::Corrupt("transit returned a plaintext that is not base64".into())
            })?));
        }
        Ok(out)
    }

    /// Re-encrypts ciphertexts under the key's latest version.
    pub(super) async fn rewrap(
        &self,
        conn: &Conn,
        keyring: &str,
        context: &str,
        ciphertexts: &[&str],
    ) -> Result<Vec<String>, StoreError> {
        check_key_name(keyring)?;
        if ciphertexts.is_empty() {
            return Ok(Vec::new());
        }
        let Some(derived) = self.mode(conn, keyring, false).await? else {
            return Err(StoreError::Decrypt);
        };
        let body = Self::batch(
            derived,
            context,
            "ciphertext",
            ciphertexts.iter().map(|c| (*c).to_owned()),
        );
        let reply = self
            .ciphertext_call(conn, "rewrap", keyring, &body, ciphertexts.len())
            .await?;
        reply["data"]["batch_results"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                r["ciphertext"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or(StoreError::Decrypt)
            })
            .collect()
    }

    /// Decrypt or rewrap: any 400 or item error means a ciphertext did not
    /// open (wrong key, context, version, or tampering), so fail closed.
    async fn ciphertext_call(
        &self,
        conn: &Conn,
        op: &str,
        keyring: &str,
        body: &Value,
        expected: usize,
    ) -> Result<Value, StoreError> {
        let reply = match conn
            .request(Method::POST, &self.path(op, keyring), Some(body))
            .await
        {
            Ok(reply) => reply.body,
            Err(f) if f.code() == Some(400) => {
                let why = Self::item_error(f_results(&f)).unwrap_or_else(|| f.message());
                if why.contains("missing 'context'") || why.contains("key not found") {
                    self.forget(keyring);
                }
                tracing::debug!(keyring, op, error = %why, "transit refused a ciphertext");
                return Err(StoreError::Decrypt);
            }
            Err(f) => return Err(f.into()),
        };
        let results = Self::results(&reply, expected)?;
        if let Some(why) = Self::item_error(results) {
            tracing::debug!(keyring, op, error = %why, "transit refused a ciphertext");
            return Err(StoreError::Decrypt);
        }
        Ok(reply)
    }
}

/// Best effort: overwrites the base64 plaintexts of a request body once
/// sent (the HTTP stack's own buffers are out of reach).
fn wipe_strings(v: &mut Value) {
    match v {
        Value::String(s) => s.zeroize(),
        Value::Array(a) => a.iter_mut().for_each(wipe_strings),
        Value::Object(o) => o.values_mut().for_each(wipe_strings),
        _ => {}
    }
}

/// The batch results carried by a failed (400) batch reply, if any.
fn f_results(f: &Failure) -> &[Value] {
    match f {
        Failure::Status { body, .. } => body["data"]["batch_results"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[]),
        _ => &[],
    }
}

/// Transit key names match `\w(([\w-.]+)?\w)?`; anything else is a 404.
fn check_key_name(name: &str) -> Result<(), StoreError> {
    let word = |c: &u8| c.is_ascii_alphanumeric() || *c == b'_';
    let b = name.as_bytes();
    let ok = match b {
        [] => false,
        [one] => word(one),
        [first, middle @ .., last] => {
            word(first) && word(last) && middle.iter().all(|c| word(c) || *c == b'-' || *c == b'.')
        }
    };
    if ok {
        Ok(())
    } else {
        Err(StoreError::Refused(format!(
            "invalid keyring name {name:?} for vault transit"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_follow_transit_rules() {
        for ok in ["t", "t1", "tenant-1", "_credgate", "a.b", "a_b-c.d"] {
            assert!(check_key_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a/b", "a b", ".a", "a.", "é"] {
            assert!(check_key_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn batches_carry_context_only_for_derived_keys() {
        let b = Transit::batch(
            true,
            "t1/github",
            "plaintext",
            ["YQ==".to_owned()].into_iter(),
        );
        assert_eq!(
            b,
            json!({"batch_input": [{"plaintext": "YQ==", "context": B64.encode("t1/github")}]})
        );
        let b = Transit::batch(
            false,
            "t1/github",
            "ciphertext",
            ["vault:v1:x".to_owned()].into_iter(),
        );
        assert_eq!(b, json!({"batch_input": [{"ciphertext": "vault:v1:x"}]}));
    }

    #[test]
    fn item_errors_are_found_in_batch_results() {
        let results = vec![
            json!({"plaintext": "YQ==", "reference": ""}),
            json!({"error": "cipher: message authentication failed", "reference": ""}),
        ];
        assert_eq!(
            Transit::item_error(&results).as_deref(),
            Some("cipher: message authentication failed")
        );
        assert_eq!(Transit::item_error(&results[..1]), None);
    }
}
