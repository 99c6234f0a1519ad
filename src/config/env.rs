//! `CREDGATE_<SECTION>__<KEY>` overrides, typed by the key they set.
//!
//! The value of an override is a string; what it becomes is decided by the key, never
//! by what the string looks like: a key that holds a string in the file (or in the
//! defaults) gets the string as is (`CREDGATE_OAUTH__ISSUER=123.456` stays a string), a
//! number key gets a number, a list key a TOML array (or a comma-separated list of
//! strings). Keys of `[[routes]]` are addressed by index: `CREDGATE_ROUTES__0__UPSTREAM`.
//! A key credgate does not know is an error naming the variable; a `CREDGATE_` variable
//! without `__` that is not one of credgate's own secrets is reported by
//! [`unmatched_env_vars`] (it would otherwise be silently ignored).
//! See docs/configuration.md.

use super::{Config, ConfigError, ENV_ADMIN_TOKEN, ENV_MASTER_KEY};

/// `CREDGATE_` variables credgate reads by name (secrets), not as config overrides.
pub const KNOWN_ENV_VARS: &[&str] = &[ENV_ADMIN_TOKEN, ENV_MASTER_KEY];

/// Applies every `CREDGATE_…__…` variable of `vars` to `table`. `defaults` is the
/// default configuration as a TOML tree, used to type keys the file does not set.
pub(super) fn apply_overrides(
    table: &mut toml::Table,
    defaults: &toml::Table,
    vars: &[(String, String)],
) -> Result<(), ConfigError> {
    for (var, raw) in vars {
        let Some(rest) = var.strip_prefix("CREDGATE_") else {
            continue;
        };
        if !rest.contains("__") {
            continue;
        }
        let err = |m: String| ConfigError::Env(format!("{var}: {m}"));
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(err("empty key segment (two `__` in a row?)".into()));
        }
        let dotted = path.join(".");
        let known = lookup(table, &path).or_else(|| lookup(defaults, &path));
        let value = match known {
            Some(like) => typed(raw, like).map_err(|m| err(format!("{dotted}: {m}")))?,
            None => probe(table, &path, raw).map_err(|m| err(format!("{dotted}: {m}")))?,
        };
        set(table, &path, value).map_err(|m| err(format!("{dotted}: {m}")))?;
    }
    Ok(())
}

