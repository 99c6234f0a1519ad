//! Token request parsing.

use base64::engine::general_purpose::STANDARD;
use http::HeaderValue;
use secrecy::ExposeSecret;

use super::*;

fn headers(content_type: Option<&str>, authorization: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(ct) = content_type {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
    }
    if let Some(a) = authorization {
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
    }
    h
}

const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

#[test]
fn form_with_post_credentials() {
    let body = b"grant_type=client_credentials&client_id=cg-1&client_secret=s%2Bx&scope=a+b&resource=http%3A%2F%2Fh%2Fgithub";
    let r = parse(&headers(FORM, None), body).unwrap();
    assert_eq!(r.grant_type.as_deref(), Some("client_credentials"));
    assert_eq!(r.scope.as_deref(), Some("a b"));
    assert_eq!(r.resource.as_deref(), Some("http://h/github"));
    match r.auth {
        ClientAuth::Post { id, secret } => {
            assert_eq!((id.as_str(), secret.expose_secret()), ("cg-1", "s+x"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn json_body_and_charset_parameter() {
    let body = br#"{"grant_type":"client_credentials","client_id":"cg-1","client_secret":"s","scope":null}"#;
    let r = parse(
        &headers(Some("application/json; charset=utf-8"), None),
        body,
    )
    .unwrap();
    assert!(matches!(r.auth, ClientAuth::Post { .. }));
    assert_eq!(r.scope, None);
    let bad = br#"{"grant_type":"client_credentials","scope":["a"]}"#;
    assert!(parse(&headers(Some("application/json"), None), bad).is_err());
    assert!(parse(&headers(Some("application/json"), None), b"[1]").is_err());
}

#[test]
fn percent_encoded_basic_credentials_are_decoded() {
    // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
    let raw = format!("Basic {}", STANDARD.encode("my%3Aclient:p%40ss+word%2B"));
    let r = parse(&headers(FORM, Some(&raw)), b"grant_type=client_credentials").unwrap();
    match r.auth {
        ClientAuth::Basic { id, secret } => {
            assert_eq!(id, "my:client");
            assert_eq!(secret.expose_secret(), "p@ss word+");
        }
        other => panic!("{other:?}"),
    }
    // Unpadded base64 and a lowercase scheme are accepted too.
    let unpadded = format!("basic {}", STANDARD.encode("ab:c").trim_end_matches('='));
    let r = parse(&headers(FORM, Some(&unpadded)), b"").unwrap();
    assert!(matches!(r.auth, ClientAuth::Basic { ref id, .. } if id == "ab"));
}

#[test]
fn two_methods_at_once_or_half_credentials_are_invalid_requests() {
    let basic = format!("Basic {}", STANDARD.encode("cg-1:s"));
    let both = parse(
        &headers(FORM, Some(&basic)),
        b"client_id=cg-1&client_secret=s",
    );
    assert_eq!(both.unwrap_err().code, OAuthErrorCode::InvalidRequest);
    let other_id = parse(&headers(FORM, Some(&basic)), b"client_id=cg-2");
    assert_eq!(other_id.unwrap_err().code, OAuthErrorCode::InvalidRequest);
    // The same id in the body as in Basic is tolerated.
    assert!(parse(&headers(FORM, Some(&basic)), b"client_id=cg-1").is_ok());
    let no_id = parse(&headers(FORM, None), b"client_secret=s");
    assert_eq!(no_id.unwrap_err().code, OAuthErrorCode::InvalidRequest);
    let repeated = parse(&headers(FORM, None), b"scope=a&scope=b");
    assert_eq!(repeated.unwrap_err().code, OAuthErrorCode::InvalidRequest);
}

#[test]
fn malformed_or_foreign_authorization_is_not_basic() {
    for a in ["Basic !!!", "Basic bm9jb2xvbg==", "Bearer abc"] {
        let r = parse(&headers(FORM, Some(a)), b"grant_type=client_credentials").unwrap();
        assert!(matches!(r.auth, ClientAuth::Malformed), "{a}");
    }
    let r = parse(&headers(None, None), b"").unwrap();
    assert!(matches!(r.auth, ClientAuth::None));
    assert!(parse(&headers(Some("text/plain"), None), b"x").is_err());
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let r = parse(
        &headers(FORM, None),
        b"client_id=cg-1&client_secret=hunter2",
    )
    .unwrap();
    assert!(!format!("{r:?}").contains("hunter2"));
}
