//! MCP-aware policy (docs/policy.md): what a client may do with the
//! JSON-RPC messages it sends through a route, and what it sees of the
//! tools the upstream lists.
//!
//! [`Judge::new`] decides whether a request needs judging at all: only a
//! client restricted by `allowedTools`, or a route with `tool_scopes` or
//! `deny` rules, has its body read (kept, bounded by
//! `proxy.max_replay_body_bytes`) and parsed strictly before anything goes
//! upstream; everyone else keeps the streaming fast path. [`Judge::check`]
//! then refuses the request (400, 403) or lets it through with, for a
//! restricted client, a [`ToolFilter`] for the answer.
//!
//! - [`jsonrpc`]: strict JSON (no duplicate keys) and message accessors.
//! - [`tools`]: `*` globs and integration prefixes.
//! - [`rules`]: `[[routes.deny]]` CEL rules.
//! - [`filter`]: `tools/list` answers, JSON and SSE.

pub mod filter;
pub mod jsonrpc;
pub mod rules;
pub mod tools;

use std::sync::Arc;

use base64::Engine;
use http::{HeaderMap, HeaderValue, header};
use serde_json::Value;

pub use filter::ToolFilter;
pub use rules::DenyRuleConfig;

use crate::audit::{Audit, AuditEvent, AuditKind};
use crate::config::RouteConfig;
use crate::error::ProxyError;
use crate::metrics::Metrics;
use crate::oauth::Principal;
use crate::routes::Route;
use jsonrpc::{JsonError, McpMethod};

/// One `tool_scopes` entry: a tool glob and the scopes its calls need.
type ToolScopes = (Box<str>, Box<[Arc<str>]>);

/// A route's tool policy, compiled when the configuration loads.
#[derive(Debug, Default)]
pub struct RoutePolicy {
    tool_scopes: Vec<ToolScopes>,
    rules: Option<rules::Rules>,
}

impl RoutePolicy {
    /// Compiles a route's `tool_scopes` and `deny`; the error names the key.
    pub fn from_config(c: &RouteConfig) -> Result<Self, String> {
        let mut tool_scopes = Vec::with_capacity(c.tool_scopes.len());
        for (glob, scopes) in &c.tool_scopes {
            if glob.is_empty() || scopes.is_empty() || scopes.iter().any(|s| !valid_scope(s)) {
                return Err(format!(
                    "tool_scopes.{glob:?}: needs a tool glob and one or more scopes \
                     (printable ASCII, no spaces or quotes)"
                ));
            }
            tool_scopes.push((
                glob.as_str().into(),
                scopes.iter().map(|s| s.as_str().into()).collect(),
            ));
        }
        let rules = if c.deny.is_empty() {
            None
        } else {
            Some(rules::Rules::compile(&c.deny)?)
        };
        Ok(RoutePolicy { tool_scopes, rules })
    }

    pub fn is_empty(&self) -> bool {
        self.tool_scopes.is_empty() && self.rules.is_none()
    }

    /// The scopes a call of `tool` needs beyond the route's own.
    fn scopes_for<'a>(&'a self, tool: &'a str) -> impl Iterator<Item = &'a Arc<str>> + 'a {
        self.tool_scopes
            .iter()
            .filter(move |(glob, _)| tools::glob_match(glob, tool))
            .flat_map(|(_, scopes)| scopes.iter())
    }
}

/// Scopes go into a quoted `WWW-Authenticate` parameter.
fn valid_scope(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_graphic() && c != b'"' && c != b'\\')
}

/// Checks a route's `tool_scopes` and `deny` for `Config::validate`.
pub fn validate_route(c: &RouteConfig) -> Result<(), String> {
    RoutePolicy::from_config(c).map(|_| ())
}

/// Why a request was refused (the `reason` of its audit event).
#[derive(Debug)]
enum Refusal {
    Malformed(&'static str),
    HeaderMismatch(&'static str),
    NotAllowed(String),
    Scope {
        tool: String,
        scope: String,
    },
    Rule {
        tool: String,
        rule: usize,
        message: Arc<str>,
    },
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed_body",
            Refusal::HeaderMismatch(_) => "header_mismatch",
            Refusal::NotAllowed(_) => "tool_not_allowed",
            Refusal::Scope { .. } => "insufficient_scope",
            Refusal::Rule { .. } => "denied_by_rule",
        }
    }

