//! Authority-level tests: the endpoints through `handle_request`, token
//! validation, and replicas following each other through the store.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD as B64};
use http_body_util::{BodyExt, Full};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::testing::{GITHUB, MemStore, PUBLIC, authority, authority_on};
use super::*;

pub(crate) fn spec(body: Value) -> NewClient {
    serde_json::from_value(body).unwrap()
}

/// A client with scopes `mcp admin introspect`, tenant `tenant-1`.
pub(crate) async fn client(a: &Authority) -> (Arc<Client>, String) {
    let (c, s) = a
        .create_client(
            spec(json!({"name": "agent", "tenant": "tenant-1",
                        "scopes": ["mcp", "admin", "introspect"]})),
            "test",
        )
        .await
        .unwrap();
    (c, s.expose_secret().to_owned())
}

fn peer(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 40000)
}

pub(crate) fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")))
}

async fn call(
    a: &Authority,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    from: &str,
) -> (u16, http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
    let resp = a
        .handle_request(req, peer(from), "req-1")
        .await
        .expect("handled");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded");
const JSON: (&str, &str) = ("content-type", "application/json");

async fn token(
    a: &Authority,
    id: &str,
    secret: &str,
    extra: &str,
) -> (u16, http::HeaderMap, Value) {
    let auth = basic(id, secret);
    let body = format!("grant_type=client_credentials{extra}");
    call(
        a,
        "POST",
        "/oauth/token",
        &[FORM, ("authorization", &auth)],
        &body,
        "192.0.2.1",
    )
    .await
}

fn bearer(token: &str) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    h
}

fn check(
    a: &Authority,
    token: &str,
    resource: Option<&str>,
) -> Result<Arc<Principal>, AuthFailure> {
    a.authenticate_at(&bearer(token), None, resource, jwt::unix_now())
}

#[tokio::test]
async fn suspension_stops_tokens_at_once_and_reactivation_does_not_revive_them() {
    let (a, _) = authority().await;
    let (c, secret) = client(&a).await;
    let (_, _, v) = token(&a, &c.client_id, &secret, "").await;
    let old = v["access_token"].as_str().unwrap().to_owned();
    assert!(check(&a, &old, None).is_ok());
    let off = ClientUpdate {
        active: Some(false),
        ..Default::default()
    };
    a.update_client(&c.client_id, off, "admin").await.unwrap();
    assert_eq!(
        check(&a, &old, None).unwrap_err(),
        AuthFailure::ClientInactive
    );
    let (s, _, v) = token(&a, &c.client_id, &secret, "").await;
    assert_eq!((s, v["error"].as_str()), (403, Some("access_denied")));
    let on = ClientUpdate {
        active: Some(true),
        ..Default::default()
    };
    a.update_client(&c.client_id, on, "admin").await.unwrap();
    assert_eq!(
        check(&a, &old, None).unwrap_err(),
        AuthFailure::ClientInactive
    );
    // A token minted right after reactivation works, even in the same second.
    let (s, _, v) = token(&a, &c.client_id, &secret, "").await;
    assert_eq!(s, 200);
    assert!(check(&a, v["access_token"].as_str().unwrap(), None).is_ok());
}

#[tokio::test]
async fn hot_path_reads_no_store_and_caches_by_digest() {
    let (a, store) = authority().await;
    let (c, secret) = client(&a).await;
    let (_, _, v) = token(&a, &c.client_id, &secret, "").await;
    let t = v["access_token"].as_str().unwrap();
    let reads = store.reads.load(Ordering::Relaxed);
    assert!(!a.cache.contains(t));
    for _ in 0..3 {
        check(&a, t, Some(GITHUB)).unwrap();
    }
    assert!(a.cache.contains(t));
    assert_eq!(store.reads.load(Ordering::Relaxed), reads);
    // A cached token is still re-checked against current state.
    a.delete_client(&c.client_id, "admin").await.unwrap();
    assert_eq!(check(&a, t, None).unwrap_err(), AuthFailure::ClientInactive);
}

