//! Tokens that must be refused: forged, tampered, misdirected, stale.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{EncodingKey, Header};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::*;
use crate::oauth::jwt::{AccessClaims, sign};
use crate::oauth::testing::{GITHUB, PUBLIC, authority};

/// A fresh authority, a client, and valid claims for it (aud = issuer).
async fn setup() -> (Authority, AccessClaims) {
    let (a, _) = authority().await;
    let (c, _) = client(&a).await;
    let now = jwt::unix_now();
    let claims = AccessClaims {
        iss: PUBLIC.into(),
        sub: c.client_id.to_string(),
        aud: PUBLIC.into(),
        exp: now + 600,
        iat: now,
        nbf: now,
        jti: "0123456789abcdef0123456789abcdef".into(),
        scope: "mcp".into(),
        client_id: c.client_id.to_string(),
        tenants: Tenants::One("tenant-1".into()),
    };
    (a, claims)
}

fn signed(a: &Authority, claims: &AccessClaims) -> String {
    sign(&a.keys().active, claims)
        .unwrap()
        .expose_secret()
        .to_owned()
}

fn reassemble(header: &Value, payload: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{sig}",
        B64.encode(header.to_string()),
        B64.encode(payload.to_string())
    )
}

fn parts(token: &str) -> (Value, Value, String) {
    let p: Vec<&str> = token.split('.').collect();
    let dec = |s: &str| serde_json::from_slice(&B64.decode(s).unwrap()).unwrap();
    (dec(p[0]), dec(p[1]), p[2].to_owned())
}

#[tokio::test]
async fn a_good_token_passes() {
    let (a, claims) = setup().await;
    assert!(check(&a, &signed(&a, &claims), None).is_ok());
}

#[tokio::test]
async fn forged_and_tampered_tokens_are_refused() {
    let (a, claims) = setup().await;
    let good = signed(&a, &claims);
    let (header, payload, sig) = parts(&good);

    // alg none, with and without a signature.
    let mut none = header.clone();
    none["alg"] = json!("none");
    for s in ["", &sig] {
        let t = reassemble(&none, &payload, s);
        assert_eq!(check(&a, &t, None).unwrap_err(), AuthFailure::Malformed);
    }

    // Another algorithm named in the header: the kid pins EdDSA.
    let mut es = header.clone();
    es["alg"] = json!("ES256");
    let t = reassemble(&es, &payload, &sig);
    assert_eq!(check(&a, &t, None).unwrap_err(), AuthFailure::BadSignature);

    // HS256 keyed with our public key (the classic confusion attack).
    let x = a.keys().active.jwk["x"].as_str().unwrap().to_owned();
    let mut hs = Header::new(jsonwebtoken::Algorithm::HS256);
    hs.typ = Some("at+jwt".into());
    hs.kid = Some(a.keys().active.kid.to_string());
    for secret in [x.as_bytes().to_vec(), B64.decode(&x).unwrap()] {
        let t = jsonwebtoken::encode(&hs, &claims, &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(check(&a, &t, None).unwrap_err(), AuthFailure::BadSignature);
    }

    // Tampered payload (more scopes), original signature.
    let mut more = payload.clone();
    more["scope"] = json!("mcp admin");
    let t = reassemble(&header, &more, &sig);
    assert_eq!(check(&a, &t, None).unwrap_err(), AuthFailure::BadSignature);

    // Unknown kid.
    let mut other = header.clone();
    other["kid"] = json!("k0000000000000000");
    let t = reassemble(&other, &payload, &sig);
    assert_eq!(check(&a, &t, None).unwrap_err(), AuthFailure::BadSignature);

    // A plain JWT (typ JWT) is not an access token.
    let mut plain = header.clone();
    plain["typ"] = json!("JWT");
    let t = reassemble(&plain, &payload, &sig);
    assert_eq!(check(&a, &t, None).unwrap_err(), AuthFailure::Malformed);

    // Garbage.
    for t in ["", "a.b", "a.b.c", "...."] {
        assert!(check(&a, t, None).is_err(), "{t}");
    }
}

#[tokio::test]
async fn wrong_issuer_or_audience_is_refused() {
    let (a, claims) = setup().await;
    let mut iss = claims.clone();
    iss.iss = "http://evil.example".into();
    assert_eq!(
        check(&a, &signed(&a, &iss), None).unwrap_err(),
        AuthFailure::Malformed
    );
    let mut aud = claims.clone();
    aud.aud = "http://evil.example".into();
    let t = signed(&a, &aud);
    assert_eq!(check(&a, &t, None).unwrap_err(), AuthFailure::WrongAudience);
    assert_eq!(
        check(&a, &t, Some(GITHUB)).unwrap_err(),
        AuthFailure::WrongAudience
    );
    let mut sub = claims;
    sub.sub = "cg-00000000000000000000".into();
    assert_eq!(
        check(&a, &signed(&a, &sub), None).unwrap_err(),
        AuthFailure::Malformed
    );
}

#[tokio::test]
async fn expired_and_not_yet_valid_tokens_are_refused_with_bounded_leeway() {
    let (a, claims) = setup().await;
    let t = signed(&a, &claims);
    let at = |now| a.authenticate_at(&bearer(&t), None, None, now);
    assert!(at(claims.exp + jwt::LEEWAY_SECS).is_ok());
    assert_eq!(
        at(claims.exp + jwt::LEEWAY_SECS + 1).unwrap_err(),
        AuthFailure::Expired
    );
    let mut future = claims.clone();
    future.nbf = claims.iat + 3600;
    let f = signed(&a, &future);
    assert_eq!(
        a.authenticate_at(&bearer(&f), None, None, claims.iat)
            .unwrap_err(),
        AuthFailure::Malformed
    );
    const { assert!(jwt::LEEWAY_SECS <= 60) };
}

#[tokio::test]
async fn revoked_tokens_are_refused() {
    let (a, claims) = setup().await;
    let t = signed(&a, &claims);
    let v = a.verify_token(&t).unwrap();
    a.revocations
        .revoke(&*a.store, &a.changes, &v)
        .await
        .unwrap();
    assert_eq!(check(&a, &t, None).unwrap_err(), AuthFailure::Revoked);
}
