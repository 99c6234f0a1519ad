//! Property tests (issue #9) of the OAuth parsers that take outside bytes:
//! `/oauth/token`, `/oauth/introspect`, `/oauth/revoke` bodies (form, JSON)
//! and HTTP Basic credentials, `private_key_jwt` client assertions, and the
//! bearer-token (JWT) validation of every proxied and admin request.
//!
//! Properties: nothing panics; every refusal is a well-formed 4xx body (never
//! a 5xx); a token is issued only to a request that carried the real secret
//! or a valid assertion; no answer echoes the client secret; a changed token
//! is never accepted.

mod prop_support;

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use prop_support::*;
use proptest::prelude::*;
use serde_json::{Value, json};

/// Splits a `token_request` seed: content type, Authorization, body.
fn split_request(bytes: &[u8]) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut it = bytes.splitn(3, |b| *b == b'\n');
    let ct = it.next().unwrap_or_default().to_vec();
    let auth = it.next().unwrap_or_default().to_vec();
    let body = it.next().unwrap_or_default().to_vec();
    (ct, auth, body)
}

fn percent_decoded(bytes: &[u8]) -> String {
    let plus: Vec<u8> = bytes
        .iter()
        .map(|b| if *b == b'+' { b' ' } else { *b })
        .collect();
    percent_encoding::percent_decode(&plus)
        .decode_utf8_lossy()
        .into_owned()
}

/// Whether the request carried the real credentials somewhere a lenient
/// reading could find them (so a 200 is legitimate).
fn carries_credentials(fx: &Fixture, assertion: &str, auth: &[u8], body: &[u8]) -> bool {
    let body_text = percent_decoded(body);
    let auth_text = String::from_utf8_lossy(auth);
    let basic = auth_text
        .split_once(' ')
        .and_then(|(_, b)| {
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(b.trim().trim_end_matches('='))
                .ok()
        })
        .map(|d| percent_decoded(&d))
        .unwrap_or_default();
    body_text.contains(&fx.secret) || basic.contains(&fx.secret) || body_text.contains(assertion)
}

#[test]
fn token_endpoint_bodies_and_auth() {
    let rt = runtime();
    let fx = rt.block_on(fixture());
    let vars = fx.vars();
    let assertion = vars
        .iter()
        .find(|(k, _)| *k == "ASSERTION")
        .unwrap()
        .1
        .clone();
    let vars_ref: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let seeds = seeds("token_request", &vars_ref);
    let paths = ["/oauth/token", "/oauth/introspect", "/oauth/revoke"];

    let check = |bytes: &[u8], path: &str| {
        let (ct, auth, body) = split_request(bytes);
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        if !ct.is_empty() {
            headers.push(("content-type", &ct));
        }
        if !auth.is_empty() {
            headers.push(("authorization", &auth));
        }
        let (status, text, resp_headers) = rt.block_on(fx.oauth(path, &headers, body.clone()));
        assert!(
            matches!(status, 200 | 400 | 401 | 403 | 429),
            "{path}: status {status} for {bytes:?}: {text}"
        );
        assert!(
            !text.contains(&fx.secret),
            "{path}: answer echoes the client secret: {text}"
        );
        if path == "/oauth/token" {
            if status == 200 {
                assert!(
                    carries_credentials(&fx, &assertion, &auth, &body),
                    "token issued without credentials for {bytes:?}: {text}"
                );
                let v: Value = serde_json::from_str(&text).unwrap();
                assert!(v["access_token"].is_string(), "{text}");
                assert_eq!(resp_headers.get("cache-control").unwrap(), "no-store");
            } else {
                assert_oauth_error(status, &text);
            }
        }
    };

    for (_, seed) in &seeds {
        for path in paths {
            check(seed, path);
        }
    }
    // Seeds that carry valid credentials and nothing odd must succeed, each
    // with an assertion not presented before (assertions are single-use: the
    // shared one was spent above); presented again, it is refused.
    for name in [
        "01-form-basic",
        "02-form-post",
        "03-json-post",
        "04-form-assertion",
        "05-json-assertion",
    ] {
        let fresh = fx.vars();
        let fresh: Vec<(&str, &str)> = fresh.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let seed = prop_support::seeds("token_request", &fresh)
            .into_iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no seed {name}"))
            .1;
        let (ct, auth, body) = split_request(&seed);
        let mut headers: Vec<(&str, &[u8])> = vec![("content-type", &ct)];
        if !auth.is_empty() {
            headers.push(("authorization", &auth));
        }
        let (status, text, _) = rt.block_on(fx.oauth("/oauth/token", &headers, body.clone()));
        assert_eq!(status, 200, "seed {name}: {text}");
        if name.ends_with("assertion") {
            let (status, text, _) = rt.block_on(fx.oauth("/oauth/token", &headers, body));
            assert_eq!(status, 401, "seed {name} replayed: {text}");
        }
    }
    let mut runner = runner(1500);
    let strategy = (input(seeds.len()), 0..paths.len());
    runner
        .run(&strategy, |(i, p)| {
            check(&materialize(&seeds, &i), paths[p]);
            Ok(())
        })
        .unwrap();
    report("token_request", seeds.len(), runner.config().cases);
}

