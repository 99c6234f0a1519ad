//! The route table: which upstream and integration serve a request.
//!
//! Built once from config. Host routes win over path routes; among path
//! routes the longest prefix that ends on a segment boundary wins.

use std::sync::Arc;

use http::header::HeaderName;

use crate::config::{Config, Inject, RouteConfig};
use crate::upstream::Target;

#[derive(Debug)]
pub struct Route {
    /// Position in the table; also the credential cache's integration slot.
    pub index: usize,
    /// Metric label: the integration id (bounded by config).
    pub integration: Arc<str>,
    pub path_prefix: Option<String>,
    pub host: Option<String>,
    /// Where requests go: the upstream's connection pool and `Host`.
    pub upstream: Target,
    /// Upstream base path without a trailing `/` (empty for the root).
    pub upstream_base: String,
    pub strip_prefix: bool,
    pub required_scopes: Vec<String>,
    pub inject: Inject,
    /// The header the credential goes in (`Authorization`, or the name of
    /// `inject = { header = … }`), parsed once when the table is built.
    pub inject_header: HeaderName,
    /// RFC 9728 resource URL, also the audience of tokens bound to the route.
    pub resource: Arc<str>,
    /// URL of the route's RFC 9728 document (for `WWW-Authenticate`).
    pub resource_metadata: Arc<str>,
    /// `tool_scopes` and `deny` rules, compiled.
    pub mcp: crate::mcp::RoutePolicy,
}

impl Route {
    fn from_config(index: usize, c: &RouteConfig, public_url: &str) -> Self {
        // Validated by Config::validate.
        let uri: http::Uri = c.upstream.parse().expect("validated upstream URL");
        let parts = uri.into_parts();
        let base = parts
            .path_and_query
            .map(|p| p.path().trim_end_matches('/').to_owned())
            .unwrap_or_default();
        Route {
            index,
            integration: c.integration.as_str().into(),
            path_prefix: c.path_prefix.clone(),
            host: c.host.as_ref().map(|h| h.to_ascii_lowercase()),
            upstream: Target::new(
                parts.scheme.expect("validated scheme"),
                parts.authority.expect("validated authority"),
            ),
            upstream_base: base,
            strip_prefix: c.strip_prefix,
            required_scopes: c.required_scopes.clone(),
            inject_header: match &c.inject {
                Inject::Header { header } => {
                    HeaderName::from_bytes(header.as_bytes()).expect("validated header name")
                }
                Inject::Mode(_) => http::header::AUTHORIZATION,
            },
            inject: c.inject.clone(),
            resource: c.resource_url(public_url).into(),
            resource_metadata: c.resource_metadata_url(public_url).into(),
            mcp: crate::mcp::RoutePolicy::from_config(c).expect("validated tool policy"),
        }
    }

    /// The upstream path and query for a request path (`path` starts with `/`).
    pub fn upstream_path_and_query(&self, path: &str, query: Option<&str>) -> String {
        let rest = match (&self.path_prefix, self.strip_prefix) {
            (Some(p), true) if p != "/" => &path[p.len()..],
            _ => path,
        };
        let rest = if rest.is_empty() { "/" } else { rest };
        let mut out = String::with_capacity(self.upstream_base.len() + rest.len() + 64);
        out.push_str(&self.upstream_base);
        out.push_str(rest);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

#[derive(Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
}

impl Routes {
    pub fn from_config(config: &Config) -> Self {
        let public_url = &config.proxy.public_url;
        Routes {
            routes: config
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| Route::from_config(i, r, public_url))
                .collect(),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route for a request, by `Host` (without port) then by path.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        if let Some(host) = host {
            let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
            if let Some(r) = self.routes.iter().find(|r| {
                r.host
                    .as_deref()
                    .is_some_and(|h| h.eq_ignore_ascii_case(name))
            }) {
                return Some(r);
            }
        }
        self.routes
            .iter()
            .filter(|r| {
                r.path_prefix
                    .as_deref()
                    .is_some_and(|p| prefix_matches(p, path))
            })
            .max_by_key(|r| r.path_prefix.as_ref().map_or(0, String::len))
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The route table of a TOML config (for tests of modules that take routes).
    pub(crate) fn routes(toml: &str) -> Routes {
        Routes::from_config(&Config::from_toml_with_env(toml, Vec::new()).unwrap())
    }

    const TABLE: &str = r#"
        [[routes]]
        integration = "root"
        path_prefix = "/"
        upstream = "http://127.0.0.1:1"
        [[routes]]
        integration = "github"
        path_prefix = "/github"
        upstream = "http://127.0.0.1:2/base/"
        strip_prefix = true
        [[routes]]
        integration = "gh-enterprise"
        path_prefix = "/github/enterprise"
        upstream = "http://127.0.0.1:3"
        [[routes]]
        integration = "slack"
        host = "slack.example"
        upstream = "https://127.0.0.1:4"
    "#;

    #[test]
    fn longest_prefix_on_segment_boundary() {
        let t = routes(TABLE);
        let name = |p: &str| t.find(None, p).map(|r| r.integration.to_string());
        assert_eq!(name("/github/mcp").as_deref(), Some("github"));
        assert_eq!(name("/github").as_deref(), Some("github"));
        assert_eq!(name("/githubx/mcp").as_deref(), Some("root"));
        assert_eq!(
            name("/github/enterprise/mcp").as_deref(),
            Some("gh-enterprise")
        );
        assert_eq!(name("/other").as_deref(), Some("root"));
    }

    #[test]
    fn host_routes_win_and_ignore_port() {
        let t = routes(TABLE);
        let r = t.find(Some("Slack.Example:8443"), "/github").unwrap();
        assert_eq!(&*r.integration, "slack");
        assert!(r.upstream.key().starts_with("https://"));
    }

    #[test]
    fn no_route_without_match() {
        let t = routes(
            r#"
            [[routes]]
            integration = "github"
            path_prefix = "/github"
            upstream = "http://127.0.0.1:2"
            "#,
        );
        assert!(t.find(None, "/").is_none());
        assert!(t.find(Some("x"), "/gitlab/mcp").is_none());
    }

    #[test]
    fn upstream_paths() {
        let t = routes(TABLE);
        let gh = t.find(None, "/github/mcp").unwrap();
        assert_eq!(
            gh.upstream_path_and_query("/github/mcp", Some("a=1")),
            "/base/mcp?a=1"
        );
        assert_eq!(gh.upstream_path_and_query("/github", None), "/base/");
        let ent = t.find(None, "/github/enterprise/mcp").unwrap();
        assert_eq!(
            ent.upstream_path_and_query("/github/enterprise/mcp", None),
            "/github/enterprise/mcp"
        );
        assert_eq!(&*gh.resource, "http://127.0.0.1:8080/github");
        assert_eq!(
            &*gh.resource_metadata,
            "http://127.0.0.1:8080/.well-known/oauth-protected-resource/github"
        );
        let root = t.find(None, "/x").unwrap();
        assert_eq!(&*root.resource, "http://127.0.0.1:8080");
    }
}
