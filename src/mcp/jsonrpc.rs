//! Strict JSON for the bodies credgate judges: a duplicate key anywhere is
//! an error, so credgate and the upstream can never read two different
//! messages out of one body (a parser that keeps the first value and one
//! that keeps the last would). Escapes (`\u0064elete`) are resolved by
//! serde_json before anything is compared; nesting is bounded by its
//! recursion limit.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Why a body is not acceptable JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("duplicate key in JSON body")]
    DuplicateKey,
    #[error("body is not JSON")]
    NotJson,
}

/// Marker text of the duplicate-key error inside serde_json's error.
const DUPLICATE: &str = "credgate: duplicate key";

/// Parses `bytes` as one JSON document, refusing duplicate object keys.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(v)) => Ok(v),
        Err(e) if e.is_data() && e.to_string().starts_with(DUPLICATE) => {
            Err(JsonError::DuplicateKey)
        }
        Err(_) => Err(JsonError::NotJson),
    }
}

/// A `serde_json::Value` whose objects had no duplicate keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            if map.contains_key(&key) {
                return Err(de::Error::custom(DUPLICATE));
            }
            let Strict(v) = access.next_value()?;
            map.insert(key, v);
        }
        Ok(Value::Object(map))
    }
}

/// The messages of a body: the elements of a batch, or the one message.
pub fn messages(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) => items,
        one => std::slice::from_ref(one),
    }
}

/// A message's `method`, when it is a string.
pub fn method(m: &Value) -> Option<&str> {
    m.get("method").and_then(Value::as_str)
}

/// The MCP methods credgate counts by name (`method` label of
/// `credgate_mcp_requests_total`); everything else is `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McpMethod {
    Initialize,
    ToolsList,
    ToolsCall,
    ResourcesRead,
    PromptsGet,
    Other,
}

impl McpMethod {
    pub fn of(method: Option<&str>) -> Self {
        match method {
            Some("initialize") => McpMethod::Initialize,
            Some("tools/list") => McpMethod::ToolsList,
            Some("tools/call") => McpMethod::ToolsCall,
            Some("resources/read") => McpMethod::ResourcesRead,
            Some("prompts/get") => McpMethod::PromptsGet,
            _ => McpMethod::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            McpMethod::Initialize => "initialize",
            McpMethod::ToolsList => "tools/list",
            McpMethod::ToolsCall => "tools/call",
            McpMethod::ResourcesRead => "resources/read",
            McpMethod::PromptsGet => "prompts/get",
            McpMethod::Other => "other",
        }
    }

    /// The `params` member the 2026-07-28 `Mcp-Name` header mirrors.
    pub fn name_param(method: &str) -> Option<&'static str> {
        match method {
            "tools/call" | "prompts/get" => Some("name"),
            "resources/read" => Some("uri"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_any_depth() {
        for bad in [
            r#"{"a":1,"a":2}"#,
            r#"{"params":{"name":"x","name":"y"}}"#,
            r#"[{"ok":1},{"b":{"c":[{"d":1,"d":1}]}}]"#,
            r#"{"name":"x","n\u0061me":"y"}"#,
        ] {
            assert_eq!(
                parse_strict(bad.as_bytes()),
                Err(JsonError::DuplicateKey),
                "{bad}"
            );
        }
        assert!(parse_strict(br#"{"a":{"a":1},"b":[{"a":1},{"a":2}]}"#).is_ok());
    }

    #[test]
    fn escapes_are_resolved_and_garbage_refused() {
        let v =
            parse_strict(br#"{"method":"tools\/call","params":{"name":"\u0064elete"}}"#).unwrap();
        assert_eq!(method(&v), Some("tools/call"));
        assert_eq!(v["params"]["name"], "delete");
        for bad in [
            &b"{not json"[..],
            b"",
            b"\xff",
            br#"{"a":"\ud800"}"#,
            b"{} {}",
        ] {
            assert_eq!(parse_strict(bad), Err(JsonError::NotJson), "{bad:?}");
        }
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        assert_eq!(parse_strict(deep.as_bytes()), Err(JsonError::NotJson));
    }

    #[test]
    fn batches_and_single_messages() {
        let batch = parse_strict(br#"[{"method":"a"},{"method":1}]"#).unwrap();
        let m = messages(&batch);
        assert_eq!((method(&m[0]), method(&m[1])), (Some("a"), None));
        let one = parse_strict(br#"{"method":"tools/list"}"#).unwrap();
        assert_eq!(
            McpMethod::of(method(&messages(&one)[0])),
            McpMethod::ToolsList
        );
    }
}