    fn tool(&self) -> Option<&str> {
        match self {
            Refusal::NotAllowed(t)
            | Refusal::Scope { tool: t, .. }
            | Refusal::Rule { tool: t, .. } => Some(t),
            Refusal::Malformed(_) | Refusal::HeaderMismatch(_) => None,
        }
    }

    fn into_error(self, route: &Route) -> ProxyError {
        match self {
            Refusal::Malformed(m) | Refusal::HeaderMismatch(m) => ProxyError::bad_request(m),
            Refusal::NotAllowed(tool) => ProxyError::Forbidden {
                message: "Tool not allowed for this client".into(),
                details: serde_json::json!({ "tool": tool }),
            },
            Refusal::Scope { scope, .. } => ProxyError::InsufficientScope {
                scope,
                resource_metadata: route.resource_metadata.clone(),
            },
            Refusal::Rule {
                tool,
                rule,
                message,
            } => ProxyError::Forbidden {
                message: message.to_string(),
                details: serde_json::json!({ "tool": tool, "rule": rule }),
            },
        }
    }
}

/// The policy questions one request raises.
pub struct Judge<'a> {
    route: &'a Route,
    principal: &'a Principal,
    tenant: &'a str,
}

impl<'a> Judge<'a> {
    /// `None` when nothing is to be judged: an unrestricted client on a
    /// route without tool policy (the fast path: no body read, no parse).
    pub fn new(route: &'a Route, principal: &'a Principal, tenant: &'a str) -> Option<Self> {
        let restricted = !principal.client.allowed_tools.is_empty();
        (restricted || !route.mcp.is_empty()).then_some(Judge {
            route,
            principal,
            tenant,
        })
    }

    fn restricted(&self) -> bool {
        !self.principal.client.allowed_tools.is_empty()
    }

    fn allows(&self, tool: &str) -> bool {
        self.principal
            .client
            .allows_tool(&self.route.integration, tool)
    }

    /// Judges the request: headers and the kept body (`None` or empty for
    /// a request without one). On success, a restricted client gets a
    /// filter for the answer, and the upstream is asked for an
    /// uncompressed one so it can be filtered.
    pub fn check(
        &self,
        metrics: &Metrics,
        audit: &Audit,
        request_id: &str,
        headers: &mut HeaderMap,
        body: Option<&[u8]>,
        max_answer_bytes: u64,
    ) -> Result<Option<ToolFilter>, ProxyError> {
        let parsed = match body.filter(|b| !b.is_empty()) {
            None => Ok(Value::Array(Vec::new())),
            Some(b) => jsonrpc::parse_strict(b).map_err(|e| {
                Refusal::Malformed(match e {
                    JsonError::DuplicateKey => "duplicate key in request body",
                    JsonError::NotJson => "request body is not JSON",
                })
            }),
        };
        let route: &str = &self.route.integration;
        let (verdict, messages) = match parsed {
            Ok(v) => (self.judge(headers, &v), Some(v)),
            Err(r) => (Err(r), None),
        };
        let result = match &verdict {
            Ok(()) => "allowed",
            Err(r) => r.reason(),
        };
        let count = |method: McpMethod| {
            metrics
                .mcp_requests_total
                .with_label_values(&[route, method.as_str(), result])
                .inc();
        };
        match &messages {
            // Unparsed: the method the headers claim, if any.
            None => count(McpMethod::of(header(headers, "mcp-method"))),
            Some(v) => jsonrpc::messages(v)
                .iter()
                .for_each(|m| count(McpMethod::of(jsonrpc::method(m)))),
        }
        if let Err(refusal) = verdict {
            let tool = refusal.tool().map(|t| truncate(t, 128));
            audit.record(
                AuditKind::McpCallRefused,
                AuditEvent {
                    client_id: Some(&self.principal.client_id),
                    tenant: Some(self.tenant),
                    integration: Some(route),
                    reason: Some(refusal.reason()),
                    request_id: Some(request_id),
                    tool,
                    ..Default::default()
                },
            );
            tracing::debug!(reason = refusal.reason(), "MCP request refused");
            return Err(refusal.into_error(self.route));
        }
        if !self.restricted() {
            return Ok(None);
        }
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        Ok(Some(ToolFilter {
            allowed: self.principal.client.allowed_tools.clone(),
            integration: self.route.integration.clone(),
            max_bytes: usize::try_from(max_answer_bytes).unwrap_or(usize::MAX),
        }))
    }

