//! `[[routes.deny]]`: argument rules in CEL, compiled when the
//! configuration loads and evaluated on each `tools/call` of the route.
//!
//! A rule sees `tenant` (string), `client` (`id`, `scopes`), `tool` (the
//! name) and `args` (the call's `arguments`, JSON mapped to CEL: integers
//! are `int`, other numbers `double`). `true` refuses the call with the
//! rule's message. A rule that cannot be evaluated (a missing key, a
//! result that is not a bool) refuses the call too: rules fail closed, so
//! write `has(args.amount) && args.amount > 100` for optional arguments.

use std::collections::HashMap;
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};
use serde::{Deserialize, Serialize};

/// One `[[routes.deny]]` table as written in the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyRuleConfig {
    /// A CEL expression; `true` refuses the call.
    pub when: String,
    /// Shown to the caller in the 403 answer.
    pub message: String,
}

/// What a rule is evaluated against.
#[derive(Debug, Clone, Copy)]
pub struct CallFacts<'a> {
    pub tenant: &'a str,
    pub client_id: &'a str,
    pub scopes: &'a [Arc<str>],
    pub tool: &'a str,
    pub args: &'a serde_json::Value,
}

/// Why a call was refused by the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRefusal {
    /// Index of the rule in the route's `deny` list.
    pub rule: usize,
    pub message: Arc<str>,
}

struct Rule {
    program: Program,
    message: Arc<str>,
}

/// A route's compiled rules.
pub struct Rules {
    env: Arc<Env>,
    rules: Vec<Rule>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("count", &self.rules.len())
            .finish()
    }
}

impl Rules {
    /// Compiles every rule; the error names the rule (`deny[i]`).
    pub fn compile(configs: &[DenyRuleConfig]) -> Result<Self, String> {
        let env = Arc::new(Env::stdlib());
        let mut rules = Vec::with_capacity(configs.len());
        for (i, c) in configs.iter().enumerate() {
            if c.when.trim().is_empty() || c.message.trim().is_empty() {
                return Err(format!("deny[{i}]: `when` and `message` must not be empty"));
            }
            let program = env.compile(&c.when).map_err(|e| {
                format!(
                    "deny[{i}]: `when` does not compile: {}",
                    one_line(&e.to_string())
                )
            })?;
            rules.push(Rule {
                program,
                message: c.message.as_str().into(),
            });
        }
        Ok(Rules { env, rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule that refuses the call, if any.
    pub fn evaluate(&self, facts: &CallFacts<'_>) -> Option<RuleRefusal> {
        if self.rules.is_empty() {
            return None;
        }
        let mut ctx = Context::with_env(self.env.clone());
        ctx.add_variable_from_value("tenant", facts.tenant);
        ctx.add_variable_from_value("tool", facts.tool);
        let scopes: Vec<Value> = facts.scopes.iter().map(|s| Value::from(&**s)).collect();
        ctx.add_variable_from_value(
            "client",
            map([
                ("id", Value::from(facts.client_id)),
                ("scopes", Value::List(Arc::new(scopes))),
            ]),
        );
        ctx.add_variable_from_value("args", to_cel(facts.args));
        for (i, rule) in self.rules.iter().enumerate() {
            let refuse = match rule.program.execute(&ctx) {
                Ok(Value::Bool(b)) => b,
                Ok(other) => {
                    tracing::warn!(rule = i, result = ?other.type_of(), "deny rule is not a bool; refusing");
                    true
                }
                Err(e) => {
                    tracing::warn!(rule = i, error = %e, "deny rule could not be evaluated; refusing");
                    true
                }
            };
            if refuse {
                return Some(RuleRefusal {
                    rule: i,
                    message: rule.message.clone(),
                });
            }
        }
        None
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    let m: HashMap<Key, Value> = entries
        .into_iter()
        .map(|(k, v)| (Key::String(Arc::new(k.to_owned())), v))
        .collect();
    Value::Map(Map { map: Arc::new(m) })
}

/// JSON → CEL. Integers that fit `int` are `int` (so `args.n > 100`
/// compares like with like); other numbers are `double`.
pub fn to_cel(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Null => Value::Null,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::String(Arc::new(s.clone())),
        J::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
        J::Object(o) => {
            let m: HashMap<Key, Value> = o
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v)))
                .collect();
            Value::Map(Map { map: Arc::new(m) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(whens: &[&str]) -> Result<Rules, String> {
        let c: Vec<DenyRuleConfig> = whens
            .iter()
            .map(|w| DenyRuleConfig {
                when: (*w).into(),
                message: format!("refused by {w}"),
            })
            .collect();
        Rules::compile(&c)
    }

    fn facts<'a>(
        tool: &'a str,
        args: &'a serde_json::Value,
        scopes: &'a [Arc<str>],
    ) -> CallFacts<'a> {
        CallFacts {
            tenant: "acme",
            client_id: "c1",
            scopes,
            tool,
            args,
        }
    }

    #[test]
    fn rules_see_every_variable() {
        let scopes: Vec<Arc<str>> = vec!["mcp".into()];
        let r = rules(&[
            r#"tool == "transfer" && args.amount > 100"#,
            r#"tenant == "blocked""#,
            r#"tool.startsWith("admin_") && !("mcp:admin" in client.scopes)"#,
            r#"has(args.path) && args.path.contains("..")"#,
        ])
        .unwrap();
        let small = json!({"amount": 50});
        let big = json!({"amount": 500});
        let float = json!({"amount": 100.5});
        assert_eq!(r.evaluate(&facts("transfer", &small, &scopes)), None);
        assert_eq!(
            r.evaluate(&facts("transfer", &big, &scopes)).unwrap().rule,
            0
        );
        assert_eq!(
            r.evaluate(&facts("transfer", &float, &scopes))
                .unwrap()
                .rule,
            0
        );
        let none = json!({});
        assert_eq!(
            r.evaluate(&facts("admin_x", &none, &scopes)).unwrap().rule,
            2
        );
        let admin: Vec<Arc<str>> = vec!["mcp".into(), "mcp:admin".into()];
        assert_eq!(r.evaluate(&facts("admin_x", &none, &admin)), None);
        let path = json!({"path": "../etc"});
        assert_eq!(r.evaluate(&facts("read", &path, &scopes)).unwrap().rule, 3);
    }

    #[test]
    fn evaluation_errors_refuse() {
        let scopes: Vec<Arc<str>> = vec![];
        let r = rules(&["args.amount > 100", r#""not a bool""#]).unwrap();
        let none = json!({});
        let refusal = r.evaluate(&facts("t", &none, &scopes)).unwrap();
        assert_eq!(refusal.rule, 0, "missing key fails closed");
        let r = rules(&[r#""not a bool""#]).unwrap();
        assert!(r.evaluate(&facts("t", &none, &scopes)).is_some());
    }

    #[test]
    fn broken_rules_are_named() {
        let e = rules(&["true", "args.amount >"]).unwrap_err();
        assert!(e.starts_with("deny[1]: `when` does not compile"), "{e}");
        assert!(rules(&[" "]).unwrap_err().starts_with("deny[0]"));
    }
}