#[tokio::test]
async fn a_cache_entry_shares_the_clients_strings() {
    let (a, _) = authority().await;
    let (c, secret) = client(&a).await;
    let (_, _, v) = token(&a, &c.client_id, &secret, "").await;
    let t = v["access_token"].as_str().unwrap();
    let (_, _, v) = token(&a, &c.client_id, &secret, &format!("&resource={GITHUB}")).await;
    let r = v["access_token"].as_str().unwrap();
    let (issuer_aud, route_aud) = (a.verify_token(t).unwrap(), a.verify_token(r).unwrap());
    for v in [&issuer_aud, &route_aud] {
        assert!(Arc::ptr_eq(&v.client_id, &c.client_id));
        assert!(Arc::ptr_eq(&v.scopes, &c.scopes));
        let (Tenants::One(ours), Tenants::One(theirs)) = (&v.tenants, &c.tenants) else {
            panic!("one tenant");
        };
        assert!(Arc::ptr_eq(ours, theirs));
    }
    assert!(Arc::ptr_eq(&issuer_aud.aud, &a.issuer));
    assert_eq!(&*route_aud.aud, GITHUB);
    let p = check(&a, r, Some(GITHUB)).unwrap();
    assert!(Arc::ptr_eq(&p.scopes, &c.scopes));
}