    fn judge(&self, headers: &HeaderMap, body: &Value) -> Result<(), Refusal> {
        let h_method = single_header(headers, "mcp-method")?;
        let h_name = match single_header(headers, "mcp-name")? {
            Some(v) => Some(decode_header_value(v).ok_or(Refusal::HeaderMismatch(
                "Mcp-Name is not a valid header value",
            ))?),
            None => None,
        };
        // The upstream may route on the headers: a tool they name is judged too.
        if let (Some("tools/call"), Some(name)) = (h_method, h_name.as_deref())
            && !self.allows(name)
        {
            return Err(Refusal::NotAllowed(name.to_owned()));
        }
        let messages = jsonrpc::messages(body);
        for m in messages {
            if jsonrpc::method(m) == Some("tools/call") {
                self.judge_call(m)?;
            }
        }
        if h_method.is_some() || h_name.is_some() {
            agree(h_method, h_name.as_deref(), messages)?;
        }
        Ok(())
    }

    fn judge_call(&self, m: &Value) -> Result<(), Refusal> {
        let params = m.get("params");
        let tool = params
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .ok_or(Refusal::Malformed(
                "tools/call without a string params.name",
            ))?;
        if !self.allows(tool) {
            return Err(Refusal::NotAllowed(tool.to_owned()));
        }
        let policy = &self.route.mcp;
        if policy
            .scopes_for(tool)
            .any(|s| !self.principal.has_scope(s))
        {
            let mut scope: Vec<&str> = self
                .route
                .required_scopes
                .iter()
                .map(String::as_str)
                .collect();
            for s in policy.scopes_for(tool) {
                if !scope.contains(&&**s) {
                    scope.push(s);
                }
            }
            return Err(Refusal::Scope {
                tool: tool.to_owned(),
                scope: scope.join(" "),
            });
        }
        if let Some(rules) = &policy.rules {
            let empty = Value::Object(Default::default());
            let facts = rules::CallFacts {
                tenant: self.tenant,
                client_id: &self.principal.client_id,
                scopes: &self.principal.scopes,
                tool,
                args: params.and_then(|p| p.get("arguments")).unwrap_or(&empty),
            };
            if let Some(r) = rules.evaluate(&facts) {
                return Err(Refusal::Rule {
                    tool: tool.to_owned(),
                    rule: r.rule,
                    message: r.message,
                });
            }
        }
        Ok(())
    }
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A routing header, sent at most once and readable.
fn single_header<'h>(
    headers: &'h HeaderMap,
    name: &'static str,
) -> Result<Option<&'h str>, Refusal> {
    let mut values = headers.get_all(name).iter();
    let Some(v) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Refusal::HeaderMismatch(
            "an MCP routing header is sent more than once",
        ));
    }
    v.to_str()
        .map(Some)
        .map_err(|_| Refusal::HeaderMismatch("an MCP routing header is not ASCII"))
}

