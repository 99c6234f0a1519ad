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
//!
//! The keys themselves (JWK parsing, kids, generation) are in [`material`].

mod material;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use jsonwebtoken::Algorithm;
use ring::rand::SystemRandom;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::config::SigningAlg;
use crate::store::{Cas, INTERNAL_KEYRING, Store, StoreError};
pub(crate) use material::SigningKey;
use material::{generate, is_kid, new_kid, wanted_alg, with_private};

pub(crate) const KEYS_PREFIX: &str = "_credgate/signing-keys";
pub(crate) const ACTIVE_PATH: &str = "_credgate/signing-keys-active";

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

    /// Moves a key's `retiredAt` stamp (check-and-set on its current version).
    async fn stamp_retired_at(store: &MemStore, kid: &str, at: i64) {
        let rec = store.read(&key_path(kid)).await.unwrap().unwrap();
        let mut data = rec.data;
        data.insert("retiredAt".into(), json!(at));
        store
            .write(
                &key_path(kid),
                data,
                BTreeMap::new(),
                Cas::Version(rec.version),
            )
            .await
            .unwrap();
    }

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
        stamp_retired_at(&store, &old, at - KEEP.keep_secs + 600).await;
        let again = load_or_create(&store, SigningAlg::EdDSA, KEEP)
            .await
            .unwrap();
        assert!(again.get(&old).is_some());
        // Past retention (every token it signed has expired): gone.
        stamp_retired_at(&store, &old, at - KEEP.keep_secs - 1).await;
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
