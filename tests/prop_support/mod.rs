//! Shared by the `tests/prop_*.rs` property tests (issue #9): a real
//! [`AppState`] on an embedded store in a temporary directory, the seed
//! corpus under `fuzz/corpus/<target>/`, and a byte-mutation strategy.
//!
//! cargo-fuzz needs a nightly toolchain and this project builds on stable, so
//! the parsers are exercised with `proptest` instead: each target runs every
//! seed as is, then `PROP_CASES` (default per target) mutated or random
//! inputs. Failures shrink and are kept in `tests/*.proptest-regressions`.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use credgate::config::Config;
use credgate::secrets::Secrets;
use credgate::state::AppState;
use credgate::store::Store;
use credgate::store::embedded::EmbeddedStore;
use http_body_util::BodyExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as PtConfig, FileFailurePersistence, TestRunner};
use ring::signature::KeyPair;
use secrecy::SecretString;
use serde_json::{Value, json};

pub const ISSUER: &str = "http://127.0.0.1:8080";
pub const ADMIN_TOKEN: &str = "prop-admin-token-5b1d0f0e-9c2a7e4b13d8";

/// Number of generated cases: `PROP_CASES` when set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(PtConfig {
        cases: cases(default_cases),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        max_shrink_iters: 2000,
        ..PtConfig::default()
    })
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

