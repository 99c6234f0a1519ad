//! What a SIGHUP reload changes, key by key.
//!
//! A reload applies some settings at once (see [`LIVE`]) and cannot apply
//! the rest (listeners, TLS, the store, timeouts and limits read where
//! connections are set up, …). Rather than keep a hand-written list of the
//! latter that goes stale as keys are added, the old and new configs are
//! compared as data: every changed key not known to be live is named in the
//! log as needing a restart. A new key is thus reported until someone makes
//! it live and adds it here.

use crate::config::{Config, ConfigError};

/// Why a reloaded config was refused (the running one is kept).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Routes or rate limits that cannot be built.
    #[error("{0}")]
    Routes(String),
    #[error(transparent)]
    Refresh(#[from] crate::refresh::SetupError),
    #[error("log.level: {0}")]
    LogLevel(String),
}

/// Keys (or whole sections) a reload applies to the running process.
/// `log.level` is live unless `RUST_LOG` is set (it wins).
pub const LIVE: &[&str] = &[
    "routes",
    "rate_limit",
    "proxy.max_body_bytes",
    "proxy.max_replay_body_bytes",
    "integrations",
    "refresh.before_seconds",
    "refresh.min_interval_seconds",
    "refresh.concurrency",
    "log.level",
];

/// Dotted names of the keys whose values differ between `old` and `new`
/// (arrays such as `routes` compare whole). Names only: values may be
/// sensitive and are never returned.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<String> {
    let (Ok(old), Ok(new)) = (toml::Value::try_from(old), toml::Value::try_from(new)) else {
        return vec!["(configuration did not serialize)".into()];
    };
    let mut out = Vec::new();
    diff("", &old, &new, &mut out);
    out
}

fn diff(prefix: &str, old: &toml::Value, new: &toml::Value, out: &mut Vec<String>) {
    let name = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match (old, new) {
        (toml::Value::Table(a), toml::Value::Table(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                match (a.get(k), b.get(k)) {
                    (Some(x), Some(y)) => diff(&name(k), x, y, out),
                    _ => out.push(name(k)),
                }
            }
        }
        (a, b) if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

/// Whether `key` falls under one of `live`.
fn is_live(key: &str, live: &[&str]) -> bool {
    live.iter().any(|l| {
        key == *l
            || key
                .strip_prefix(l)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The changed keys a reload cannot apply: each needs a restart.
/// `log_level_live`: false when `RUST_LOG` overrides `log.level`.
pub fn needs_restart(old: &Config, new: &Config, log_level_live: bool) -> Vec<String> {
    changed_keys(old, new)
        .into_iter()
        .filter(|k| !is_live(k, LIVE) || (k == "log.level" && !log_level_live))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn names_every_changed_key_that_is_not_live() {
        let old = parse("[proxy]\nmax_body_bytes = 100\n[refresh]\nbefore_seconds = 60\n");
        let new = parse(
            "[proxy]\nmax_body_bytes = 200\ntrusted_proxies = [\"10.0.0.0/8\"]\n\
             [refresh]\nbefore_seconds = 90\ninterval_seconds = 7\n\
             [log]\nlevel = \"debug\"\n[metrics]\ntenant_label = true\n",
        );
        assert_eq!(
            needs_restart(&old, &new, true),
            [
                "metrics.tenant_label",
                "proxy.trusted_proxies",
                "refresh.interval_seconds"
            ]
        );
        assert!(needs_restart(&old, &new, false).contains(&"log.level".to_owned()));
        assert!(needs_restart(&old, &old, true).is_empty());
        assert!(is_live("rate_limit.tenants.t1.burst", LIVE));
        assert!(!is_live("rate_limitx", LIVE));
    }
}
