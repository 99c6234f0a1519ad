//! docs/configuration.md and config/credgate.toml cannot drift from the config structs:
//! every key `Config` serializes (the defaults, plus a fixture that sets every optional
//! key, map entry and route field) must be documented in docs/configuration.md and
//! annotated in config/credgate.toml.

use std::collections::BTreeSet;

use credgate::config::Config;

/// Sets what the defaults leave out: optional keys, one entry of each map, one route.
/// It must keep deserializing (unknown keys are errors), so a renamed key fails here.
const EVERY_OPTIONAL_KEY: &str = r#"
[proxy]
upstream_ca_file = "ca.pem"
tls_cert = "c.pem"
tls_key = "k.pem"
[ops]
tls_cert = "c.pem"
tls_key = "k.pem"
[oauth]
issuer = "https://issuer.example"
[store]
master_key_file = "m.key"
[store.vault]
namespace = "ns"
ca_cert = "ca.pem"
role_id_file = "r"
secret_id_file = "s"
role = "credgate"
[rate_limit.tenants.t]
per_second = 1
[rate_limit.clients.c]
per_second = 1
[integrations.x]
scope = "a"
token_url = "https://p.example/token"
authorize_url = "https://p.example/authorize"
client_id = "id"
client_secret_env = "X_SECRET"
connect_url = "https://p.example/connect"
scopes = ["repo"]
revocation_url = "https://p.example/revoke"
issuer = "https://p.example"
authorize_params = { prompt = "consent" }
[rate_limit.redis]
url = "redis://127.0.0.1:6379"
[tracing]
otlp_endpoint = "http://127.0.0.1:4318"
[[routes]]
integration = "x"
path_prefix = "/x"
host = "x.example"
upstream = "http://127.0.0.1:1"
tool_scopes = { "delete_*" = ["mcp:write"] }
[[routes.deny]]
when = 'tool == "x"'
message = "no"
"#;

fn paths(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = match prefix {
                    "integrations" => "<name>".to_owned(),
                    "rate_limit.tenants" => "<tenant>".to_owned(),
                    "rate_limit.clients" => "<client>".to_owned(),
                    _ => k.clone(),
                };
                let path = if prefix.is_empty() {
                    key
                } else {
                    format!("{prefix}.{key}")
                };
                // Inline tables whose keys are the user's (`inject = { header = … }`, tool
                // globs, provider parameters) are documented as a whole.
                let whole = [
                    "routes[].inject",
                    "routes[].tool_scopes",
                    "integrations.<name>.authorize_params",
                ];
                if matches!(v, toml::Value::Table(_)) && !whole.contains(&path.as_str()) {
                    paths(&path, v, out);
                } else if let toml::Value::Array(items) = v
                    && items.iter().all(toml::Value::is_table)
                    && !items.is_empty()
                {
                    for item in items {
                        paths(&format!("{path}[]"), item, out);
                    }
                } else if path != "routes" {
                    out.insert(path);
                }
            }
        }
        other => {
            out.insert(format!("{prefix} = {other}"));
        }
    }
}

fn every_key() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for config in [
        Config::default(),
        toml::from_str::<Config>(EVERY_OPTIONAL_KEY).expect("the fixture is a valid config"),
    ] {
        let value = toml::Value::try_from(&config).expect("serializable");
        paths("", &value, &mut out);
    }
    out
}

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn every_key_is_in_the_configuration_reference() {
    let doc = read("docs/configuration.md");
    let keys = every_key();
    if std::env::var_os("PRINT_KEYS").is_some() {
        eprintln!("{keys:#?}");
    }
    assert!(keys.len() > 60, "suspiciously few keys: {keys:?}");
    let missing: Vec<_> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/configuration.md does not document (as `key.path`): {missing:#?}"
    );
}

#[test]
fn every_key_is_annotated_in_the_sample_config() {
    let sample = read("config/credgate.toml");
    // The sample must itself be a valid config.
    toml::from_str::<Config>(&sample).expect("config/credgate.toml parses as a Config");
    let lines: Vec<&str> = sample
        .lines()
        .map(|l| l.trim_start_matches(['#', ' ']))
        .collect();
    let missing: Vec<_> = every_key()
        .into_iter()
        .filter(|k| {
            let leaf = k.rsplit('.').next().unwrap_or(k);
            !lines.iter().any(|l| l.starts_with(&format!("{leaf} =")))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "config/credgate.toml shows no `key =` line (set or commented) for: {missing:#?}"
    );
}
