//! `private_key_jwt` client authentication (RFC 7523 §2.2, §3): a client
//! registered with public keys (`jwks`) signs a short-lived JWT instead of
//! sending a secret.
//!
//! Accepted: `iss` = `sub` = the client id; `aud` naming the issuer (with or
//! without a trailing `/`, as the MCP SDK normalizes it) or the token
//! endpoint; `exp` required, at most [`MAX_ASSERTION_LIFETIME`] (5 minutes)
//! ahead of now and of `iat` when present (a longer-lived assertion would be
//! a bearer secret in all but name); `jti` required; the algorithm pinned by
//! the registered key, never by the assertion.
//!
//! Assertions are single-use (RFC 7523 §3 point 7): [`SeenAssertions`]
//! remembers each verified `(client, jti)` until the assertion expires, and a
//! second presentation is refused. The memory is per process: a replica
//! does not see the `jti`s another replica accepted, so across N replicas an
//! intercepted assertion could be replayed at most N-1 more times within its
//! 5 minutes. Entries are bounded ([`MAX_SEEN`]); when full of unexpired
//! entries, new assertions are refused rather than forgotten.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::jwt::LEEWAY_SECS;

pub(crate) const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Longest an assertion may still be valid when presented, and longest
/// from `iat` to `exp`.
pub(crate) const MAX_ASSERTION_LIFETIME: u64 = 300;

/// Most `jti`s remembered at once (about 100 bytes each).
pub(crate) const MAX_SEEN: usize = 100_000;

/// Longest `jti` accepted.
const MAX_JTI_LEN: usize = 256;

/// Keys a client may register.
const MAX_KEYS: usize = 5;

/// Members a public JWK may carry; anything else (notably `d`, `p`, `k`) is
/// refused at registration.
const PUBLIC_MEMBERS: &[&str] = &["kty", "crv", "x", "y", "n", "e", "kid", "alg", "use"];

/// Assertion algorithms, for `token_endpoint_auth_signing_alg_values_supported`.
pub(crate) const ALGORITHMS: &[&str] = &["EdDSA", "ES256", "RS256", "PS256"];

fn b64_len(jwk: &Map<String, Value>, member: &str) -> Result<usize, String> {
    let s = jwk
        .get(member)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("jwks: `{member}` is required"))?;
    B64.decode(s)
        .map(|b| b.len())
        .map_err(|_| format!("jwks: `{member}` must be base64url"))
}

/// The algorithms a key may verify, and the key itself. The length checks
/// matter: the verifier slices Ed25519 keys to 32 bytes and would panic on
/// a shorter one.
fn decoding_key(jwk: &Map<String, Value>) -> Result<(Vec<Algorithm>, DecodingKey), String> {
    let kty = jwk.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = jwk.get("crv").and_then(Value::as_str).unwrap_or("");
    let s = |m: &str| jwk.get(m).and_then(Value::as_str).unwrap_or("").to_owned();
    let (algs, key) = match (kty, crv) {
        ("OKP", "Ed25519") => {
            if b64_len(jwk, "x")? != 32 {
                return Err("jwks: an Ed25519 `x` is 32 bytes".into());
            }
            (
                vec![Algorithm::EdDSA],
                DecodingKey::from_ed_components(&s("x")),
            )
        }
        ("EC", "P-256") => {
            if b64_len(jwk, "x")? != 32 || b64_len(jwk, "y")? != 32 {
                return Err("jwks: P-256 `x` and `y` are 32 bytes".into());
            }
            (
                vec![Algorithm::ES256],
                DecodingKey::from_ec_components(&s("x"), &s("y")),
            )
        }
        ("RSA", _) => {
            if b64_len(jwk, "n")? < 256 || b64_len(jwk, "e")? == 0 {
                return Err("jwks: RSA keys need a modulus of at least 2048 bits".into());
            }
            let algs = vec![Algorithm::RS256, Algorithm::PS256];
            (algs, DecodingKey::from_rsa_components(&s("n"), &s("e")))
        }
        _ => return Err("jwks: keys must be OKP/Ed25519, EC/P-256 or RSA".into()),
    };
    let key = key.map_err(|_| "jwks: key does not parse".to_owned())?;
    let algs = match jwk.get("alg").and_then(Value::as_str) {
        None => algs,
        Some(a) => {
            let named = algs
                .into_iter()
                .filter(|x| alg_str(*x) == a)
                .collect::<Vec<_>>();
            if named.is_empty() {
                return Err(format!("jwks: alg `{a}` does not fit the key type"));
            }
            named
        }
    };
    Ok((algs, key))
}

fn alg_str(a: Algorithm) -> &'static str {
    match a {
        Algorithm::EdDSA => "EdDSA",
        Algorithm::ES256 => "ES256",
        Algorithm::RS256 => "RS256",
        Algorithm::PS256 => "PS256",
        _ => "",
    }
}

