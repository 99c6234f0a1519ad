//! Property tests of the MCP policy's parsers (docs/policy.md): the strict
//! JSON-RPC parser, the tool globs, and the SSE `tools/list` filter.
//!
//! Properties: nothing panics on any bytes; strict parsing agrees with
//! serde_json on documents without duplicate keys and refuses every
//! document with one; escaped names read as what they spell; the SSE
//! filter's output does not depend on how the stream was cut into chunks,
//! never carries a tool the client may not call, keeps every other event
//! byte for byte, and releases each event as soon as its blank line came in.

use std::sync::Arc;

use credgate::mcp::filter::{SseEvents, ToolFilter};
use credgate::mcp::jsonrpc::{JsonError, parse_strict};
use credgate::mcp::tools::glob_match;
use proptest::prelude::*;
use serde_json::{Value, json};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        "[a-z\\\\\"/\u{e9}\u{1F600} ]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map("[a-z]{1,4}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// `s` as a JSON string literal with some characters written as `\uXXXX`.
fn escaped(s: &str, mask: u64) -> String {
    let mut out = String::from("\"");
    for (i, c) in s.chars().enumerate() {
        if mask >> (i % 64) & 1 == 1 && (c as u32) < 0x10000 {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else if c == '"' || c == '\\' {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// The obvious (exponential) glob matcher the fast one must agree with.
fn glob_reference(p: &[u8], t: &[u8]) -> bool {
    match p.split_first() {
        None => t.is_empty(),
        Some((b'*', rest)) => (0..=t.len()).any(|i| glob_reference(rest, &t[i..])),
        Some((c, rest)) => t.first() == Some(c) && glob_reference(rest, &t[1..]),
    }
}

fn filter() -> ToolFilter {
    ToolFilter {
        allowed: vec![Arc::<str>::from("search_*"), Arc::from("api/whoami")].into(),
        integration: "api".into(),
        max_bytes: 1 << 20,
    }
}

fn allowed(name: &str) -> bool {
    glob_match("search_*", name) || name == "whoami"
}

/// One generated upstream event: a tools list answer, a notification, or
/// a comment; with the line ending it uses.
#[derive(Debug, Clone)]
enum Ev {
    Tools(Vec<String>),
    Note(u32),
    Comment,
}

fn event() -> impl Strategy<Value = Ev> {
    prop_oneof![
        prop::collection::vec(
            prop_oneof![
                "search_[a-z]{0,5}",
                Just("whoami".to_owned()),
                "delete_[a-z]{0,5}",
                Just("admin".to_owned()),
            ],
            0..6
        )
        .prop_map(Ev::Tools),
        any::<u32>().prop_map(Ev::Note),
        Just(Ev::Comment),
    ]
}

fn render(events: &[Ev], eol: &str, split_data: bool) -> Vec<u8> {
    let mut out = String::new();
    for (i, e) in events.iter().enumerate() {
        match e {
            Ev::Tools(names) => {
                let tools: Vec<Value> = names.iter().map(|n| json!({"name": n})).collect();
                let data = json!({"jsonrpc": "2.0", "id": i, "result": {"tools": tools}}).to_string();
                out.push_str(&format!("id: {i}{eol}event: message{eol}"));
                if split_data {
                    // The same JSON over two data lines (joined with a newline).
                    let at = data.find("\"result\"").unwrap();
                    out.push_str(&format!("data: {}{eol}data: {}{eol}", &data[..at], &data[at..]));
                } else {
                    out.push_str(&format!("data: {data}{eol}"));
                }
            }
            Ev::Note(n) => out.push_str(&format!(
                "data: {}{eol}",
                json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": n}})
            )),
            Ev::Comment => out.push_str(&format!(": keep-alive {i}{eol}")),
        }
        out.push_str(eol);
    }
    out.into_bytes()
}

/// A plain SSE reader (WHATWG rules) for checking what the client gets.
fn read_events(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    let mut events = Vec::new();
    let mut data: Option<String> = None;
    let mut lines: Vec<&str> = text.split('\n').collect();
    lines.pop(); // after the last line end: an unfinished line, or nothing
    for line in lines {
        if line.is_empty() {
            if let Some(d) = data.take() {
                events.push(d);
            }
        } else if let Some(v) = line.strip_prefix("data:") {
            let v = v.strip_prefix(' ').unwrap_or(v);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(v);
                }
                None => data = Some(v.to_owned()),
            }
        }
    }
    events
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn strict_parse_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let strict = parse_strict(&bytes);
        let lenient = serde_json::from_slice::<Value>(&bytes);
        // Whatever strict accepts, serde_json reads the same way.
        if let Ok(v) = &strict {
            prop_assert_eq!(Some(v), lenient.as_ref().ok());
        }
    }

    #[test]
    fn strict_parse_agrees_without_duplicates_and_refuses_them(v in json_value(), key in "[a-z]{1,4}") {
        let text = serde_json::to_vec(&v).unwrap();
        prop_assert_eq!(parse_strict(&text), Ok(v.clone()));
        // The same key twice, at the top or one level down.
        let dup = format!(r#"{{"{key}":1,"x":{},"{key}":2}}"#, String::from_utf8(text.clone()).unwrap());
        prop_assert_eq!(parse_strict(dup.as_bytes()), Err(JsonError::DuplicateKey));
        let nested = format!(r#"[{{"params":{{"{key}":{},"{key}":null}}}}]"#, String::from_utf8(text).unwrap());
        prop_assert_eq!(parse_strict(nested.as_bytes()), Err(JsonError::DuplicateKey));
    }

    #[test]
    fn escaped_names_read_as_spelled(name in "[a-z_/\u{e9}\"\\\\]{1,12}", mask in any::<u64>()) {
        let body = format!(r#"{{"method":{},"params":{{"name":{}}}}}"#, escaped("tools/call", mask), escaped(&name, mask.rotate_left(7)));
        let v = parse_strict(body.as_bytes()).unwrap();
        prop_assert_eq!(v["method"].as_str(), Some("tools/call"));
        prop_assert_eq!(v["params"]["name"].as_str(), Some(name.as_str()));
    }

    #[test]
    fn globs_agree_with_the_reference(p in "[ab*]{0,7}", t in "[ab]{0,9}") {
        prop_assert_eq!(glob_match(&p, &t), glob_reference(p.as_bytes(), t.as_bytes()));
    }

    #[test]
    fn sse_filter_is_chunking_invariant_and_never_leaks(
        events in prop::collection::vec(event(), 0..8),
        eol in prop_oneof![Just("\n"), Just("\r\n"), Just("\r")],
        split_data in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let f = filter();
        let stream = render(&events, eol, split_data);
        let mut whole = SseEvents::default();
        let mut expected = whole.push(&stream, &f).unwrap().to_vec();
        expected.extend_from_slice(&whole.finish(&f));

        let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        at.push(0);
        at.push(stream.len());
        at.sort_unstable();
        at.dedup();
        let mut pieces = SseEvents::default();
        let mut got = Vec::new();
        for w in at.windows(2) {
            got.extend_from_slice(&pieces.push(&stream[w[0]..w[1]], &f).unwrap());
            // Streaming: every event whose blank line has come in is out.
            let complete_in = read_events_complete(&stream[..w[1]]);
            prop_assert!(read_events(&got).len() >= complete_in, "an event was held back");
        }
        got.extend_from_slice(&pieces.finish(&f));
        prop_assert_eq!(&got, &expected);

        let out = read_events(&got);
        let data_events = events.iter().filter(|e| !matches!(e, Ev::Comment)).count();
        prop_assert_eq!(out.len(), data_events);
        for (data, ev) in out.iter().zip(events.iter().filter(|e| !matches!(e, Ev::Comment))) {
            let v: Value = serde_json::from_str(data).unwrap();
            match ev {
                Ev::Tools(names) => {
                    let seen: Vec<&str> = v["result"]["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
                    let want: Vec<&str> = names.iter().map(String::as_str).filter(|n| allowed(n)).collect();
                    prop_assert_eq!(seen, want);
                }
                Ev::Note(n) => prop_assert_eq!(v["params"]["progress"].as_u64(), Some(u64::from(*n))),
                Ev::Comment => unreachable!(),
            }
        }
        // Streams with nothing to remove pass byte for byte.
        if events.iter().all(|e| match e { Ev::Tools(n) => n.iter().all(|n| allowed(n)), _ => true }) {
            prop_assert_eq!(&got, &stream);
        }
    }

    #[test]
    fn sse_filter_never_panics_on_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512), cut in any::<prop::sample::Index>()) {
        let f = filter();
        let at = cut.index(bytes.len() + 1);
        let mut ev = SseEvents::default();
        let mut out = ev.push(&bytes[..at], &f).unwrap().to_vec();
        out.extend_from_slice(&ev.push(&bytes[at..], &f).unwrap());
        out.extend_from_slice(&ev.finish(&f));
        // Whatever came in, what goes out is a prefix-free re-cut of it or less.
        prop_assert!(out.len() <= bytes.len() + 1, "{} > {}", out.len(), bytes.len());
    }
}

/// How many data-bearing events a client could have read from `prefix`.
fn read_events_complete(prefix: &[u8]) -> usize {
    // A trailing CR already ends its line; read_events treats it so.
    read_events(prefix).len()
}