#[test]
fn basic_credentials() {
    let rt = runtime();
    let fx = rt.block_on(fixture());
    let vars = fx.vars();
    let vars_ref: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let seeds = seeds("basic_header", &vars_ref);
    let check = |auth: &[u8]| {
        let headers: Vec<(&str, &[u8])> = vec![
            ("content-type", b"application/x-www-form-urlencoded"),
            ("authorization", auth),
        ];
        let (status, text, h) = rt.block_on(fx.oauth(
            "/oauth/token",
            &headers,
            b"grant_type=client_credentials".to_vec(),
        ));
        assert!(
            matches!(status, 200 | 400 | 401 | 429),
            "{status} for {auth:?}: {text}"
        );
        if status == 200 {
            assert!(
                carries_credentials(&fx, "\u{0}", auth, b""),
                "token for {auth:?}"
            );
        } else {
            assert_oauth_error(status, &text);
            if status == 401 && auth.len() > 6 && auth[..6].eq_ignore_ascii_case(b"basic ") {
                let www = h.get("www-authenticate").map(|v| v.to_str().unwrap_or(""));
                assert!(
                    www.is_some_and(|w| w.starts_with("Basic")),
                    "{auth:?}: {www:?}"
                );
            }
        }
        assert!(!text.contains(&fx.secret));
    };
    for (_, s) in &seeds {
        check(s);
    }
    let mut runner = runner(800);
    runner
        .run(&input(seeds.len()), |i| {
            check(&materialize(&seeds, &i));
            Ok(())
        })
        .unwrap();
    report("basic_header", seeds.len(), runner.config().cases);
}

/// A JSON value of bounded size, for forged claims.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[ -~]{0,12}".prop_map(Value::from),
        Just(Value::from(ISSUER)),
        Just(Value::from("acme")),
        Just(Value::from("EdDSA")),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum TokenEdit {
    /// Byte-level mutations of the whole compact token.
    Bytes(Vec<Mutation>),
    /// Replace or add one header member, keep payload and signature.
    Header(String, Value),
    /// Replace or add one claim, keep header and signature.
    Claim(String, Value),
    /// Drop one claim, keep the signature.
    DropClaim(String),
    /// Swap in another token's signature.
    OtherSignature,
}

fn token_edit() -> impl Strategy<Value = TokenEdit> {
    let header_key = prop_oneof![
        Just("alg"),
        Just("kid"),
        Just("typ"),
        Just("crit"),
        Just("jku"),
        Just("jwk"),
        Just("x")
    ];
    let claim_key = prop_oneof![
        Just("iss"),
        Just("sub"),
        Just("aud"),
        Just("exp"),
        Just("nbf"),
        Just("iat"),
        Just("jti"),
        Just("scope"),
        Just("tenant"),
        Just("tenants"),
        Just("x")
    ];
    prop_oneof![
        3 => prop::collection::vec(mutation(), 1..6).prop_map(TokenEdit::Bytes),
        2 => (header_key, json_value()).prop_map(|(k, v)| TokenEdit::Header(k.into(), v)),
        3 => (claim_key.clone(), json_value()).prop_map(|(k, v)| TokenEdit::Claim(k.into(), v)),
        1 => claim_key.prop_map(|k| TokenEdit::DropClaim(k.into())),
        1 => Just(TokenEdit::OtherSignature),
    ]
}

