//! Access tokens: RFC 9068 JWTs (`typ: at+jwt`), their signing, verification
//! and the validation cache.
//!
//! Verification is split in two: [`verify`] checks what never changes for a
//! given token (signature, algorithm pinned by `kid`, `typ`, `iss`, claim
//! shapes) and its result is cached by the token's SHA-256 digest; the checks
//! that depend on time or on mutable state (expiry, audience, client status,
//! revocation) run on every request in [`super::Authority::authenticate`].

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Header, Validation};
use ring::digest;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::Tenants;
use super::keys::{KeySet, SigningKey};
use crate::error::AuthFailure;

/// Clock skew tolerated on `exp` and `nbf` (SPEC: at most 60 s).
pub(crate) const LEEWAY_SECS: u64 = 30;

/// The `typ` header of access tokens (RFC 9068 §2.1).
pub(crate) const TYP: &str = "at+jwt";

/// Entries the validation cache holds at most.
const CACHE_CAPACITY: u64 = 100_000;

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

/// Expires each entry when its token does (plus leeway).
struct UntilExp;

impl moka::Expiry<Digest, Arc<Verified>> for UntilExp {
    fn expire_after_create(
        &self,
        _key: &Digest,
        value: &Arc<Verified>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let left = value
            .exp
            .saturating_add(LEEWAY_SECS)
            .saturating_sub(unix_now());
        Some(Duration::from_secs(left))
    }
}

/// Successful signature verifications, keyed by token digest.
pub(crate) struct ValidationCache {
    cache: moka::sync::Cache<Digest, Arc<Verified>>,
}

impl ValidationCache {
    pub(crate) fn new() -> Self {
        ValidationCache {
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .expire_after(UntilExp)
                .build(),
        }
    }

    /// The cached verification, or `verify` run and cached on success.
    pub(crate) fn get_or_verify(
        &self,
        token: &str,
        verify: impl FnOnce() -> Result<Verified, AuthFailure>,
    ) -> Result<Arc<Verified>, AuthFailure> {
        let key = digest(token);
        if let Some(v) = self.cache.get(&key) {
            return Ok(v);
        }
        let v = Arc::new(verify()?);
        self.cache.insert(key, v.clone());
        Ok(v)
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, token: &str) -> bool {
        self.cache.contains_key(&digest(token))
    }
}
