//! Signed values: connect links, settings links, settings sessions and CSRF
//! tokens. All are HMAC-SHA256 under one key kept (encrypted) in the store at
//! `_credgate/connect/key`, created on first use with check-and-set, so every
//! replica sharing the store signs and verifies alike.
//!
//! A link is `v1.<base64url(JSON payload)>.<base64url(tag)>`; the payload
//! names its kind, the tenant, the integration (connect links) and the expiry.
//! It holds no secret: it is tamper-proof, not confidential.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::ids;
use crate::store::{Cas, INTERNAL_KEYRING, INTERNAL_PREFIX, Store, StoreError};

const KEY_PATH: &str = "_credgate/connect/key";

/// `n` random bytes, base64url: state values, browser binders, session ids.
pub fn random_token(n: usize) -> String {
    let mut buf = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut buf)
        .expect("the system RNG works");
    B64.encode(buf)
}

/// SHA-256 of a value, base64url (what the store keeps of a browser binder).
pub fn digest(value: &str) -> String {
    B64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        value.as_bytes(),
    ))
}

/// What a link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Connect,
    Settings,
    Session,
}

/// A verified link's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub k: Kind,
    pub t: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub i: Option<String>,
    /// Expiry, unix seconds.
    pub e: i64,
    /// Session id (sessions only): what CSRF tokens are bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s: Option<String>,
}

/// Why a link was refused; each says so on the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("This link is malformed: it was cut short or changed.")]
    Malformed,
    #[error("This link was not issued by credgate: its signature does not match.")]
    Forged,
    #[error("This link has expired. Ask your administrator for a new one.")]
    Expired,
    #[error("This link is for another integration.")]
    WrongIntegration,
}

/// The signing key, loaded once per process.
pub struct Signer {
    key: tokio::sync::OnceCell<hmac::Key>,
}

impl Default for Signer {
    fn default() -> Self {
        Signer {
            key: tokio::sync::OnceCell::new(),
        }
    }
}

impl Signer {
    /// The shared key: read from the store, or created there by the first replica.
    pub async fn key(&self, store: &dyn Store) -> Result<&hmac::Key, StoreError> {
        self.key.get_or_try_init(|| load_or_create(store)).await
    }

    /// A signed link value.
    pub fn sign(key: &hmac::Key, claims: &Claims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialize"));
        let signed = format!("v1.{payload}");
        let tag = hmac::sign(key, signed.as_bytes());
        format!("{signed}.{}", B64.encode(tag.as_ref()))
    }

    /// Checks a link value: signature, kind, expiry and (when given) the integration.
    pub fn verify(
        key: &hmac::Key,
        value: &str,
        kind: Kind,
        integration: Option<&str>,
        now: i64,
    ) -> Result<Claims, LinkError> {
        if value.len() > 2048 {
            return Err(LinkError::Malformed);
        }
        let (signed, tag) = value.rsplit_once('.').ok_or(LinkError::Malformed)?;
        let payload = signed.strip_prefix("v1.").ok_or(LinkError::Malformed)?;
        let tag = B64.decode(tag).map_err(|_| LinkError::Malformed)?;
        let raw = B64.decode(payload).map_err(|_| LinkError::Malformed)?;
        hmac::verify(key, signed.as_bytes(), &tag).map_err(|_| LinkError::Forged)?;
        let claims: Claims = serde_json::from_slice(&raw).map_err(|_| LinkError::Malformed)?;
        if claims.k != kind || ids::validate(&claims.t).is_err() {
            return Err(LinkError::Malformed);
        }
        if claims.e <= now {
            return Err(LinkError::Expired);
        }
        if let Some(want) = integration
            && claims.i.as_deref() != Some(want)
        {
            return Err(LinkError::WrongIntegration);
        }
        Ok(claims)
    }

    /// The CSRF token for forms of `purpose`, bound to a per-browser secret.
    pub fn csrf(key: &hmac::Key, purpose: &str, secret: &str) -> String {
        let tag = hmac::sign(key, format!("csrf|{purpose}|{secret}").as_bytes());
        B64.encode(tag.as_ref())
    }