#[tokio::test]
async fn missing_query_and_foreign_scheme_tokens() {
    let (a, _) = authority().await;
    let none = http::HeaderMap::new();
    let now = jwt::unix_now();
    assert_eq!(
        a.authenticate_at(&none, None, None, now).unwrap_err(),
        AuthFailure::Missing
    );
    for q in ["access_token=x", "a=1&access%5Ftoken=x", "ACCESS_TOKEN"] {
        let err = a
            .authenticate_at(&bearer("x"), Some(q), None, now)
            .unwrap_err();
        assert_eq!(err, AuthFailure::QueryToken, "{q}");
    }
    let mut basic_auth = http::HeaderMap::new();
    basic_auth.insert(header::AUTHORIZATION, "Basic eDp5".parse().unwrap());
    assert_eq!(
        a.authenticate_at(&basic_auth, None, None, now).unwrap_err(),
        AuthFailure::Missing
    );
    let rm: Arc<str> = "http://x/.well-known/oauth-protected-resource".into();
    let err = a.authenticate(&none, None, None, &rm).unwrap_err();
    assert!(matches!(
        err,
        ProxyError::Unauthorized {
            reason: AuthFailure::Missing,
            ..
        }
    ));
    let text = String::from_utf8(a.metrics.render()).unwrap();
    assert!(text.contains(r#"credgate_auth_failures_total{reason="missing"} 1"#));
}

#[tokio::test]
async fn metadata_documents() {
    let (a, _) = authority().await;
    let (s, h, v) = call(
        &a,
        "GET",
        "/.well-known/oauth-authorization-server",
        &[],
        "",
        "192.0.2.1",
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(v["issuer"], PUBLIC);
    assert_eq!(v["token_endpoint"], format!("{PUBLIC}/oauth/token"));
    assert_eq!(
        v["authorization_endpoint"],
        format!("{PUBLIC}/oauth/authorize")
    );
    assert_eq!(v["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(v["response_types_supported"], json!([]));
    assert!(v.get("scopes_supported").is_none());
    let methods = v["token_endpoint_auth_methods_supported"]
        .as_array()
        .unwrap();
    assert!(methods.contains(&json!("private_key_jwt")));
    let (_, _, jwks) = call(&a, "GET", "/.well-known/jwks.json", &[], "", "192.0.2.1").await;
    let key = &jwks["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["crv"].as_str(),
            key["use"].as_str()
        ),
        (Some("OKP"), Some("Ed25519"), Some("sig"))
    );
    assert!(key.get("d").is_none());
    let (_, _, pr) = call(
        &a,
        "GET",
        "/.well-known/oauth-protected-resource/github",
        &[],
        "",
        "192.0.2.1",
    )
    .await;
    assert_eq!(pr["resource"], GITHUB);
    assert_eq!(pr["authorization_servers"], json!([PUBLIC]));
    assert_eq!(pr["scopes_supported"], json!(["mcp"]));
    assert_eq!(pr["bearer_methods_supported"], json!(["header"]));
    let (_, _, root) = call(
        &a,
        "GET",
        "/.well-known/oauth-protected-resource",
        &[],
        "",
        "192.0.2.1",
    )
    .await;
    assert_eq!(root["resource"], PUBLIC);
    let (_, _, slack) = call(
        &a,
        "GET",
        "/.well-known/oauth-protected-resource/slack",
        &[],
        "",
        "192.0.2.1",
    )
    .await;
    assert!(slack.get("scopes_supported").is_none());
    let req = Request::get("/.well-known/oauth-protected-resource/nope")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(
        a.handle_request(req, peer("192.0.2.1"), "r")
            .await
            .is_none()
    );
    let (s, _, v) = call(
        &a,
        "GET",
        "/oauth/authorize?response_type=code",
        &[],
        "",
        "192.0.2.1",
    )
    .await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("unsupported_response_type"))
    );
}

#[tokio::test]
async fn replicas_follow_each_other_through_the_store() {
    let store = Arc::new(MemStore::new());
    let a = authority_on(store.clone(), "").await;
    let b = authority_on(store.clone(), "").await;
    assert_eq!(a.keys().active.kid, b.keys().active.kid);
    let (c, secret) = client(&a).await;
    let (_, _, v) = token(&a, &c.client_id, &secret, "").await;
    let t = v["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        check(&b, &t, None).unwrap_err(),
        AuthFailure::ClientInactive
    );
    b.sync_once(false).await.unwrap();
    assert!(check(&b, &t, None).is_ok());
    let off = ClientUpdate {
        active: Some(false),
        ..Default::default()
    };
    a.update_client(&c.client_id, off, "admin").await.unwrap();
    b.sync_once(false).await.unwrap();
    assert_eq!(
        check(&b, &t, None).unwrap_err(),
        AuthFailure::ClientInactive
    );
    // Nothing changed: one marker read, no reload.
    let reads = store.reads.load(Ordering::Relaxed);
    b.sync_once(false).await.unwrap();
    assert_eq!(store.reads.load(Ordering::Relaxed), reads + 1);
}

#[tokio::test]
async fn restart_keeps_keys_so_old_tokens_validate() {
    let store = Arc::new(MemStore::new());
    let a = authority_on(store.clone(), "").await;
    let (c, secret) = client(&a).await;
    let (_, _, v) = token(&a, &c.client_id, &secret, "").await;
    drop(a);
    let again = authority_on(store, "").await;
    assert!(check(&again, v["access_token"].as_str().unwrap(), None).is_ok());
}

#[tokio::test]
async fn es256_and_rs256_tokens_validate() {
    for alg in ["ES256", "RS256"] {
        let store = Arc::new(MemStore::new());
        let a = authority_on(store, &format!("signing_alg = \"{alg}\"")).await;
        let (c, secret) = client(&a).await;
        let (_, _, v) = token(&a, &c.client_id, &secret, "").await;
        let t = v["access_token"].as_str().unwrap();
        assert!(check(&a, t, None).is_ok(), "{alg}");
        let header: Value =
            serde_json::from_slice(&B64.decode(t.split('.').next().unwrap()).unwrap()).unwrap();
        assert_eq!(header["alg"], alg);
    }
}

#[path = "endpoint_tests.rs"]
mod endpoint_tests;

#[path = "jwt_tests.rs"]
mod jwt_tests;

#[tokio::test]
async fn bootstrap_admin_token_is_compared_by_digest() {
    let (mut a, _) = authority().await;
    assert!(
        !a.is_admin_token("anything"),
        "no token configured: none accepted"
    );
    let token = "0123456789abcdef0123456789abcdef";
    a.set_admin_token(Some(&secrecy::SecretString::from(token)));
    assert!(a.is_admin_token(token));
    for wrong in [
        "",
        "0123456789abcdef",
        &format!("{token}0"),
        &token.to_uppercase(),
    ] {
        assert!(!a.is_admin_token(wrong), "{wrong}");
    }
}

#[tokio::test]
async fn the_token_endpoint_throttles_the_forwarded_caller() {
    // Behind a trusted ingress, one caller's failures must not lock out another.
    let store = Arc::new(MemStore::new());
    let a = authority_on(store, "[proxy]\ntrusted_proxies = [\"10.0.0.0/8\"]\n").await;
    let (c, secret) = client(&a).await;
    let form = "grant_type=client_credentials";
    let ct = ("content-type", "application/x-www-form-urlencoded");
    let wrong = basic(&c.client_id, "wrong");
    let from = |ip: &'static str| ("x-forwarded-for", ip);
    // `max_failures_per_address = 5` in the test config.
    for _ in 0..6 {
        call(
            &a,
            "POST",
            "/oauth/token",
            &[ct, ("authorization", &wrong), from("198.51.100.1")],
            form,
            "10.0.0.2",
        )
        .await;
    }
    let blocked = call(
        &a,
        "POST",
        "/oauth/token",
        &[
            ct,
            ("authorization", &basic(&c.client_id, &secret)),
            from("198.51.100.1"),
        ],
        form,
        "10.0.0.2",
    )
    .await;
    assert_eq!(blocked.0, 429);
    let other = call(
        &a,
        "POST",
        "/oauth/token",
        &[
            ct,
            ("authorization", &basic(&c.client_id, &secret)),
            from("198.51.100.2"),
        ],
        form,
        "10.0.0.2",
    )
    .await;
    assert_eq!(other.0, 200, "{:?}", other.2);
}
