//! `allowedTools` entries and `tool_scopes` keys: tool names or `*` globs,
//! an `allowedTools` entry optionally prefixed by an integration
//! (`github/search_*` applies only on that integration's routes).

use std::sync::Arc;

use crate::ids;

/// Whether `text` matches `pattern`, where `*` stands for any run of
/// characters (also none) and every other character for itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was, and the text position it currently covers up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                // Let the last `*` take one more character and retry.
                Some((sp, st)) => {
                    star = Some((sp, st + 1));
                    pi = sp + 1;
                    ti = st + 1;
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == b'*')
}

/// Whether one `allowedTools` entry allows `tool` on a route of `integration`.
pub fn entry_allows(entry: &str, integration: &str, tool: &str) -> bool {
    match entry.split_once('/') {
        Some((prefix, pattern)) if ids::validate(prefix).is_ok() => {
            prefix == integration && glob_match(pattern, tool)
        }
        _ => glob_match(entry, tool),
    }
}

/// Whether a client with `allowed` (`allowedTools`; empty = unrestricted)
/// may call `tool` on a route of `integration`.
pub fn allows(allowed: &[Arc<str>], integration: &str, tool: &str) -> bool {
    allowed.is_empty() || allowed.iter().any(|e| entry_allows(e, integration, tool))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        for (p, t) in [
            ("search", "search"),
            ("search_*", "search_issues"),
            ("search_*", "search_"),
            ("*", ""),
            ("*", "anything"),
            ("*_read*", "repo_read_all"),
            ("a*b*c", "aXbYbZc"),
            ("**", "x"),
        ] {
            assert!(glob_match(p, t), "{p} ~ {t}");
        }
        for (p, t) in [
            ("search", "search2"),
            ("search_*", "searc"),
            ("search_*", "Search_x"),
            ("a*b*c", "aXbYbZ"),
            ("", "x"),
            ("delete", "\u{0064}elete2"),
        ] {
            assert!(!glob_match(p, t), "{p} !~ {t}");
        }
    }

    #[test]
    fn integration_prefixes() {
        let list: Vec<Arc<str>> = vec!["github/search_*".into(), "whoami".into()];
        assert!(allows(&list, "github", "search_code"));
        assert!(
            !allows(&list, "gitlab", "search_code"),
            "prefix binds the integration"
        );
        assert!(allows(&list, "gitlab", "whoami"), "no prefix: every route");
        assert!(!allows(&list, "github", "delete_repo"));
        assert!(
            allows(&[], "github", "delete_repo"),
            "empty list: unrestricted"
        );
        // Not an integration id before the slash: the whole entry is a glob.
        assert!(entry_allows("Ns/tool", "github", "Ns/tool"));
    }
}
