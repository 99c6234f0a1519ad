//! Signing keys: generated on first start, kept in the store so every replica
//! validates every other's tokens. Old keys stay in the JWKS while a token
//! they signed may still be valid: a replica that first sees a key no longer
//! active stamps it `retiredAt`, and the key is deleted once
//! [`Retention`] has passed since (the longest token lifetime, static API
//! keys included, plus a margin for replicas that signed with it a little
//! longer before they synced).
//!
//! Layout: `_credgate/signing-keys/{kid}` holds `{kid, alg, publicJwk,
//! privateKey, createdAt, retiredAt?}` with `privateKey` encrypted under
//! [`INTERNAL_KEYRING`] bound to the record path; `_credgate/signing-keys-active`
//! names the key new tokens are signed with. Two replicas starting at once both
//! write a key, but only one wins the check-and-set on the pointer; the loser
//! deletes its key and adopts the winner's.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self as ring_sig, KeyPair};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use zeroize::Zeroizing;

use crate::config::SigningAlg;
use crate::store::{Cas, INTERNAL_KEYRING, Store, StoreError};

pub(crate) const KEYS_PREFIX: &str = "_credgate/signing-keys";
pub(crate) const ACTIVE_PATH: &str = "_credgate/signing-keys-active";

/// One signing key. The private half is present only for the active key.
pub(crate) struct SigningKey {
    pub(crate) kid: Arc<str>,
    pub(crate) alg: Algorithm,
    pub(crate) decoding: DecodingKey,
    /// The public JWK as published in `/.well-known/jwks.json`.
    pub(crate) jwk: Value,
    encoding: Option<EncodingKey>,
    /// Unix time a replica first saw this key no longer active.
    retired_at: Option<i64>,
}

/// How long a retired key stays published.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retention {
    keep_secs: i64,
}

/// Added to the longest token lifetime: replicas keep signing with a key
/// until their next sync, and validation has leeway.
const RETENTION_MARGIN_SECS: i64 = 3600;

impl Retention {
    /// The longest lifetime any token can have (`oauth.max_token_minutes`,
    /// `oauth.max_static_key_days`), plus the margin.
    pub(crate) fn of(oauth: &crate::config::OAuthConfig) -> Self {
        let longest = (oauth.max_token_minutes * 60).max(oauth.max_static_key_days * 86_400);
        Retention {
            keep_secs: i64::try_from(longest)
                .unwrap_or(i64::MAX / 2)
                .saturating_add(RETENTION_MARGIN_SECS),
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("private", &self.encoding.as_ref().map(|_| "…"))
            .finish()
    }
}

impl SigningKey {
    /// Builds a key from its public JWK (as stored), refusing anything that is
    /// not exactly what credgate generates.
    fn from_jwk(kid: &str, jwk: &Value) -> Result<Self, StoreError> {
        let corrupt = |m: &str| StoreError::Corrupt(format!("signing key {kid}: {m}"));
        let field = |name: &str| -> Result<Vec<u8>, StoreError> {
            let s = jwk[name]
                .as_str()
                .ok_or_else(|| corrupt("JWK field missing"))?;
            B64.decode(s)
                .map_err(|_| corrupt("JWK field not base64url"))
        };
        let (alg, decoding) = match (jwk["kty"].as_str(), jwk["crv"].as_str()) {
            (Some("OKP"), Some("Ed25519")) => {
                let x = field("x")?;
                if x.len() != 32 {
                    return Err(corrupt("Ed25519 key must be 32 bytes"));
                }
                (Algorithm::EdDSA, DecodingKey::from_ed_der(&x))
            }
            (Some("EC"), Some("P-256")) => {
                let (x, y) = (field("x")?, field("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(corrupt("P-256 coordinates must be 32 bytes"));
                }
                let point = [&[4u8][..], &x, &y].concat();
                (Algorithm::ES256, DecodingKey::from_ec_der(&point))
            }
            (Some("RSA"), _) => {
                if field("n")?.len() < 128 || field("e")?.is_empty() {
                    return Err(corrupt("RSA modulus too short"));
                }
                let (n, e) = (jwk["n"].as_str(), jwk["e"].as_str());
                let key = DecodingKey::from_rsa_components(n.unwrap_or(""), e.unwrap_or(""))
                    .map_err(|_| corrupt("RSA key does not parse"))?;
                (Algorithm::RS256, key)
            }
            _ => return Err(corrupt("unsupported key type")),
        };
        Ok(SigningKey {
            kid: kid.into(),
            alg,
            decoding,
            jwk: jwk.clone(),
            encoding: None,
            retired_at: None,
        })
    }

    /// The encoding key, for the active key only.
    pub(crate) fn encoding(&self) -> Option<&EncodingKey> {
        self.encoding.as_ref()
    }
}

/// Every known key plus the active one. Immutable; replaced as a whole.
#[derive(Debug)]
pub(crate) struct KeySet {
    pub(crate) active: Arc<SigningKey>,
    pub(crate) by_kid: HashMap<Arc<str>, Arc<SigningKey>>,
}

impl KeySet {
    pub(crate) fn get(&self, kid: &str) -> Option<&Arc<SigningKey>> {
        self.by_kid.get(kid)
    }