pub fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The seed files of `target`, sorted by name, with `{NAME}` placeholders
/// replaced from `vars`.
pub fn seeds(target: &str, vars: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "empty seed corpus {}", dir.display());
    names
        .into_iter()
        .map(|p| {
            let mut bytes = std::fs::read(&p).expect("read seed");
            for (k, v) in vars {
                bytes = replace(&bytes, format!("{{{k}}}").as_bytes(), v.as_bytes());
            }
            (p.file_name().unwrap().to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

fn replace(hay: &[u8], needle: &[u8], with: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(needle) {
            out.extend_from_slice(with);
            i += needle.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

/// Fragments that tend to break parsers, spliced in by [`Mutation::Splice`].
pub const DICTIONARY: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"=",
    b"&",
    b"%",
    b"%00",
    b"%ff",
    b"%2e%2e",
    b"+",
    b".",
    b"\0",
    b"\r\n",
    b"\\u0000",
    b"\"\\ud800\"",
    b"1e999",
    b"-1",
    b"18446744073709551616",
    b"null",
    b"true",
    b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":{\"a\":{\"a\":",
    b"\xff\xfe",
    b"\xc3\x28",
    b"eyJhbGciOiJub25lIn0",
    b"grant_type=client_credentials",
    b"client_id=",
    b"client_secret=",
    b"client_assertion=",
    b"client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    b"\"tenant\"",
    b"\"tenants\":[]",
    b"\"jwks\":{\"keys\":[]}",
    b"[[routes]]",
    b"[proxy]",
    b"= 99999999999999999999",
    b"'''",
    b"\"\"\"",
];

#[derive(Debug, Clone)]
pub enum Mutation {
    Flip(usize, u8),
    Set(usize, u8),
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Splice(usize, usize),
    Duplicate(usize, usize, usize),
    Truncate(usize),
}

pub fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 1u8..=255).prop_map(|(i, b)| Mutation::Flip(i, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        2 => (any::<usize>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        2 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, v)| Mutation::Insert(i, v)),
        4 => (any::<usize>(), 0..DICTIONARY.len()).prop_map(|(i, d)| Mutation::Splice(i, d)),
        1 => (any::<usize>(), 1usize..64, any::<usize>())
            .prop_map(|(a, n, b)| Mutation::Duplicate(a, n, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
    ]
}

pub fn apply(seed: &[u8], muts: &[Mutation]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for m in muts {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match m {
            Mutation::Flip(i, b) if !v.is_empty() => {
                let i = i % v.len();
                v[i] ^= b;
            }
            Mutation::Set(i, b) if !v.is_empty() => {
                let i = i % v.len();
                v[i] = *b;
            }
            Mutation::Delete(i, n) if !v.is_empty() => {
                let i = i % v.len();
                let end = (i + n).min(v.len());
                v.drain(i..end);
            }
            Mutation::Insert(i, bytes) => {
                let i = at(*i, v.len());
                v.splice(i..i, bytes.iter().copied());
            }
            Mutation::Splice(i, d) => {
                let i = at(*i, v.len());
                v.splice(i..i, DICTIONARY[*d].iter().copied());
            }
            Mutation::Duplicate(a, n, b) if !v.is_empty() => {
                let a = a % v.len();
                let chunk: Vec<u8> = v[a..(a + n).min(v.len())].to_vec();
                let b = at(*b, v.len());
                v.splice(b..b, chunk);
            }
            Mutation::Truncate(i) => {
                let i = at(*i, v.len());
                v.truncate(i);
            }
            _ => {}
        }
    }
    v
}

/// An input: a mutated seed (mostly) or random bytes.
pub fn input(n_seeds: usize) -> impl Strategy<Value = (Option<usize>, Vec<Mutation>, Vec<u8>)> {
    prop_oneof![
        5 => (0..n_seeds, prop::collection::vec(mutation(), 1..8))
            .prop_map(|(s, m)| (Some(s), m, Vec::new())),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(|b| (None, Vec::new(), b)),
    ]
}

pub fn materialize(
    seeds: &[(String, Vec<u8>)],
    i: &(Option<usize>, Vec<Mutation>, Vec<u8>),
) -> Vec<u8> {
    match i.0 {
        Some(s) => apply(&seeds[s].1, &i.1),
        None => i.2.clone(),
    }
}

/// A credgate on an embedded store in a temporary directory, with one
/// secret client and one `private_key_jwt` client.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub state: Arc<AppState>,
    pub client_id: String,
    pub secret: String,
    pub jwt_client_id: String,
    pub ed_pkcs8: Vec<u8>,
}

pub fn config_text(dir: &Path) -> String {
    format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
public_url = "{ISSUER}"

[ops]
listen = "127.0.0.1:0"

[oauth]
max_failures_per_client = 1000000000
max_failures_per_address = 1000000000

[store]
backend = "embedded"
path = "{store}"

[audit]
path = "{audit}"

[[routes]]
integration = "github"
path_prefix = "/github"
upstream = "http://127.0.0.1:9"
required_scopes = ["mcp"]

[[routes]]
integration = "slack"
path_prefix = "/slack"
upstream = "http://127.0.0.1:9"
"#,
        store = dir.join("credgate.store").display(),
        audit = dir.join("audit.log").display(),
    )
}

pub async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Config::from_toml_with_env(&config_text(dir.path()), Vec::new()).expect("config");
    let store: Arc<dyn Store> =
        Arc::new(EmbeddedStore::open_with_master_key(&config.store, [7u8; 32]).expect("store"));
    let state = AppState::with_store(
        config,
        store,
        Arc::new(Secrets::with_admin_token(SecretString::from(ADMIN_TOKEN))),
    )
    .await
    .expect("state");
    let state = Arc::new(state);

    let body = json!({"name": "prop", "tenant": "acme", "scopes": ["mcp", "introspect"],
                      "allowedIntegrations": ["github", "slack"]});
    let created = admin_clients(
        &state,
        http::Method::POST,
        &[],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(created.0, 201, "{}", created.1);
    let v: Value = serde_json::from_str(&created.1).unwrap();
    let client_id = v["client"]["clientId"].as_str().unwrap().to_owned();
    let secret = v["client"]["clientSecret"].as_str().unwrap().to_owned();

    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    let body = json!({"name": "prop-jwt", "tenant": "acme", "scopes": ["mcp"],
                      "allowedIntegrations": ["github"],
                      "jwks": {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1"}]}});
    let created = admin_clients(
        &state,
        http::Method::POST,
        &[],
        body.to_string().into_bytes(),
    )
    .await;
    assert_eq!(created.0, 201, "{}", created.1);
    let v: Value = serde_json::from_str(&created.1).unwrap();
    let jwt_client_id = v["client"]["clientId"].as_str().unwrap().to_owned();

    Fixture {
        dir,
        state,
        client_id,
        secret,
        jwt_client_id,
        ed_pkcs8: pkcs8.as_ref().to_vec(),
    }
}

impl Fixture {
    /// A signed `private_key_jwt` assertion for the JWT client.
    pub fn assertion(&self, claims: Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_ed_der(&self.ed_pkcs8);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(&header, &claims, &key).expect("sign assertion")
    }

    /// A fresh assertion each call: credgate accepts each `jti` once.
    pub fn good_assertion(&self) -> String {
        let now = unix_now();
        let jti = uuid::Uuid::new_v4().to_string();
        self.assertion(json!({"iss": self.jwt_client_id, "sub": self.jwt_client_id,
                              "aud": ISSUER, "exp": now + 300, "iat": now, "jti": jti}))
    }

    pub fn basic(&self) -> String {
        format!(
            "Basic {}",
            STANDARD.encode(format!("{}:{}", self.client_id, self.secret))
        )
    }

    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("CLIENT_ID", self.client_id.clone()),
            ("SECRET", self.secret.clone()),
            ("JWT_CLIENT_ID", self.jwt_client_id.clone()),
            ("ASSERTION", self.good_assertion()),
            ("BASIC", self.basic()),
            ("ISSUER", ISSUER.to_owned()),
        ]
    }

    /// A fresh access token from `/oauth/token`.
    pub async fn token(&self, extra: &str) -> String {
        let body = format!("grant_type=client_credentials{extra}");
        let (status, text, _) = self
            .oauth(
                "/oauth/token",
                &[
                    (
                        "content-type",
                        b"application/x-www-form-urlencoded".as_slice(),
                    ),
                    ("authorization", self.basic().as_bytes()),
                ],
                body.into_bytes(),
            )
            .await;
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        v["access_token"].as_str().unwrap().to_owned()
    }

    /// POSTs to an `/oauth/*` endpoint; headers whose values are not valid
    /// header bytes are dropped (hyper refuses those before credgate sees them).
    pub async fn oauth(
        &self,
        path: &str,
        headers: &[(&str, &[u8])],
        body: Vec<u8>,
    ) -> (u16, String, http::HeaderMap) {
        let mut req = http::Request::post(path);
        for (k, v) in headers {
            if let Ok(v) = http::HeaderValue::from_bytes(v) {
                req = req.header(*k, v);
            }
        }
        let req = req
            .body(http_body_util::Full::new(Bytes::from(body)))
            .unwrap();
        let peer = "10.1.2.3:40000".parse().unwrap();
        let resp = self
            .state
            .authority
            .handle_request(req, peer, "rid-prop")
            .await
            .expect("an /oauth/ path is always answered");
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        (
            parts.status.as_u16(),
            String::from_utf8_lossy(&bytes).into_owned(),
            parts.headers,
        )
    }
}

/// Runs the admin clients handler; returns status and body text.
pub async fn admin_clients(
    state: &AppState,
    method: http::Method,
    rest: &[&str],
    body: Vec<u8>,
) -> (u16, String) {
    let r = credgate::admin::clients::handle(&state.authority, &method, rest, body.into(), "prop")
        .await;
    response_text(r).await
}

/// Runs the admin credentials handler; returns status and body text.
pub async fn admin_credentials(
    state: &AppState,
    method: http::Method,
    rest: &[&str],
    body: Vec<u8>,
) -> (u16, String) {
    let r = credgate::admin::credentials::handle(state, &method, rest, body.into(), "prop").await;
    response_text(r).await
}

async fn response_text(
    r: Result<http::Response<credgate::http::Body>, credgate::error::ProxyError>,
) -> (u16, String) {
    let resp = match r {
        Ok(resp) => resp,
        Err(e) => e.into_response("rid-prop"),
    };
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status.as_u16(),
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Asserts an RFC 6749 §5.2 body.
pub fn assert_oauth_error(status: u16, text: &str) {
    let v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{status}: non-JSON OAuth error body {text:?}: {e}"));
    assert!(v["error"].is_string(), "{status}: {text}");
    assert!(v["error_description"].is_string(), "{status}: {text}");
}

/// Asserts a docs/errors.md body.
pub fn assert_spec_error(status: u16, text: &str) {
    let v: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("{status}: non-JSON error body {text:?}: {e}"));
    assert!(v["error"]["code"].is_string(), "{status}: {text}");
    assert!(v["error"]["message"].is_string(), "{status}: {text}");
}

/// Prints one line per target for docs/RELIABILITY.md.
pub fn report(target: &str, seeds: usize, cases: u32) {
    eprintln!("prop-report target={target} seeds={seeds} generated={cases}");
}