/// `CREDGATE_` variables that are neither overrides (`__`) nor read by name: most
/// likely a misspelt override such as `CREDGATE_PROXY_LISTEN`.
pub fn unmatched_env_vars(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
    let mut out: Vec<String> = vars
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| {
            k.strip_prefix("CREDGATE_")
                .is_some_and(|rest| !rest.contains("__") && !KNOWN_ENV_VARS.contains(&k.as_str()))
        })
        .collect();
    out.sort();
    out
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (first, rest) = path.split_first()?;
    let mut v = table.get(first)?;
    for seg in rest {
        v = match v {
            toml::Value::Table(t) => t.get(seg)?,
            toml::Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// `raw` as a value of the same TOML type as `like`.
fn typed(raw: &str, like: &toml::Value) -> Result<toml::Value, String> {
    use toml::Value as V;
    let t = raw.trim();
    Ok(match like {
        V::String(_) => V::String(raw.to_owned()),
        V::Integer(_) => V::Integer(
            t.parse()
                .map_err(|_| format!("`{raw}` is not an integer"))?,
        ),
        V::Float(_) => V::Float(t.parse().map_err(|_| format!("`{raw}` is not a number"))?),
        V::Boolean(_) => V::Boolean(match t {
            "true" => true,
            "false" => false,
            _ => return Err(format!("`{raw}` is not `true` or `false`")),
        }),
        V::Array(items) => match parse_toml(t) {
            Some(v @ V::Array(_)) => v,
            _ if items.iter().all(toml::Value::is_str) => V::Array(
                t.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| V::String(s.to_owned()))
                    .collect(),
            ),
            _ => return Err(format!("`{raw}` is not a TOML array")),
        },
        V::Table(_) => match parse_toml(t) {
            Some(v @ V::Table(_)) => v,
            _ => return Err(format!("`{raw}` is not a TOML inline table")),
        },
        V::Datetime(_) => parse_toml(t).ok_or_else(|| format!("`{raw}` is not a date-time"))?,
    })
}

/// For a key set neither in the file nor in the defaults (an optional key, a new map
/// entry): a string when the key takes one, else the value parsed as TOML. A key that
/// does not exist is an error.
fn probe(table: &toml::Table, path: &[String], raw: &str) -> Result<toml::Value, String> {
    let as_string = toml::Value::String(raw.to_owned());
    let mut trial = table.clone();
    set(&mut trial, path, as_string.clone())?;
    match toml::Value::Table(trial).try_into::<Config>() {
        Ok(_) => Ok(as_string),
        Err(e) => {
            let msg = e.message().to_owned();
            let last = path.last().map(String::as_str).unwrap_or_default();
            if msg.contains("unknown field") && msg.contains(&format!("`{last}`")) {
                Err(format!("no such configuration key ({})", msg.trim()))
            } else if let Some(v) = parse_toml(raw.trim()) {
                Ok(v)
            } else if msg.contains("expected a sequence") {
                typed(raw, &toml::Value::Array(Vec::new()))
            } else {
                Ok(as_string)
            }
        }
    }
}

fn parse_toml(raw: &str) -> Option<toml::Value> {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
}

/// Sets `path` in `table`, creating tables on the way; list elements (`[[routes]]`)
/// are addressed by index and must exist.
fn set(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (first, rest) = path.split_first().ok_or("empty key")?;
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return Ok(());
    }
    let mut cur = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    for (n, seg) in rest.iter().enumerate() {
        let is_last = n + 1 == rest.len();
        let slot = match cur {
            toml::Value::Table(t) => t
                .entry(seg.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new())),
            toml::Value::Array(a) => {
                let len = a.len();
                let i: usize = seg
                    .parse()
                    .map_err(|_| format!("`{seg}` is not an index into a list"))?;
                a.get_mut(i).ok_or_else(|| {
                    format!("index {i} is out of range: the list has {len} entries")
                })?
            }
            _ => return Err(format!("cannot set `{seg}` inside a plain value")),
        };
        if is_last {
            *slot = value;
            return Ok(());
        }
        cur = slot;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError, Inject, InjectMode};

    fn load(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(
            text,
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    const ROUTE: &str = "[[routes]]\nintegration = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\n";

    #[test]
    fn a_number_looking_value_stays_a_string_for_a_string_key() {
        let c = load(
            "",
            &[
                ("CREDGATE_STORE__VAULT__KV_MOUNT", "123.456"),
                ("CREDGATE_STORE__VAULT__NAMESPACE", "42"),
                ("CREDGATE_AUDIT__PATH", "true"),
            ],
        )
        .unwrap();
        assert_eq!(c.store.vault.kv_mount, "123.456");
        assert_eq!(c.store.vault.namespace.as_deref(), Some("42"));
        assert_eq!(c.audit.path, "true");
    }

    #[test]
    fn values_are_typed_by_the_key() {
        let c = load(
            "",
            &[
                ("CREDGATE_PROXY__MAX_BODY_BYTES", "2048"),
                ("CREDGATE_METRICS__TENANT_LABEL", "true"),
                (
                    "CREDGATE_PROXY__TRUSTED_PROXIES",
                    "10.0.0.0/8, 192.168.0.0/16",
                ),
                ("CREDGATE_RATE_LIMIT__TENANTS__ACME__PER_SECOND", "3"),
            ],
        )
        .unwrap();
        assert_eq!(c.proxy.max_body_bytes, 2048);
        assert!(c.metrics.tenant_label);
        assert_eq!(c.proxy.trusted_proxies.len(), 2);
        assert_eq!(c.rate_limit.tenants["acme"].per_second, 3);
        let e = load("", &[("CREDGATE_PROXY__MAX_BODY_BYTES", "12.5")]).unwrap_err();
        assert!(matches!(e, ConfigError::Env(_)), "{e}");
        assert!(
            e.to_string().contains("CREDGATE_PROXY__MAX_BODY_BYTES"),
            "{e}"
        );
    }

    #[test]
    fn routes_are_overridden_by_index() {
        let c = load(
            ROUTE,
            &[
                ("CREDGATE_ROUTES__0__UPSTREAM", "http://127.0.0.1:3001"),
                ("CREDGATE_ROUTES__0__STRIP_PREFIX", "true"),
                ("CREDGATE_ROUTES__0__REQUIRED_SCOPES", "mcp,read"),
                ("CREDGATE_ROUTES__0__INJECT", "basic"),
            ],
        )
        .unwrap();
        let r = &c.routes[0];
        assert_eq!(r.upstream, "http://127.0.0.1:3001");
        assert!(r.strip_prefix);
        assert_eq!(r.required_scopes, ["mcp", "read"]);
        assert_eq!(r.inject, Inject::Mode(InjectMode::Basic));
        let c = load(
            ROUTE,
            &[("CREDGATE_ROUTES__0__INJECT", "{ header = \"X-API-Key\" }")],
        )
        .unwrap();
        assert_eq!(
            c.routes[0].inject,
            Inject::Header {
                header: "X-API-Key".into()
            }
        );
        let e = load(ROUTE, &[("CREDGATE_ROUTES__1__UPSTREAM", "http://x")]).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
    }

    #[test]
    fn a_misspelt_override_is_an_environment_error() {
        let e = load("", &[("CREDGATE_PROXY__LISTN", "127.0.0.1:1")]).unwrap_err();
        assert!(matches!(e, ConfigError::Env(_)), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("environment variable CREDGATE_PROXY__LISTN"),
            "{msg}"
        );
        assert!(msg.contains("listen"), "suggests the right key: {msg}");
    }

    #[test]
    fn single_underscore_variables_are_reported() {
        let vars = [
            ("CREDGATE_PROXY_LISTEN", "x"),
            ("CREDGATE_ADMIN_TOKEN", "x"),
            ("CREDGATE_MASTER_KEY", "x"),
            ("CREDGATE_PROXY__LISTEN", "x"),
            ("HOME", "x"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(
            super::unmatched_env_vars(vars),
            ["CREDGATE_PROXY_LISTEN".to_string()]
        );
    }
}