/// `Mcp-Name` values outside printable ASCII travel as `=?base64?…?=`.
fn decode_header_value(v: &str) -> Option<String> {
    let Some(payload) = v
        .strip_prefix("=?base64?")
        .and_then(|p| p.strip_suffix("?="))
    else {
        return Some(v.to_owned());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// `Mcp-Method` and `Mcp-Name` must say what the body says: one message,
/// that method, and that name (or uri).
fn agree(method: Option<&str>, name: Option<&str>, messages: &[Value]) -> Result<(), Refusal> {
    let [m] = messages else {
        return Err(Refusal::HeaderMismatch(
            "Mcp-Method/Mcp-Name need a body of one JSON-RPC message",
        ));
    };
    let body_method = jsonrpc::method(m);
    if method.is_some_and(|h| Some(h) != body_method) {
        return Err(Refusal::HeaderMismatch(
            "Mcp-Method does not match the body's method",
        ));
    }
    if let Some(name) = name {
        let body_name = body_method
            .and_then(McpMethod::name_param)
            .and_then(|key| m.get("params")?.get(key)?.as_str());
        if body_name != Some(name) {
            return Err(Refusal::HeaderMismatch("Mcp-Name does not match the body"));
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Wraps the upstream answer for a restricted client (see [`filter`]).
pub fn filter_answer(
    filter: Option<ToolFilter>,
    resp: http::Response<crate::http::Body>,
) -> Result<http::Response<crate::http::Body>, ProxyError> {
    match filter {
        None => Ok(resp),
        Some(f) => f.wrap(resp).map_err(|e| {
            tracing::warn!(error = %e, "upstream answer cannot be filtered for a restricted client");
            ProxyError::UpstreamUnavailable
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn headers_must_agree_with_the_body() {
        let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}});
        let read =
            json!({"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///x"}});
        let one = |v: &Value| vec![v.clone()];
        assert!(agree(Some("tools/call"), Some("a"), &one(&call)).is_ok());
        assert!(agree(Some("tools/call"), None, &one(&call)).is_ok());
        assert!(agree(Some("tools/list"), None, &one(&call)).is_err());
        assert!(agree(Some("tools/call"), Some("b"), &one(&call)).is_err());
        assert!(agree(None, Some("file:///x"), &one(&read)).is_ok());
        assert!(agree(Some("tools/call"), Some("a"), &[call.clone(), call.clone()]).is_err());
        assert!(agree(Some("tools/call"), None, &[]).is_err());
    }

    #[test]
    fn base64_header_values() {
        assert_eq!(decode_header_value("plain").as_deref(), Some("plain"));
        assert_eq!(
            decode_header_value("=?base64?w6lt?=").as_deref(),
            Some("\u{e9}m")
        );
        assert_eq!(decode_header_value("=?base64?%%?="), None);
    }

    fn config(route_extra: &str) -> Result<crate::config::Config, String> {
        let text = format!(
            "[[routes]]\nintegration = \"a\"\npath_prefix = \"/a\"\nupstream = \"http://127.0.0.1:1\"\n{route_extra}"
        );
        crate::config::Config::from_toml_with_env(&text, Vec::new()).map_err(|e| e.to_string())
    }

    #[test]
    fn route_policy_from_config() {
        let c = config(
            "tool_scopes = { \"delete_*\" = [\"mcp:write\"], \"*_admin\" = [\"mcp:admin\", \"mcp:write\"] }\n\
             [[routes.deny]]\nwhen = 'args.n > 1'\nmessage = \"no\"\n",
        )
        .unwrap();
        let p = RoutePolicy::from_config(&c.routes[0]).unwrap();
        assert!(!p.is_empty());
        let needed = |t: &str| p.scopes_for(t).map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(needed("delete_x"), ["mcp:write"]);
        assert_eq!(
            needed("delete_admin"),
            ["mcp:admin", "mcp:write", "mcp:write"]
        );
        assert!(needed("read").is_empty());
        assert!(
            RoutePolicy::from_config(&config("").unwrap().routes[0])
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn bad_route_policy_is_a_config_error_naming_the_key() {
        for (extra, expected) in [
            (
                "tool_scopes = { \"d*\" = [\"a\\\"b\"] }\n",
                "routes[0]: tool_scopes",
            ),
            ("tool_scopes = { \"d*\" = [] }\n", "routes[0]: tool_scopes"),
            (
                "[[routes.deny]]\nwhen = '(('\nmessage = \"m\"\n",
                "routes[0]: deny[0]: `when` does not compile",
            ),
            (
                "[[routes.deny]]\nwhen = 'true'\nmessage = \"m\"\nwhy = 1\n",
                "why",
            ),
        ] {
            let err = config(extra).unwrap_err();
            assert!(err.contains(expected), "{extra}: {err}");
        }
    }

    #[test]
    fn scopes_must_be_header_safe() {
        assert!(valid_scope("mcp:write"));
        assert!(!valid_scope("a b") && !valid_scope("a\"b") && !valid_scope(""));
    }
}
