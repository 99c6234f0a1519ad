//! `/oauth/token` end to end through `handle_request`: authentication
//! methods, malformed requests, scopes, resources, lifetimes, throttling.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

use super::*;
use crate::oauth::testing::{GITHUB, PUBLIC, authority};

#[tokio::test]
async fn basic_form_token_round_trip() {
    let (a, _) = authority().await;
    let (c, secret) = client(&a).await;
    let (status, headers, body) = token(&a, &c.client_id, &secret, "").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    assert_eq!(body["scope"], "mcp admin introspect");
    let t = body["access_token"].as_str().unwrap();
    let p = check(&a, t, Some(GITHUB)).unwrap();
    assert_eq!(&*p.client_id, &*c.client_id);
    assert_eq!(p.tenants, Tenants::One("tenant-1".into()));
    assert!(p.has_scope("admin") && !p.has_scope("other"));
    // Header and claims are RFC 9068 shaped.
    let parts: Vec<&str> = t.split('.').collect();
    let header: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(
        (header["typ"].as_str(), header["alg"].as_str()),
        (Some("at+jwt"), Some("EdDSA"))
    );
    assert_eq!(header["kid"], json!(&*a.keys().active.kid));
    assert_eq!(claims["iss"], PUBLIC);
    assert_eq!(claims["aud"], PUBLIC);
    assert_eq!(claims["sub"], json!(&*c.client_id));
    assert_eq!(claims["client_id"], json!(&*c.client_id));
    assert_eq!(claims["tenant"], "tenant-1");
    for k in ["exp", "iat", "nbf", "jti"] {
        assert!(!claims[k].is_null(), "{k}");
    }
}

#[tokio::test]
async fn json_post_auth_and_scope_subset() {
    let (a, _) = authority().await;
    let (c, secret) = client(&a).await;
    let body = json!({"grant_type": "client_credentials", "client_id": &*c.client_id,
                      "client_secret": secret, "scope": "mcp mcp"})
    .to_string();
    let (status, _, v) = call(&a, "POST", "/oauth/token", &[JSON], &body, "192.0.2.1").await;
    assert_eq!((status, v["scope"].as_str()), (200, Some("mcp")), "{v}");
    let (status, _, v) = token(&a, &c.client_id, &secret, "&scope=mcp+bogus").await;
    assert_eq!((status, v["error"].as_str()), (400, Some("invalid_scope")));
}

#[tokio::test]
async fn malformed_requests_are_refused() {
    let (a, _) = authority().await;
    let (c, secret) = client(&a).await;
    let auth = basic(&c.client_id, &secret);
    let both = format!(
        "grant_type=client_credentials&client_id={}&client_secret={secret}",
        c.client_id
    );
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, u16, &'a str);
    let cases: [Case; 5] = [
        (
            &[FORM, ("authorization", &auth)],
            &both,
            400,
            "invalid_request",
        ),
        (
            &[FORM, ("authorization", &auth)],
            "scope=mcp",
            400,
            "invalid_request",
        ),
        (
            &[FORM, ("authorization", &auth)],
            "grant_type=password",
            400,
            "unsupported_grant_type",
        ),
        (
            &[("content-type", "text/plain"), ("authorization", &auth)],
            "x",
            400,
            "invalid_request",
        ),
        (
            &[FORM],
            "grant_type=client_credentials",
            401,
            "invalid_client",
        ),
    ];
    for (headers, body, status, error) in cases {
        let (s, _, v) = call(&a, "POST", "/oauth/token", headers, body, "192.0.2.9").await;
        assert_eq!((s, v["error"].as_str()), (status, Some(error)), "{body}");
    }
    let (s, h, _) = call(&a, "GET", "/oauth/token", &[], "", "192.0.2.9").await;
    assert_eq!((s, h["allow"].to_str().unwrap()), (405, "POST"));
}