fn decode_part(p: &str) -> Option<serde_json::Map<String, Value>> {
    serde_json::from_slice(&B64.decode(p).ok()?).ok()
}

fn edit(token: &str, other: &str, e: &TokenEdit) -> Vec<u8> {
    let parts: Vec<&str> = token.split('.').collect();
    let (h, p, s) = (parts[0], parts[1], parts[2]);
    let enc = |m: &serde_json::Map<String, Value>| B64.encode(serde_json::to_vec(m).unwrap());
    match e {
        TokenEdit::Bytes(m) => apply(token.as_bytes(), m),
        TokenEdit::Header(k, v) => {
            let mut hm = decode_part(h).unwrap();
            hm.insert(k.clone(), v.clone());
            format!("{}.{p}.{s}", enc(&hm)).into_bytes()
        }
        TokenEdit::Claim(k, v) => {
            let mut pm = decode_part(p).unwrap();
            pm.insert(k.clone(), v.clone());
            format!("{h}.{}.{s}", enc(&pm)).into_bytes()
        }
        TokenEdit::DropClaim(k) => {
            let mut pm = decode_part(p).unwrap();
            pm.remove(k);
            format!("{h}.{}.{s}", enc(&pm)).into_bytes()
        }
        TokenEdit::OtherSignature => {
            let os = other.rsplit('.').next().unwrap();
            format!("{h}.{p}.{os}").into_bytes()
        }
    }
}

/// Whether `candidate` is `token` with the same decoded header, payload and
/// signature (a change that only a lenient decoder would not notice).
fn same_token(token: &str, candidate: &[u8]) -> bool {
    let Ok(c) = std::str::from_utf8(candidate) else {
        return false;
    };
    let c = c.trim();
    let a: Vec<&str> = token.split('.').collect();
    let b: Vec<&str> = c.split('.').collect();
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            B64.decode(x)
                .ok()
                .is_some_and(|x| B64.decode(y).ok().is_some_and(|y| x == y))
        })
}

#[test]
fn bearer_token_validation() {
    let rt = runtime();
    let fx = rt.block_on(fixture());
    let token = rt.block_on(fx.token(""));
    let routed = rt.block_on(fx.token(&format!("&resource={ISSUER}/github")));
    let other = rt.block_on(fx.token("&scope=mcp"));
    let metadata: Arc<str> = Arc::from(format!("{ISSUER}/.well-known/oauth-protected-resource"));
    let github = format!("{ISSUER}/github");
    let slack = format!("{ISSUER}/slack");

    let authenticate = |value: &[u8], resource: Option<&str>| -> Option<bool> {
        let v = http::HeaderValue::from_bytes(value).ok()?;
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, v);
        let r = fx
            .state
            .authority
            .authenticate(&headers, None, resource, &metadata);
        if let Err(e) = &r {
            assert_eq!(e.status_and_code().0, 401, "bearer refusal must be 401");
        }
        Some(r.is_ok())
    };

    // The genuine tokens pass; the route-bound one only on its route.
    assert_eq!(
        authenticate(format!("Bearer {token}").as_bytes(), Some(&github)),
        Some(true)
    );
    assert_eq!(
        authenticate(format!("Bearer {routed}").as_bytes(), Some(&github)),
        Some(true)
    );
    assert_eq!(
        authenticate(format!("Bearer {routed}").as_bytes(), Some(&slack)),
        Some(false)
    );
    // A token in the query string is refused even with a good header.
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    for q in [
        "access_token=x",
        "a=1&ACCESS_TOKEN=",
        "access%5Ftoken=1",
        "access+token=1&access_token",
    ] {
        let r = fx
            .state
            .authority
            .authenticate(&h, Some(q), None, &metadata);
        assert!(r.is_err(), "token in query {q} accepted");
    }

    let seeds = seeds("bearer", &[]);
    for (name, s) in &seeds {
        assert!(
            !authenticate(s, None).unwrap_or(false),
            "seed {name} accepted"
        );
    }

    let mut runner = runner(2000);
    let strategy = (token_edit(), any::<bool>(), 0..3usize);
    runner
        .run(&strategy, |(e, use_routed, res)| {
            let base = if use_routed { &routed } else { &token };
            let forged = edit(base, &other, &e);
            let mut value = b"Bearer ".to_vec();
            value.extend_from_slice(&forged);
            let resource = [None, Some(github.as_str()), Some(slack.as_str())][res];
            if authenticate(&value, resource) == Some(true) {
                prop_assert!(
                    same_token(base, &forged),
                    "changed token accepted: {e:?} -> {}",
                    String::from_utf8_lossy(&forged)
                );
            }
            Ok(())
        })
        .unwrap();
    report("bearer_jwt", seeds.len(), runner.config().cases);
}

