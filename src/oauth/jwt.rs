//! Access tokens: RFC 9068 JWTs (`typ: at+jwt`), their signing, verification
//! and the validation cache.
//!
//! Verification is split in two: [`verify`] checks what never changes for a
//! given token (signature, algorithm pinned by `kid`, `typ`, `iss`, claim
//! shapes) and its result is cached by the token's SHA-256 digest (small
//! entries: the strings are the client's and the routes', shared); the checks
//! that depend on time or on mutable state (expiry, audience, client status,
//! revocation) run on every request in [`super::Authority::authenticate`].

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Header, Validation};
use ring::digest;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::Tenants;
use super::keys::{KeySet, SigningKey};
use crate::error::AuthFailure;

/// Clock skew tolerated on `exp` and `nbf` (docs/http-api.md: at most 60 s).
pub(crate) const LEEWAY_SECS: u64 = 30;

/// The `typ` header of access tokens (RFC 9068 §2.1).
pub(crate) const TYP: &str = "at+jwt";

/// Entries the validation cache holds at most.
const CACHE_CAPACITY: usize = 100_000;

/// The claims credgate puts in (and requires of) its access tokens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AccessClaims {
    pub(crate) iss: String,
    pub(crate) sub: String,
    pub(crate) aud: String,
    pub(crate) exp: u64,
    pub(crate) iat: u64,
    pub(crate) nbf: u64,
    pub(crate) jti: String,
    pub(crate) scope: String,
    pub(crate) client_id: String,
    #[serde(flatten)]
    pub(crate) tenants: Tenants,
}

/// Signs `claims` with `key`. The token is wrapped at once so it cannot end up
/// in a log line by accident.
pub(crate) fn sign(key: &SigningKey, claims: &AccessClaims) -> Option<SecretString> {
    let encoding = key.encoding()?;
    let mut header = Header::new(key.alg);
    header.typ = Some(TYP.into());
    header.kid = Some(key.kid.to_string());
    match jsonwebtoken::encode(&header, claims, encoding) {
        Ok(t) => Some(SecretString::from(t)),
        Err(e) => {
            tracing::error!(kid = %key.kid, error = %e, "signing an access token failed");
            None
        }
    }
}

/// What a verified token says; shared by every request presenting it.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) client_id: Arc<str>,
    pub(crate) tenants: Tenants,
    pub(crate) scopes: Arc<[Arc<str>]>,
    pub(crate) aud: Arc<str>,
    pub(crate) jti: Arc<str>,
    pub(crate) exp: u64,
    pub(crate) iat: u64,
    pub(crate) nbf: u64,
}

/// Checks signature, pinned algorithm, `typ`, `iss` and claim shapes.
pub(crate) fn verify(token: &str, keys: &KeySet, issuer: &str) -> Result<Verified, AuthFailure> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| AuthFailure::Malformed)?;
    let typ_ok = header.typ.as_deref().is_some_and(|t| {
        t.eq_ignore_ascii_case(TYP) || t.eq_ignore_ascii_case("application/at+jwt")
    });
    if !typ_ok || header.crit.is_some() {
        return Err(AuthFailure::Malformed);
    }
    let key = header
        .kid
        .as_deref()
        .and_then(|kid| keys.get(kid))
        .ok_or(AuthFailure::BadSignature)?;
    // The key decides the algorithm, never the token: `alg: HS256` with our
    // public key as the HMAC secret, or any other alg, is refused here.
    if header.alg != key.alg {
        return Err(AuthFailure::BadSignature);
    }
    let mut validation = Validation::new(key.alg);
    // Time and audience are checked per request (with an injected clock), not
    // here: this result is cached.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = jsonwebtoken::decode::<AccessClaims>(token, &key.decoding, &validation).map_err(
        |e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature
            | jsonwebtoken::errors::ErrorKind::InvalidAlgorithm => AuthFailure::BadSignature,
            _ => AuthFailure::Malformed,
        },
    )?;
    let c = data.claims;
    if c.iss != issuer || c.sub != c.client_id {
        return Err(AuthFailure::Malformed);
    }
    Ok(Verified {
        client_id: c.client_id.into(),
        tenants: c.tenants,
        scopes: c
            .scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(Arc::from)
            .collect(),
        aud: c.aud.into(),
        jti: c.jti.into(),
        exp: c.exp,
        iat: c.iat,
        nbf: c.nbf,
    })
}