    /// Whether `token` is [`Signer::csrf`] of the same purpose and secret (constant time).
    pub fn csrf_ok(key: &hmac::Key, purpose: &str, secret: &str, token: &str) -> bool {
        let Ok(tag) = B64.decode(token) else {
            return false;
        };
        hmac::verify(key, format!("csrf|{purpose}|{secret}").as_bytes(), &tag).is_ok()
    }
}

async fn load_or_create(store: &dyn Store) -> Result<hmac::Key, StoreError> {
    debug_assert!(KEY_PATH.starts_with(INTERNAL_PREFIX));
    for _ in 0..3 {
        if let Some(record) = store.read(KEY_PATH).await? {
            let ct = record
                .data
                .get("key")
                .and_then(Value::as_str)
                .ok_or_else(|| StoreError::Corrupt(format!("{KEY_PATH}: no key")))?;
            let plain = store.decrypt(INTERNAL_KEYRING, KEY_PATH, &[ct]).await?;
            let bytes = plain
                .first()
                .ok_or_else(|| StoreError::Corrupt(format!("{KEY_PATH}: empty")))?;
            return Ok(hmac::Key::new(hmac::HMAC_SHA256, bytes));
        }
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        SystemRandom::new()
            .fill(secret.as_mut())
            .map_err(|_| StoreError::Io("system RNG failed".into()))?;
        let ct = store
            .encrypt(INTERNAL_KEYRING, KEY_PATH, &[secret.as_ref()])
            .await?;
        let mut data = Map::new();
        data.insert("key".into(), json!(ct.first()));
        match store
            .write(KEY_PATH, data, BTreeMap::new(), Cas::Absent)
            .await
        {
            Ok(_) => return Ok(hmac::Key::new(hmac::HMAC_SHA256, secret.as_ref())),
            // Another replica created it first: use theirs.
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, b"0123456789abcdef0123456789abcdef")
    }

    fn claims(e: i64) -> Claims {
        Claims {
            k: Kind::Connect,
            t: "acme".into(),
            i: Some("github".into()),
            e,
            s: None,
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let k = key();
        let link = Signer::sign(&k, &claims(100));
        assert_eq!(
            Signer::verify(&k, &link, Kind::Connect, Some("github"), 50),
            Ok(claims(100))
        );
        assert_eq!(
            Signer::verify(&k, &link, Kind::Connect, Some("github"), 100),
            Err(LinkError::Expired)
        );
        assert_eq!(
            Signer::verify(&k, &link, Kind::Connect, Some("slack"), 50),
            Err(LinkError::WrongIntegration)
        );
        assert_eq!(
            Signer::verify(&k, &link, Kind::Settings, None, 50),
            Err(LinkError::Malformed)
        );
        let other = hmac::Key::new(hmac::HMAC_SHA256, b"another key, same length........");
        assert_eq!(
            Signer::verify(&other, &link, Kind::Connect, Some("github"), 50),
            Err(LinkError::Forged)
        );
        // A payload changed to name another tenant no longer matches its tag.
        let (_, tag) = link.rsplit_once('.').unwrap();
        let mut c = claims(100);
        c.t = "evil".into();
        let forged_payload = B64.encode(serde_json::to_vec(&c).unwrap());
        let forged = format!("v1.{forged_payload}.{tag}");
        assert_eq!(
            Signer::verify(&k, &forged, Kind::Connect, Some("github"), 50),
            Err(LinkError::Forged)
        );
        assert_eq!(
            Signer::verify(&k, "garbage", Kind::Connect, None, 50),
            Err(LinkError::Malformed)
        );
    }

    #[test]
    fn csrf_is_bound_to_purpose_and_secret() {
        let k = key();
        let t = Signer::csrf(&k, "connect", "browser-1");
        assert!(Signer::csrf_ok(&k, "connect", "browser-1", &t));
        assert!(!Signer::csrf_ok(&k, "connect", "browser-2", &t));
        assert!(!Signer::csrf_ok(&k, "settings", "browser-1", &t));
        assert!(!Signer::csrf_ok(&k, "connect", "browser-1", "nope"));
    }
}