#[derive(Debug, Clone)]
enum AssertionEdit {
    Claim(String, Value),
    DropClaim(String),
    Header(String, Value),
    Bytes(Vec<Mutation>),
}

#[test]
fn client_assertions() {
    let rt = runtime();
    let fx = rt.block_on(fixture());
    let good = fx.good_assertion();
    let now = unix_now();
    let claim_key = prop_oneof![
        Just("iss"),
        Just("sub"),
        Just("aud"),
        Just("exp"),
        Just("nbf"),
        Just("iat"),
        Just("jti")
    ];
    let strategy = prop_oneof![
        3 => (claim_key.clone(), json_value()).prop_map(|(k, v)| AssertionEdit::Claim(k.into(), v)),
        1 => claim_key.prop_map(|k| AssertionEdit::DropClaim(k.into())),
        1 => (prop_oneof![Just("alg"), Just("kid"), Just("typ")], json_value())
            .prop_map(|(k, v)| AssertionEdit::Header(k.into(), v)),
        2 => prop::collection::vec(mutation(), 1..6).prop_map(AssertionEdit::Bytes),
    ];
    let post = |assertion: &[u8]| {
        let mut body = b"grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion=".to_vec();
        body.extend(
            percent_encoding::percent_encode(assertion, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
                .bytes(),
        );
        let headers: Vec<(&str, &[u8])> =
            vec![("content-type", b"application/x-www-form-urlencoded")];
        rt.block_on(fx.oauth("/oauth/token", &headers, body))
    };
    assert_eq!(post(good.as_bytes()).0, 200);
    let mut runner = runner(1000);
    runner
        .run(&strategy, |e| {
            // Re-signed with the client's real key: the claim checks decide.
            let (bytes, resigned_claims) = match &e {
                AssertionEdit::Claim(k, v) => {
                    let mut c = json!({"iss": fx.jwt_client_id, "sub": fx.jwt_client_id, "aud": ISSUER,
                                       "exp": now + 300, "iat": now, "jti": "p"});
                    c[k.as_str()] = v.clone();
                    (fx.assertion(c.clone()).into_bytes(), Some(c))
                }
                AssertionEdit::DropClaim(k) => {
                    let mut c = json!({"iss": fx.jwt_client_id, "sub": fx.jwt_client_id, "aud": ISSUER,
                                       "exp": now + 300, "iat": now, "jti": "p"});
                    c.as_object_mut().unwrap().remove(k);
                    (fx.assertion(c.clone()).into_bytes(), Some(c))
                }
                AssertionEdit::Header(..) | AssertionEdit::Bytes(_) => {
                    let te = match &e {
                        AssertionEdit::Header(k, v) => TokenEdit::Header(k.clone(), v.clone()),
                        AssertionEdit::Bytes(m) => TokenEdit::Bytes(m.clone()),
                        _ => unreachable!(),
                    };
                    (edit(&good, &good, &te), None)
                }
            };
            let (status, text, _) = post(&bytes);
            prop_assert!(matches!(status, 200 | 400 | 401 | 429), "{status}: {text}");
            if status == 200 {
                match resigned_claims {
                    Some(c) => {
                        // Only claims that still satisfy RFC 7523 pass.
                        let id = Value::from(fx.jwt_client_id.clone());
                        prop_assert_eq!(&c["iss"], &id);
                        prop_assert_eq!(&c["sub"], &id);
                        let exp = c["exp"].as_u64();
                        prop_assert!(exp.is_some_and(|x| x + 60 >= now && x <= now + 3600 + 60), "exp {:?}", c["exp"]);
                    }
                    None => prop_assert!(same_token(&good, &bytes), "changed assertion accepted: {e:?}"),
                }
            } else {
                assert_oauth_error(status, &text);
            }
            Ok(())
        })
        .unwrap();
    report("client_assertion", 1, runner.config().cases);
}