/// `exp` and `nbf` against `now` (unix seconds), with [`LEEWAY_SECS`].
pub(crate) fn check_time(v: &Verified, now: u64) -> Result<(), AuthFailure> {
    if now > v.exp.saturating_add(LEEWAY_SECS) {
        return Err(AuthFailure::Expired);
    }
    if v.nbf > now.saturating_add(LEEWAY_SECS) {
        return Err(AuthFailure::Malformed);
    }
    Ok(())
}

/// An issuer-audience token is good everywhere; a resource-audience token
/// only on that resource. The admin API (`resource = None`) takes only the
/// former.
pub(crate) fn check_audience(
    v: &Verified,
    issuer: &str,
    resource: Option<&str>,
) -> Result<(), AuthFailure> {
    let aud = &*v.aud;
    if aud == issuer || resource == Some(aud) {
        Ok(())
    } else {
        Err(AuthFailure::WrongAudience)
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// SHA-256 of the token: the cache key, so raw tokens are never kept.
pub(crate) type Digest = [u8; 32];

pub(crate) fn digest(token: &str) -> Digest {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// Shards of the validation cache (a read takes one shard's read lock).
const SHARDS: usize = 16;

/// How often (seconds) a shard drops the entries of expired tokens, checked
/// when something is inserted.
const PURGE_EVERY_SECS: u64 = 60;

/// Entries looked at to pick the one to evict from a full shard.
const EVICTION_SAMPLE: usize = 8;

/// Whether the token of `v` is past `exp` plus leeway at `now`.
fn expired(v: &Verified, now: u64) -> bool {
    now > v.exp.saturating_add(LEEWAY_SECS)
}

/// Hashes a [`Digest`] by its first eight bytes: it is already uniform, and
/// callers cannot choose it (it is a SHA-256 of the token).
#[derive(Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // `[u8; 32]` hashes as its length, then its bytes.
        if let Some(first) = bytes.first_chunk::<8>() {
            self.0 = u64::from_le_bytes(*first);
        }
    }
}

type DigestMap = HashMap<Digest, Arc<Verified>, BuildHasherDefault<DigestHasher>>;

#[derive(Default)]
struct Shard {
    map: DigestMap,
    /// When expired entries were last dropped (unix seconds).
    purged_at: u64,
}

/// Successful signature verifications, keyed by token digest: at most
/// `capacity` entries; an entry stays until its token expires (dropped within
/// [`PURGE_EVERY_SECS`] after that) or a full shard needs its room, then the
/// entry of a small sample expiring first goes. Expiry itself is checked per
/// request by [`check_time`], never trusted to the cache.
pub(crate) struct ValidationCache {
    shards: Box<[RwLock<Shard>]>,
    per_shard: usize,
}

impl ValidationCache {
    pub(crate) fn new() -> Self {
        Self::with_capacity(CACHE_CAPACITY)
    }

    fn with_capacity(capacity: usize) -> Self {
        ValidationCache {
            shards: (0..SHARDS).map(|_| RwLock::default()).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &Digest) -> &RwLock<Shard> {
        // Not the bytes the map hashes with, so a shard's map stays uniform.
        &self.shards[usize::from(key[31]) % SHARDS]
    }

    /// The cached verification, or `verify` run and cached on success.
    pub(crate) fn get_or_verify(
        &self,
        token: &str,
        verify: impl FnOnce() -> Result<Verified, AuthFailure>,
    ) -> Result<Arc<Verified>, AuthFailure> {
        let key = digest(token);
        let shard = self.shard(&key);
        if let Some(v) = read(shard).map.get(&key) {
            return Ok(v.clone());
        }
        let v = Arc::new(verify()?);
        self.insert(shard, key, v.clone(), unix_now());
        Ok(v)
    }

    fn insert(&self, shard: &RwLock<Shard>, key: Digest, v: Arc<Verified>, now: u64) {
        let mut s = shard.write().unwrap_or_else(PoisonError::into_inner);
        if now >= s.purged_at.saturating_add(PURGE_EVERY_SECS) {
            s.map.retain(|_, v| !expired(v, now));
            s.purged_at = now;
        }
        if s.map.len() >= self.per_shard && !s.map.contains_key(&key) {
            // Sample from a point the new digest picks, so it is not always
            // the same region of the table that goes.
            let skip = usize::from(u16::from_le_bytes([key[29], key[30]])) % s.map.len();
            let victim = (s.map.iter().cycle().skip(skip).take(EVICTION_SAMPLE))
                .min_by_key(|(_, v)| v.exp)
                .map(|(k, _)| *k);
            if let Some(k) = victim {
                s.map.remove(&k);
            }
        }
        s.map.insert(key, v);
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, token: &str) -> bool {
        let key = digest(token);
        read(self.shard(&key)).map.contains_key(&key)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| read(s).map.len()).sum()
    }
}

fn read(shard: &RwLock<Shard>) -> std::sync::RwLockReadGuard<'_, Shard> {
    shard.read().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod cache_tests {
    use super::*;

    fn verified(exp: u64) -> Verified {
        Verified {
            client_id: "cg-00000000000000000001".into(),
            tenants: Tenants::One("t".into()),
            scopes: Arc::new([]),
            aud: "a".into(),
            jti: "j".into(),
            exp,
            iat: 0,
            nbf: 0,
        }
    }

    #[test]
    fn a_hit_shares_the_entry_and_skips_verification() {
        let cache = ValidationCache::new();
        let now = unix_now();
        let first = cache
            .get_or_verify("t1", || Ok(verified(now + 60)))
            .unwrap();
        let again = cache
            .get_or_verify("t1", || panic!("verified twice"))
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let err = cache.get_or_verify("t2", || Err(AuthFailure::BadSignature));
        assert_eq!(err.unwrap_err(), AuthFailure::BadSignature);
        assert!(cache.contains("t1") && !cache.contains("t2"));
    }

    #[test]
    fn the_capacity_holds_and_entries_expiring_first_go_first() {
        // A shard as small as the eviction sample: the sample is the shard.
        let cache = ValidationCache::with_capacity(SHARDS * EVICTION_SAMPLE);
        let now = unix_now();
        let tokens: Vec<String> = (0..SHARDS * 40).map(|i| format!("tok-{i}")).collect();
        let long_lived = &tokens[..SHARDS * 4];
        for t in &tokens {
            let exp = if long_lived.contains(t) {
                now + 3600
            } else {
                now + 60
            };
            cache.get_or_verify(t, || Ok(verified(exp))).unwrap();
            assert!(cache.len() <= SHARDS * EVICTION_SAMPLE);
        }
        // Each shard keeps its long-lived entries, as many as fit.
        let mut expected = 0;
        for shard in &cache.shards {
            let here = long_lived
                .iter()
                .filter(|t| std::ptr::eq(cache.shard(&digest(t)), shard))
                .count();
            expected += here.min(EVICTION_SAMPLE);
        }
        let kept = long_lived.iter().filter(|t| cache.contains(t)).count();
        assert_eq!(kept, expected);
        assert_eq!(cache.len(), SHARDS * EVICTION_SAMPLE);
    }

    #[test]
    fn expired_entries_are_dropped_at_the_next_purge() {
        let cache = ValidationCache::new();
        let now = unix_now();
        let key = digest("old");
        let shard = cache.shard(&key);
        cache.insert(shard, key, Arc::new(verified(now - LEEWAY_SECS - 5)), now);
        assert!(cache.contains("old"));
        let later = now + PURGE_EVERY_SECS;
        cache.insert(shard, digest("new"), Arc::new(verified(later + 60)), later);
        assert!(!cache.contains("old"));
    }
}
