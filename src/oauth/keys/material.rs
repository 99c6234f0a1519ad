//! Key material: a signing key and its public JWK, kid format, generation
//! of new key pairs (EdDSA, ES256, RS256). No store access; the lifecycle
//! of keys in the store is in [`super`].

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{self as ring_sig, KeyPair};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use crate::config::SigningAlg;
use crate::store::StoreError;

/// One signing key. The private half is present only for the active key.
pub(crate) struct SigningKey {
    pub(crate) kid: Arc<str>,
    pub(crate) alg: Algorithm,
    pub(crate) decoding: DecodingKey,
    /// The public JWK as published in `/.well-known/jwks.json`.
    pub(crate) jwk: Value,
    encoding: Option<EncodingKey>,
    /// Unix time a replica first saw this key no longer active.
    pub(super) retired_at: Option<i64>,
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
    pub(super) fn from_jwk(kid: &str, jwk: &Value) -> Result<Self, StoreError> {
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

/// Kids are ours: `k` + 16 hex digits. Anything else listed is ignored.
pub(super) fn is_kid(s: &str) -> bool {
    s.len() == 17 && s.starts_with('k') && s[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

pub(super) fn new_kid(rng: &SystemRandom) -> Result<String, StoreError> {
    let mut b = [0u8; 8];
    rng.fill(&mut b)
        .map_err(|_| StoreError::Refused("OS random number generator failed".into()))?;
    Ok(format!(
        "k{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ))
}

pub(super) fn wanted_alg(alg: SigningAlg) -> Result<Algorithm, StoreError> {
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
pub(super) fn generate(
    alg: Algorithm,
    kid: &str,
) -> Result<(Zeroizing<Vec<u8>>, Value), StoreError> {
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

pub(super) fn with_private(mut key: SigningKey, der: &[u8]) -> SigningKey {
    key.encoding = Some(match key.alg {
        Algorithm::ES256 => EncodingKey::from_ec_der(der),
        Algorithm::RS256 => EncodingKey::from_rsa_der(der),
        _ => EncodingKey::from_ed_der(der),
    });
    key
}