/// Validates a registration's `jwks` (`{"keys": [...]}`, or a single JWK)
/// and returns it with public members only.
pub(crate) fn validate_jwks(v: Value) -> Result<Value, String> {
    let keys = match v {
        Value::Object(mut m) if m.contains_key("keys") => match m.remove("keys") {
            Some(Value::Array(keys)) => keys,
            _ => return Err("jwks: `keys` must be an array".into()),
        },
        single @ Value::Object(_) => vec![single],
        _ => return Err("jwks must be a JWK set or a JWK".into()),
    };
    if keys.is_empty() || keys.len() > MAX_KEYS {
        return Err(format!("jwks: give 1 to {MAX_KEYS} keys"));
    }
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let Value::Object(jwk) = key else {
            return Err("jwks: each key must be an object".into());
        };
        if let Some(m) = jwk.keys().find(|m| !PUBLIC_MEMBERS.contains(&m.as_str())) {
            return Err(format!(
                "jwks: member `{m}` is not allowed (public keys only)"
            ));
        }
        if jwk.get("use").is_some_and(|u| u != "sig") {
            return Err("jwks: `use` must be `sig`".into());
        }
        decoding_key(&jwk)?;
        out.push(Value::Object(jwk));
    }
    Ok(json!({ "keys": out }))
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    aud: Audience,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    iat: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
}

/// A verified assertion: what replay protection needs.
#[derive(Debug, PartialEq)]
pub(crate) struct Accepted {
    pub(crate) jti: String,
    /// Until when the assertion would be accepted (its `exp` plus leeway).
    pub(crate) until: u64,
}

/// The `jti`s of assertions already used, per client, until they expire.
#[derive(Debug, Default)]
pub(crate) struct SeenAssertions {
    by_key: std::sync::Mutex<std::collections::HashMap<(String, String), u64>>,
}