    /// Whether the token's header names a key we know.
    pub(crate) fn has_kid_of(&self, token: &str) -> bool {
        jsonwebtoken::decode_header(token)
            .ok()
            .and_then(|h| h.kid)
            .is_some_and(|kid| self.by_kid.contains_key(kid.as_str()))
    }

    /// The `/.well-known/jwks.json` document, sorted by kid for stable output.
    pub(crate) fn jwks(&self) -> Value {
        let mut keys: Vec<&Arc<SigningKey>> = self.by_kid.values().collect();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        json!({ "keys": keys.iter().map(|k| &k.jwk).collect::<Vec<_>>() })
    }
}

fn key_path(kid: &str) -> String {
    format!("{KEYS_PREFIX}/{kid}")
}

/// Kids are ours: `k` + 16 hex digits. Anything else listed is ignored.
fn is_kid(s: &str) -> bool {
    s.len() == 17 && s.starts_with('k') && s[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn new_kid(rng: &SystemRandom) -> Result<String, StoreError> {
    let mut b = [0u8; 8];
    rng.fill(&mut b)
        .map_err(|_| StoreError::Refused("OS random number generator failed".into()))?;
    Ok(format!(
        "k{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

fn wanted_alg(alg: SigningAlg) -> Result<Algorithm, StoreError> {
    match alg {
        SigningAlg::EdDSA => Ok(Algorithm::EdDSA),
        SigningAlg::ES256 => Ok(Algorithm::ES256),
        SigningAlg::RS256 => Ok(Algorithm::RS256),
    }
}

/// RSA modulus size. Tests use a smaller one: generating 2048-bit keys takes
/// seconds in unoptimized builds (release: well under one).
#[cfg(not(test))]
const RSA_BITS: usize = 2048;
#[cfg(test)]
const RSA_BITS: usize = 1024;

/// A fresh key pair: the private key in the DER form `jsonwebtoken` signs
/// with (PKCS#8 for EdDSA and ES256, PKCS#1 for RS256) and the public JWK.
/// Slow for RSA: call from a blocking thread.
fn generate(alg: Algorithm, kid: &str) -> Result<(Zeroizing<Vec<u8>>, Value), StoreError> {
    let rng = SystemRandom::new();
    let failed =
        |_: ring::error::Unspecified| StoreError::Refused("signing key generation failed".into());
    let rejected = |_: ring::error::KeyRejected| failed(ring::error::Unspecified);
    match alg {
        Algorithm::EdDSA => {
            let doc = ring_sig::Ed25519KeyPair::generate_pkcs8(&rng).map_err(failed)?;
            let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
            let pair = ring_sig::Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(rejected)?;
            let x = B64.encode(pair.public_key().as_ref());
            let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x,
                             "kid": kid, "alg": "EdDSA", "use": "sig"});
            Ok((pkcs8, jwk))
        }
        Algorithm::ES256 => {
            let a = &ring_sig::ECDSA_P256_SHA256_FIXED_SIGNING;
            let doc = ring_sig::EcdsaKeyPair::generate_pkcs8(a, &rng).map_err(failed)?;
            let pkcs8 = Zeroizing::new(doc.as_ref().to_vec());
            let pair = ring_sig::EcdsaKeyPair::from_pkcs8(a, &pkcs8, &rng).map_err(rejected)?;
            let point = pair.public_key().as_ref();
            let jwk = json!({"kty": "EC", "crv": "P-256",
                             "x": B64.encode(&point[1..33]), "y": B64.encode(&point[33..65]),
                             "kid": kid, "alg": "ES256", "use": "sig"});
            Ok((pkcs8, jwk))
        }
        Algorithm::RS256 => {
            use rsa::pkcs1::EncodeRsaPrivateKey;
            use rsa::traits::PublicKeyParts;
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS)
                .map_err(|_| failed(ring::error::Unspecified))?;
            let der = key
                .to_pkcs1_der()
                .map_err(|_| failed(ring::error::Unspecified))?;
            let jwk = json!({"kty": "RSA",
                             "n": B64.encode(key.n().to_bytes_be()), "e": B64.encode(key.e().to_bytes_be()),
                             "kid": kid, "alg": "RS256", "use": "sig"});
            Ok((Zeroizing::new(der.as_bytes().to_vec()), jwk))
        }
        _ => Err(StoreError::Refused("unsupported signing algorithm".into())),
    }
}

fn with_private(mut key: SigningKey, der: &[u8]) -> SigningKey {
    key.encoding = Some(match key.alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(der),
        Algorithm::RS256 => EncodingKey::from_rsa_der(der),
        _ => EncodingKey::from_ed_der(der),
    });
    key
}

/// Generates a key and writes its record (not yet active).
async fn create_key(store: &dyn Store, alg: Algorithm) -> Result<SigningKey, StoreError> {
    let kid = new_kid(&SystemRandom::new())?;
    let (pkcs8, jwk) = {
        let kid = kid.clone();
        tokio::task::spawn_blocking(move || generate(alg, &kid))
            .await
            .map_err(|_| StoreError::Refused("signing key generation panicked".into()))??
    };
    let path = key_path(&kid);
    let sealed = store
        .encrypt(INTERNAL_KEYRING, &path, &[&pkcs8])
        .await?
        .pop()
        .ok_or_else(|| StoreError::Corrupt("encrypt returned nothing".into()))?;
    let now = OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default();
    let mut data = Map::new();
    data.insert("kid".into(), json!(kid));
    data.insert("alg".into(), jwk["alg"].clone());
    data.insert("publicJwk".into(), jwk.clone());
    data.insert("privateKey".into(), json!(sealed));
    data.insert("createdAt".into(), json!(now));
    store
        .write(&path, data, BTreeMap::new(), Cas::Absent)
        .await?;
    Ok(with_private(SigningKey::from_jwk(&kid, &jwk)?, &pkcs8))
}

/// Reads a key record; decrypts the private half when `private`.
async fn load_key(store: &dyn Store, kid: &str, private: bool) -> Result<SigningKey, StoreError> {
    let path = key_path(kid);
    let rec = store
        .read(&path)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("signing key {kid} is missing")))?;
    let mut key = SigningKey::from_jwk(kid, &rec.data["publicJwk"])?;
    key.retired_at = rec.data.get("retiredAt").and_then(Value::as_i64);
    if !private {
        return Ok(key);
    }
    let sealed = rec.data["privateKey"]
        .as_str()
        .ok_or_else(|| StoreError::Corrupt(format!("signing key {kid}: no private key")))?;
    let pkcs8 = store
        .decrypt(INTERNAL_KEYRING, &path, &[sealed])
        .await?
        .pop()
        .ok_or(StoreError::Decrypt)?;
    Ok(with_private(key, &pkcs8))
}

async fn read_active_kid(store: &dyn Store) -> Result<Option<(String, u64)>, StoreError> {
    let Some(rec) = store.read(ACTIVE_PATH).await? else {
        return Ok(None);
    };
    match rec.data.get("kid").and_then(Value::as_str) {
        Some(kid) if is_kid(kid) => Ok(Some((kid.to_owned(), rec.version))),
        _ => Err(StoreError::Corrupt(
            "signing-keys-active names no key".into(),
        )),
    }
}

fn pointer(kid: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("kid".into(), json!(kid));
    m
}

/// Loads the key set, creating the first key (or a key of the configured
/// algorithm, when the active one has another) and converging with replicas
/// that race to do the same.
pub(crate) async fn load_or_create(
    store: &dyn Store,
    alg: SigningAlg,
    retention: Retention,
) -> Result<KeySet, StoreError> {
    let wanted = wanted_alg(alg)?;
    for _ in 0..5 {
        let active = match read_active_kid(store).await? {
            Some((kid, version)) => {
                let key = load_key(store, &kid, true).await?;
                if key.alg == wanted {
                    key
                } else {
                    let new = create_key(store, wanted).await?;
                    match store
                        .write(
                            ACTIVE_PATH,
                            pointer(&new.kid),
                            BTreeMap::new(),
                            Cas::Version(version),
                        )
                        .await
                    {
                        Ok(_) => {
                            tracing::info!(kid = %new.kid, "signing key rotated to the configured algorithm");
                            new
                        }
                        Err(StoreError::Conflict) => {
                            store.delete(&key_path(&new.kid)).await?;
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                let new = create_key(store, wanted).await?;
                match store
                    .write(ACTIVE_PATH, pointer(&new.kid), BTreeMap::new(), Cas::Absent)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(kid = %new.kid, "created the first signing key");
                        new
                    }
                    Err(StoreError::Conflict) => {
                        // Another replica won the race: use its key.
                        store.delete(&key_path(&new.kid)).await?;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
        };
        return complete(store, Arc::new(active), None, retention).await;
    }
    Err(StoreError::Conflict)
}

/// Makes a new key of `alg` the active one; the old keys stay published so
/// tokens they signed keep validating. Returns the new key set.
pub(crate) async fn rotate(
    store: &dyn Store,
    alg: SigningAlg,
    retention: Retention,
) -> Result<KeySet, StoreError> {
    let wanted = wanted_alg(alg)?;
    for _ in 0..5 {
        let cas = match read_active_kid(store).await? {
            Some((_, version)) => Cas::Version(version),
            None => Cas::Absent,
        };
        let new = create_key(store, wanted).await?;
        match store
            .write(ACTIVE_PATH, pointer(&new.kid), BTreeMap::new(), cas)
            .await
        {
            Ok(_) => {
                tracing::info!(kid = %new.kid, "signing key rotated");
                return complete(store, Arc::new(new), None, retention).await;
            }
            Err(StoreError::Conflict) => {
                // A concurrent rotation won; retry on top of it.
                store.delete(&key_path(&new.kid)).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}

/// Stamps `retiredAt` on a key no longer active (keeping an earlier stamp).
/// `None` when the record is gone (a start-up race's loser deleted it).
async fn mark_retired(store: &dyn Store, kid: &str, now: i64) -> Result<Option<i64>, StoreError> {
    let path = key_path(kid);
    for _ in 0..3 {
        let Some(rec) = store.read(&path).await? else {
            return Ok(None);
        };
        if let Some(at) = rec.data.get("retiredAt").and_then(Value::as_i64) {
            return Ok(Some(at));
        }
        let mut data = rec.data.clone();
        data.insert("retiredAt".into(), json!(now));
        match store
            .write(&path, data, rec.metadata.clone(), Cas::Version(rec.version))
            .await
        {
            Ok(_) => return Ok(Some(now)),
            Err(StoreError::Conflict) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StoreError::Conflict)
}

/// Adds every other stored key (public half only) to `active`, reusing keys
/// already in `known` (keys never change once written, but for `retiredAt`),
/// stamping newly retired keys and deleting those past `retention`.
async fn complete(
    store: &dyn Store,
    active: Arc<SigningKey>,
    known: Option<&KeySet>,
    retention: Retention,
) -> Result<KeySet, StoreError> {
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let mut by_kid = HashMap::new();
    by_kid.insert(active.kid.clone(), active.clone());
    for kid in store.list(KEYS_PREFIX).await? {
        if !is_kid(&kid) || by_kid.contains_key(kid.as_str()) {
            continue;
        }
        let key = match known.and_then(|k| k.get(&kid)) {
            Some(k) => k.clone(),
            // A key deleted between list and read lost a start-up race: skip it.
            None => match load_key(store, &kid, false).await {
                Ok(k) => Arc::new(k),
                Err(StoreError::Corrupt(m)) => {
                    tracing::warn!(kid, "skipping unreadable signing key: {m}");
                    continue;
                }
                Err(e) => return Err(e),
            },
        };
        let key = match key.retired_at {
            Some(_) => key,
            None => match mark_retired(store, &kid, now).await? {
                Some(at) => {
                    let mut k = SigningKey::from_jwk(&kid, &key.jwk)?;
                    k.retired_at = Some(at);
                    Arc::new(k)
                }
                None => continue,
            },
        };
        if key
            .retired_at
            .is_some_and(|at| now > at.saturating_add(retention.keep_secs))
        {
            // Every token it signed has expired.
            store.delete(&key_path(&kid)).await?;
            tracing::info!(kid, "pruned a retired signing key");
            continue;
        }
        by_kid.insert(key.kid.clone(), key);
    }
    Ok(KeySet { active, by_kid })
}

/// Picks up keys and activations made by other replicas. Returns `None` when
/// nothing changed.
pub(crate) async fn reload(
    store: &dyn Store,
    current: &KeySet,
    retention: Retention,
) -> Result<Option<KeySet>, StoreError> {
    let Some((kid, _)) = read_active_kid(store).await? else {
        return Ok(None);
    };
    let active = if *current.active.kid == *kid {
        current.active.clone()
    } else {
        Arc::new(load_key(store, &kid, true).await?)
    };
    let next = complete(store, active, Some(current), retention).await?;
    let changed = !Arc::ptr_eq(&next.active, &current.active)
        || next.by_kid.len() != current.by_kid.len()
        || next.by_kid.iter().any(|(kid, k)| {
            current
                .get(kid)
                .is_none_or(|c| c.retired_at != k.retired_at)
        });
    Ok(changed.then_some(next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oauth::testing::MemStore;

    const KEEP: Retention = Retention { keep_secs: 86_400 };

    #[tokio::test]
    async fn retired_keys_are_stamped_then_pruned_after_retention() {
        let store = MemStore::default();
        let first = load_or_create(&store, SigningAlg::EdDSA, KEEP)
            .await
            .unwrap();
        let old = first.active.kid.clone();
        let rotated = rotate(&store, SigningAlg::EdDSA, KEEP).await.unwrap();
        // Still published, stamped retired now.
        assert!(rotated.get(&old).is_some());
        let rec = store.read(&key_path(&old)).await.unwrap().unwrap();
        let at = rec.data["retiredAt"].as_i64().expect("retiredAt stamped");
        assert!((OffsetDateTime::now_utc().unix_timestamp() - at).abs() < 60);
        assert!(
            store
                .read(&key_path(&rotated.active.kid))
                .await
                .unwrap()
                .unwrap()
                .data
                .get("retiredAt")
                .is_none(),
            "the active key is not retired"
        );
        // Within retention: stays on a reload, even with the stamp in the past.
        let mut data = rec.data.clone();
        data.insert("retiredAt".into(), json!(at - KEEP.keep_secs + 600));
        store
            .write(
                &key_path(&old),
                data,
                BTreeMap::new(),
                Cas::Version(rec.version),
            )
            .await
            .unwrap();
        let again = load_or_create(&store, SigningAlg::EdDSA, KEEP)
            .await
            .unwrap();
        assert!(again.get(&old).is_some());
        // Past retention (every token it signed has expired): gone.
        let rec = store.read(&key_path(&old)).await.unwrap().unwrap();
        let mut data = rec.data.clone();
        data.insert("retiredAt".into(), json!(at - KEEP.keep_secs - 1));
        store
            .write(
                &key_path(&old),
                data,
                BTreeMap::new(),
                Cas::Version(rec.version),
            )
            .await
            .unwrap();
        let pruned = load_or_create(&store, SigningAlg::EdDSA, KEEP)
            .await
            .unwrap();
        assert!(pruned.get(&old).is_none(), "retired key still published");
        assert!(store.read(&key_path(&old)).await.unwrap().is_none());
        assert_eq!(pruned.jwks()["keys"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn retention_covers_static_keys() {
        let oauth = crate::config::OAuthConfig::default();
        let r = Retention::of(&oauth);
        assert_eq!(
            r.keep_secs,
            (oauth.max_static_key_days * 86_400) as i64 + RETENTION_MARGIN_SECS
        );
    }

    #[tokio::test]
    async fn rotation_activates_a_new_key_and_keeps_the_old() {
        let store = MemStore::default();
        let first = load_or_create(&store, SigningAlg::EdDSA, KEEP)
            .await
            .unwrap();
        let rotated = rotate(&store, SigningAlg::EdDSA, KEEP).await.unwrap();
        assert_ne!(first.active.kid, rotated.active.kid);
        assert!(
            rotated.get(&first.active.kid).is_some(),
            "old key still published"
        );
        let again = load_or_create(&store, SigningAlg::EdDSA, KEEP)
            .await
            .unwrap();
        assert_eq!(
            again.active.kid, rotated.active.kid,
            "a restart keeps the rotation"
        );
    }

    #[tokio::test]
    async fn first_start_creates_and_restart_keeps_the_key() {
        let store = MemStore::new();
        let a = load_or_create(&store, SigningAlg::EdDSA, KEEP)
            .await
            .unwrap();
        assert!(a.active.encoding().is_some());
        assert_eq!(a.jwks()["keys"][0]["kty"], "OKP");
        assert_eq!(a.jwks()["keys"][0]["kid"], &*a.active.kid);
        // The private key is stored sealed, never in clear.
        let rec = store.read(&key_path(&a.active.kid)).await.unwrap().unwrap();
        assert!(
            rec.data["privateKey"]
                .as_str()
                .unwrap()
                .starts_with("sealed:")
        );
        let b = load_or_create(&store, SigningAlg::EdDSA, KEEP)
            .await
            .unwrap();
        assert_eq!(a.active.kid, b.active.kid);
    }

    #[tokio::test]
    async fn racing_replicas_converge_on_one_key() {
        let store = MemStore::new();
        let (a, b) = tokio::join!(
            load_or_create(&store, SigningAlg::EdDSA, KEEP),
            load_or_create(&store, SigningAlg::EdDSA, KEEP)
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        assert_eq!(a.active.kid, b.active.kid);
        assert_eq!(store.list(KEYS_PREFIX).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn changing_algorithm_rotates_and_keeps_the_old_key() {
        let store = MemStore::new();
        let ed = load_or_create(&store, SigningAlg::EdDSA, KEEP)
            .await
            .unwrap();
        let es = load_or_create(&store, SigningAlg::ES256, KEEP)
            .await
            .unwrap();
        assert_eq!(es.active.alg, Algorithm::ES256);
        assert!(es.get(&ed.active.kid).is_some());
        assert_eq!(es.jwks()["keys"].as_array().unwrap().len(), 2);
        // A replica still on the old set picks the rotation up.
        let next = reload(&store, &ed, KEEP).await.unwrap().unwrap();
        assert_eq!(next.active.kid, es.active.kid);
        assert!(next.active.encoding().is_some());
        assert!(reload(&store, &next, KEEP).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn rs256_keys_are_published_and_reload() {
        let store = MemStore::new();
        let set = load_or_create(&store, SigningAlg::RS256, KEEP)
            .await
            .unwrap();
        assert_eq!(set.active.alg, Algorithm::RS256);
        let jwk = &set.jwks()["keys"][0];
        assert_eq!(
            (jwk["kty"].as_str(), jwk["alg"].as_str()),
            (Some("RSA"), Some("RS256"))
        );
        assert!(jwk.get("d").is_none());
        let again = load_or_create(&store, SigningAlg::RS256, KEEP)
            .await
            .unwrap();
        assert_eq!(again.active.kid, set.active.kid);
        assert!(again.active.encoding().is_some());
    }
}
