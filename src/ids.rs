//! Tenant and integration identifiers: `^[a-z0-9][a-z0-9_-]{0,62}$`.
//!
//! They become store paths, so anything else is refused wherever it enters.

/// Why an identifier was refused; the text is safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid identifier: must match ^[a-z0-9][a-z0-9_-]{{0,62}}$")]
pub struct InvalidId;

/// Checks one identifier.
pub fn validate(id: &str) -> Result<&str, InvalidId> {
    let b = id.as_bytes();
    let ok = matches!(b.first(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && b.len() <= 63
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_' || *c == b'-');
    if ok { Ok(id) } else { Err(InvalidId) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_grammar() {
        for id in ["a", "0", "tenant-123", "a_b", &"a".repeat(63)] {
            assert!(validate(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn refuses_everything_else() {
        for id in [
            "",
            "_credgate",
            "-a",
            "A",
            "a/b",
            "..",
            "a.b",
            "a%2e",
            "a\0",
            "é",
            " a",
            &"a".repeat(64),
        ] {
            assert!(validate(id).is_err(), "{id:?}");
        }
    }
}