#[tokio::test]
async fn bad_credentials_get_401_with_basic_challenge_only_for_basic() {
    let (a, _) = authority().await;
    let (c, _) = client(&a).await;
    let (status, headers, v) = token(&a, &c.client_id, "wrong", "").await;
    assert_eq!((status, v["error"].as_str()), (401, Some("invalid_client")));
    assert_eq!(headers["www-authenticate"], r#"Basic realm="credgate""#);
    let body = format!(
        "grant_type=client_credentials&client_id={}&client_secret=wrong",
        c.client_id
    );
    let (status, headers, _) = call(&a, "POST", "/oauth/token", &[FORM], &body, "192.0.2.1").await;
    assert_eq!(status, 401);
    assert!(headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn resource_sets_audience_and_limits_the_token_to_that_route() {
    let (a, _) = authority().await;
    let (c, secret) = client(&a).await;
    let (s, _, v) = token(&a, &c.client_id, &secret, &format!("&resource={GITHUB}")).await;
    assert_eq!(s, 200, "{v}");
    let t = v["access_token"].as_str().unwrap();
    assert!(check(&a, t, Some(GITHUB)).is_ok());
    let slack = format!("{PUBLIC}/slack");
    assert_eq!(
        check(&a, t, Some(&slack)).unwrap_err(),
        AuthFailure::WrongAudience
    );
    assert_eq!(check(&a, t, None).unwrap_err(), AuthFailure::WrongAudience);
    // The SDK's normalized `http://host/` names the issuer.
    let (s, _, v) = token(&a, &c.client_id, &secret, &format!("&resource={PUBLIC}/")).await;
    assert_eq!(s, 200);
    assert!(check(&a, v["access_token"].as_str().unwrap(), None).is_ok());
    let (s, _, v) = token(
        &a,
        &c.client_id,
        &secret,
        "&resource=http://evil.example/github",
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_target")));
}

#[tokio::test]
async fn lifetime_follows_client_and_cap() {
    let (a, _) = authority().await;
    let (c, s) = a
        .create_client(
            spec(json!({"name": "n", "tenants": ["a", "b"], "tokenExpirationMinutes": 5})),
            "t",
        )
        .await
        .unwrap();
    let (_, _, v) = token(&a, &c.client_id, s.expose_secret(), "").await;
    assert_eq!(v["expires_in"], 300);
    let p = check(&a, v["access_token"].as_str().unwrap(), None).unwrap();
    assert_eq!(
        p.tenants,
        Tenants::Many(vec![Arc::from("a"), Arc::from("b")].into())
    );
    let err = a
        .create_client(
            spec(json!({"name": "n", "tenant": "a", "tokenExpirationMinutes": 1441})),
            "t",
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Invalid(_)));
}

#[tokio::test]
async fn throttling_refuses_attackers_but_not_the_owner_of_the_secret() {
    let (a, _) = authority().await;
    let (c, secret) = client(&a).await;
    let attack = |ip: &'static str| {
        let body = format!(
            "grant_type=client_credentials&client_id={}&client_secret=guess",
            c.client_id
        );
        let a = &a;
        async move { call(a, "POST", "/oauth/token", &[FORM], &body, ip).await }
    };
    // Three failures per client id are allowed; the fourth wrong guess gets 429.
    for ip in ["198.51.100.1", "198.51.100.1", "198.51.100.2"] {
        assert_eq!(attack(ip).await.0, 401);
    }
    let (s, h, v) = attack("198.51.100.2").await;
    assert_eq!((s, v["error"].as_str()), (429, Some("slow_down")));
    assert!(h["retry-after"].to_str().unwrap().parse::<u64>().unwrap() > 0);
    // The real secret from a clean address still gets a token.
    assert_eq!(token(&a, &c.client_id, &secret, "").await.0, 200);
    // An address that used up its own limit (5) is refused before any check.
    for _ in 0..3 {
        attack("198.51.100.1").await;
    }
    let auth = basic(&c.client_id, &secret);
    let (s, _, _) = call(
        &a,
        "POST",
        "/oauth/token",
        &[FORM, ("authorization", &auth)],
        "grant_type=client_credentials",
        "198.51.100.1",
    )
    .await;
    assert_eq!(s, 429);
}

#[tokio::test]
async fn private_key_jwt_client_gets_a_token() {
    use super::assertion::tests::{assertion, ed25519};
    let (a, _) = authority().await;
    let (key, jwk) = ed25519();
    let (c, _) = a
        .create_client(
            spec(
                json!({"name": "pkjwt", "tenant": "t", "scopes": ["mcp"], "jwks": {"keys": [jwk]}}),
            ),
            "test",
        )
        .await
        .unwrap();
    let now = jwt::unix_now();
    let id = &*c.client_id;
    let claims =
        |aud: &str| json!({"iss": id, "sub": id, "aud": aud, "exp": now + 300, "jti": "j"});
    let form = |assertion: &str| {
        format!(
            "grant_type=client_credentials&client_assertion_type={}&client_assertion={assertion}",
            "urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
        )
    };
    // The MCP SDK sends the issuer as pydantic renders it: with a slash.
    let good = assertion(&key, claims(&format!("{PUBLIC}/")));
    let (s, _, v) = call(
        &a,
        "POST",
        "/oauth/token",
        &[FORM],
        &form(&good),
        "192.0.2.1",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(check(&a, v["access_token"].as_str().unwrap(), None).is_ok());
    let wrong_aud = assertion(&key, claims("http://elsewhere"));
    let (s, h, v) = call(
        &a,
        "POST",
        "/oauth/token",
        &[FORM],
        &form(&wrong_aud),
        "192.0.2.1",
    )
    .await;
    assert_eq!((s, v["error"].as_str()), (401, Some("invalid_client")));
    assert!(h.get("www-authenticate").is_none());
    // Assertion plus a secret is two methods.
    let both = format!("{}&client_id={id}&client_secret=x", form(&good));
    let (s, _, v) = call(&a, "POST", "/oauth/token", &[FORM], &both, "192.0.2.1").await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid_request")));
    // A client without registered keys cannot use an assertion.
    let (plain, _) = client(&a).await;
    let pid = &*plain.client_id;
    let forged = assertion(
        &key,
        json!({"iss": pid, "sub": pid, "aud": PUBLIC, "exp": now + 300}),
    );
    let (s, _, _) = call(
        &a,
        "POST",
        "/oauth/token",
        &[FORM],
        &form(&forged),
        "192.0.2.1",
    )
    .await;
    assert_eq!(s, 401);
}