impl SeenAssertions {
    /// Records the assertion; false when it was used before (a replay) or
    /// the memory is full of unexpired ones.
    pub(crate) fn first_use(&self, client_id: &str, a: &Accepted, now: u64) -> bool {
        let mut map = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        let key = (client_id.to_owned(), a.jti.clone());
        if map.get(&key).is_some_and(|until| *until >= now) {
            return false;
        }
        if map.len() >= MAX_SEEN {
            map.retain(|_, until| *until >= now);
            if map.len() >= MAX_SEEN {
                tracing::warn!("too many live client assertions remembered; refusing new ones");
                return false;
            }
        }
        map.insert(key, a.until);
        true
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

/// The client id an assertion claims (its `sub`), read before verification
/// only to find the keys to verify it with.
pub(crate) fn claimed_client_id(assertion: &str) -> Option<String> {
    let payload = assertion.split('.').nth(1)?;
    let claims: Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
    claims.get("sub")?.as_str().map(str::to_owned)
}

/// Verifies `assertion` for `client_id` against the registered `jwks`.
/// `audiences` are the accepted `aud` values.
pub(crate) fn verify(
    assertion: &str,
    client_id: &str,
    jwks: &Value,
    audiences: &[&str],
    now: u64,
) -> Option<Accepted> {
    let Ok(header) = jsonwebtoken::decode_header(assertion) else {
        return None;
    };
    let keys = jwks["keys"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    keys.iter()
        .filter_map(Value::as_object)
        .filter(
            |jwk| match (&header.kid, jwk.get("kid").and_then(Value::as_str)) {
                (Some(want), Some(have)) => want == have,
                _ => true,
            },
        )
        .filter_map(|jwk| decoding_key(jwk).ok())
        .filter(|(algs, _)| algs.contains(&header.alg))
        .find_map(|(_, key)| check(assertion, header.alg, &key, client_id, audiences, now))
}

fn check(
    assertion: &str,
    alg: Algorithm,
    key: &DecodingKey,
    client_id: &str,
    audiences: &[&str],
    now: u64,
) -> Option<Accepted> {
    let mut validation = Validation::new(alg);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let Ok(data) = jsonwebtoken::decode::<AssertionClaims>(assertion, key, &validation) else {
        return None;
    };
    let c = data.claims;
    let aud_ok = match &c.aud {
        Audience::One(a) => audiences.contains(&a.as_str()),
        Audience::Many(list) => list.iter().any(|a| audiences.contains(&a.as_str())),
    };
    let jti = c.jti.filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)?;
    let ok = c.iss == client_id
        && c.sub == client_id
        && aud_ok
        && now <= c.exp.saturating_add(LEEWAY_SECS)
        && c.exp <= now + MAX_ASSERTION_LIFETIME + LEEWAY_SECS
        && c.iat
            .is_none_or(|iat| c.exp.saturating_sub(iat) <= MAX_ASSERTION_LIFETIME)
        && c.nbf.is_none_or(|nbf| nbf <= now + LEEWAY_SECS);
    ok.then(|| Accepted {
        jti,
        until: c.exp.saturating_add(LEEWAY_SECS),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use ring::rand::SystemRandom;
    use ring::signature::{Ed25519KeyPair, KeyPair};

    /// An Ed25519 key pair: its signing key and public JWK.
    pub(crate) fn ed25519() -> (EncodingKey, Value) {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
        let x = B64.encode(pair.public_key().as_ref());
        let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"});
        (EncodingKey::from_ed_der(doc.as_ref()), jwk)
    }

    pub(crate) fn assertion(key: &EncodingKey, claims: Value) -> String {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some("k1".into());
        jsonwebtoken::encode(&h, &claims, key).unwrap()
    }

    const AUD: &[&str] = &["http://as", "http://as/", "http://as/oauth/token"];

    #[test]
    fn registration_refuses_private_or_odd_keys() {
        let (_, jwk) = ed25519();
        assert!(validate_jwks(jwk.clone()).is_ok());
        assert!(validate_jwks(json!({"keys": [jwk.clone()]})).is_ok());
        let mut private = jwk.clone();
        private["d"] = json!("AAAA");
        assert!(validate_jwks(private).unwrap_err().contains("`d`"));
        let mut short = jwk.clone();
        short["x"] = json!("AAAA");
        assert!(validate_jwks(short).is_err());
        let mut alg = jwk;
        alg["alg"] = json!("RS256");
        assert!(validate_jwks(alg).is_err());
        assert!(validate_jwks(json!({"kty": "oct", "k": "AAAA"})).is_err());
        assert!(validate_jwks(json!({"keys": []})).is_err());
    }

    #[test]
    fn assertion_checks() {
        let (key, jwk) = ed25519();
        let jwks = validate_jwks(jwk).unwrap();
        let now = 1_000_000;
        let good = json!({"iss": "cg-1", "sub": "cg-1", "aud": "http://as/", "exp": now + 300, "jti": "j"});
        assert_eq!(
            verify(&assertion(&key, good.clone()), "cg-1", &jwks, AUD, now),
            Some(Accepted {
                jti: "j".into(),
                until: now + 300 + LEEWAY_SECS
            })
        );
        assert_eq!(
            claimed_client_id(&assertion(&key, good.clone())).as_deref(),
            Some("cg-1")
        );
        let bad = |change: Value| {
            let mut c = good.clone();
            c.as_object_mut()
                .unwrap()
                .extend(change.as_object().unwrap().clone());
            verify(&assertion(&key, c), "cg-1", &jwks, AUD, now).is_none()
        };
        assert!(bad(json!({"aud": "http://elsewhere"})));
        assert!(bad(json!({"aud": ["http://elsewhere"]})));
        assert!(!bad(json!({"aud": ["x", "http://as/oauth/token"]})));
        assert!(bad(json!({"iss": "cg-2"})));
        assert!(bad(json!({"sub": "cg-2"})));
        assert!(bad(json!({"exp": now - 120})));
        assert!(bad(json!({"exp": now + 86_400})));
        // Lifetime capped at 5 minutes, from now and from iat.
        assert!(bad(json!({"exp": now + 300 + LEEWAY_SECS + 1})));
        assert!(bad(json!({"iat": now - 100, "exp": now + 250})));
        assert!(!bad(json!({"iat": now, "exp": now + 300})));
        // jti is required, and bounded.
        let mut no_jti = good.clone();
        no_jti.as_object_mut().unwrap().remove("jti");
        assert!(verify(&assertion(&key, no_jti), "cg-1", &jwks, AUD, now).is_none());
        assert!(bad(json!({"jti": ""})));
        assert!(bad(json!({"jti": "x".repeat(300)})));
        assert!(bad(json!({"nbf": now + 600})));
        // Someone else's key.
        let (other, _) = ed25519();
        assert!(verify(&assertion(&other, good), "cg-1", &jwks, AUD, now).is_none());
    }

    #[test]
    fn an_assertion_is_used_once_until_it_expires() {
        let seen = SeenAssertions::default();
        let a = Accepted {
            jti: "j1".into(),
            until: 1_000,
        };
        assert!(seen.first_use("c1", &a, 900));
        assert!(!seen.first_use("c1", &a, 950), "replay accepted");
        assert!(
            seen.first_use("c2", &a, 950),
            "another client's jti is its own"
        );
        // After expiry the assertion is refused by `verify` anyway; the
        // entry may go.
        assert!(seen.first_use("c1", &a, 1_001));
    }
}
