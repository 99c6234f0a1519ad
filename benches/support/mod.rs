//! Shared set-up for the benches: a credgate `AppState` built through the
//! public API (embedded store in a temporary directory, or Vault), clients
//! created and tokens issued the way the admin API and `/oauth/token` do.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use credgate::config::Config;
use credgate::credentials::{self, Credential, Status};
use credgate::oauth::NewClient;
use credgate::state::AppState;
use credgate::store::Cas;
use http::{HeaderMap, HeaderValue, Request, header};
use http_body_util::{BodyExt, Full};
use secrecy::{ExposeSecret, SecretString};

pub(crate) const INTEGRATION: &str = "github";

/// A bench config: one route, rate limits high enough never to refuse.
pub(crate) fn config(dir: &std::path::Path, store_section: &str) -> Config {
    let text = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"
public_url = "http://127.0.0.1:8080"
[ops]
listen = "127.0.0.1:0"
[store]
{store_section}
[audit]
path = "{audit}"
[log]
level = "warn"
[rate_limit.default]
per_second = 1000000
burst = 1000000
[[routes]]
integration = "github"
path_prefix = "/github"
upstream = "http://127.0.0.1:9"
strip_prefix = true
required_scopes = ["mcp"]
"#,
        audit = dir.join("audit.log").display(),
    );
    Config::from_toml_with_env(
        &text,
        std::env::vars().filter(|(k, _)| k.starts_with("VAULT_")),
    )
    .expect("bench config")
}

pub(crate) fn embedded(dir: &std::path::Path) -> String {
    format!(
        "backend = \"embedded\"\npath = \"{}\"",
        dir.join("store").display()
    )
}

pub(crate) async fn state(config: Config) -> Arc<AppState> {
    Arc::new(
        AppState::build(config, Default::default())
            .await
            .expect("state"),
    )
}

/// Creates a client for `tenant`; returns its id and secret.
pub(crate) async fn client(state: &AppState, tenant: &str) -> (String, SecretString) {
    let spec: NewClient = serde_json::from_value(serde_json::json!({
        "name": "bench", "tenant": tenant, "scopes": ["mcp"], "allowedIntegrations": [INTEGRATION],
    }))
    .expect("client spec");
    let (c, secret) = state
        .authority
        .create_client(spec, "bench")
        .await
        .expect("client created");
    (c.client_id.to_string(), secret)
}

/// An access token from `/oauth/token` (client_credentials, HTTP Basic).
pub(crate) async fn token(state: &AppState, id: &str, secret: &SecretString) -> String {
    let basic = B64.encode(format!("{id}:{}", secret.expose_secret()));
    let req = Request::post("/oauth/token")
        .header(header::AUTHORIZATION, format!("Basic {basic}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(
            b"grant_type=client_credentials",
        )))
        .expect("request");
    let peer: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let resp = state
        .authority
        .handle_request(req, peer, "bench")
        .await
        .expect("token endpoint");
    assert_eq!(resp.status(), 200, "token request refused");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).expect("json");
    v["access_token"].as_str().expect("access_token").to_owned()
}

/// Stores a never-expiring bearer credential for `tenant`.
pub(crate) async fn credential(state: &AppState, tenant: &str) {
    let c = Credential {
        access_token: SecretString::from(format!("upstream-token-{tenant}")),
        refresh_token: None,
        expires_at: None,
        scopes: vec![],
        token_type: "Bearer".into(),
        created_by: "bench".into(),
        auto_refresh: false,
        refresh_count: 0,
        status: Status::Active,
    };
    credentials::save(state.store.as_ref(), tenant, INTEGRATION, &c, Cas::Any)
        .await
        .expect("credential saved");
}

pub(crate) fn bearer_headers(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
    );
    h
}

/// Resident set size of this process, in KiB.
pub(crate) fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}
