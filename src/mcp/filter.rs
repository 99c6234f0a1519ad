//! `tools/list` answers filtered to the tools a restricted client may call.
//!
//! Every JSON-RPC response whose `result.tools` is a list has the entries
//! the client may not call removed, whatever request it answers (a
//! resumed SSE stream replays answers too). `application/json` answers
//! are read whole; `text/event-stream` answers are filtered event by
//! event as they arrive, never waiting for more than the event at hand.
//! An answer credgate cannot read is withheld rather than passed on:
//! data that is not strict JSON (duplicate keys), a compressed body, or an
//! event larger than the bound (`proxy.max_body_bytes`) ends the answer.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, header};
use http_body::Frame;
use serde_json::Value;

use super::jsonrpc::parse_strict;
use super::tools;
use crate::http::{Body, BoxError};

/// What a restricted client may see of a tools list.
#[derive(Debug, Clone)]
pub struct ToolFilter {
    pub allowed: Arc<[Arc<str>]>,
    pub integration: Arc<str>,
    /// Largest JSON answer or SSE event credgate reads.
    pub max_bytes: usize,
}

/// The error an answer ends with when it cannot be filtered.
#[derive(Debug)]
pub struct Unfilterable(&'static str);

impl std::fmt::Display for Unfilterable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "tools/list answer withheld: {}", self.0)
    }
}

impl std::error::Error for Unfilterable {}

impl ToolFilter {
    /// Removes the tools the client may not call from every response in
    /// `v` (one message or a batch). Returns whether anything changed.
    pub fn filter_value(&self, v: &mut Value) -> bool {
        let mut changed = false;
        let items: &mut [Value] = match v {
            Value::Array(items) => items,
            one => std::slice::from_mut(one),
        };
        for m in items {
            let Some(list) = m
                .get_mut("result")
                .and_then(|r| r.get_mut("tools"))
                .and_then(Value::as_array_mut)
            else {
                continue;
            };
            let before = list.len();
            list.retain(|t| {
                t.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| tools::allows(&self.allowed, &self.integration, n))
            });
            changed |= list.len() != before;
        }
        changed
    }

    /// One JSON document: `Ok(None)` when it passes unchanged.
    pub fn filter_json(&self, bytes: &[u8]) -> Result<Option<Vec<u8>>, Unfilterable> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            // No payload (a 202 to a notification, a DELETE's answer).
            return Ok(None);
        }
        let mut v = parse_strict(bytes).map_err(|_| Unfilterable("answer is not strict JSON"))?;
        if !self.filter_value(&mut v) {
            return Ok(None);
        }
        serde_json::to_vec(&v)
            .map(Some)
            .map_err(|_| Unfilterable("cannot serialize"))
    }

    /// Wraps an upstream answer so the client sees only its tools.
    pub fn wrap(self, resp: Response<Body>) -> Result<Response<Body>, Unfilterable> {
        let kind = match content_type(&resp) {
            Some(t) if t.starts_with("text/event-stream") => Kind::Sse(SseEvents::default()),
            Some(t) if t.starts_with("application/json") || t.ends_with("+json") => {
                Kind::Json(BytesMut::new())
            }
            // Not JSON-RPC: nothing a client would read a tools list from.
            _ => return Ok(resp),
        };
        if resp
            .headers()
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v != "identity")
        {
            return Err(Unfilterable("compressed answer"));
        }
        let (mut parts, body) = resp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = Filtered {
            inner: body,
            filter: self,
            kind,
            done: false,
        };
        Ok(Response::from_parts(
            parts,
            http_body_util::BodyExt::boxed_unsync(body),
        ))
    }
}

fn content_type(resp: &Response<Body>) -> Option<String> {
    resp.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v: &HeaderValue| v.to_str().ok())
        .map(|s| s.trim().to_ascii_lowercase())
}

/// Splits an SSE stream into events and filters each one (pure: the
/// body below and the property tests drive it).
#[derive(Debug, Default)]
pub struct SseEvents {
    buf: BytesMut,
    /// Bytes of `buf` already known to hold no event boundary.
    scanned: usize,
    /// Start of the line being scanned.
    line_start: usize,
    /// The last byte scanned was a CR that ended the buffer.
    after_cr: bool,
    /// The last event went out rewritten (its line ends are LFs).
    last_rewritten: bool,
}

impl SseEvents {
    /// Takes the next chunk; returns what may go to the client now.
    pub fn push(&mut self, mut chunk: &[u8], filter: &ToolFilter) -> Result<Bytes, Unfilterable> {
        let mut out = BytesMut::new();
        if self.after_cr && self.buf.is_empty() && chunk.first() == Some(&b'\n') {
            // The rest of the CRLF that ended the last event goes with it
            // (a rewritten event already ended with its own line ends).
            if !self.last_rewritten {
                out.extend_from_slice(b"\n");
            }
            chunk = &chunk[1..];
            self.after_cr = false;
        }
        self.buf.extend_from_slice(chunk);
        while let Some(end) = self.next_event_end() {
            let event = self.buf.split_to(end).freeze();
            self.scanned = 0;
            self.line_start = 0;
            self.last_rewritten = filter_event(&event, filter, &mut out);
        }
        if self.buf.len() > filter.max_bytes {
            return Err(Unfilterable("event too large"));
        }
        Ok(out.freeze())
    }

    /// The stream ended: what is left is treated as a last event.
    pub fn finish(&mut self, filter: &ToolFilter) -> Bytes {
        let mut out = BytesMut::new();
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf).freeze();
            let _ = filter_event(&rest, filter, &mut out);
        }
        out.freeze()
    }

    /// End (exclusive) of the first complete event in `buf`: an empty line
    /// ends it; lines end with CRLF, LF or CR. A CR that ends the buffer
    /// ends its line at once (no waiting for the next chunk); an LF that
    /// then follows is the rest of that CRLF, not another line.
    fn next_event_end(&mut self) -> Option<usize> {
        let b = &self.buf;
        let mut i = self.scanned;
        while i < b.len() {
            let c = b[i];
            if std::mem::take(&mut self.after_cr) && c == b'\n' {
                i += 1;
                self.line_start = i;
                continue;
            }
            if c != b'\n' && c != b'\r' {
                i += 1;
                continue;
            }
            let mut end = i + 1;
            if c == b'\r' {
                match b.get(end) {
                    Some(b'\n') => end += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            let empty_line = i == self.line_start;
            i = end;
            self.line_start = end;
            if empty_line {
                return Some(end);
            }
        }
        self.scanned = i;
        None
    }
}

/// Lines of an event, without their terminators.
fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest.iter().position(|c| *c == b'\n' || *c == b'\r');
        let (line, next) = match end {
            None => (rest, &rest[rest.len()..]),
            Some(i) if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') => {
                (&rest[..i], &rest[i + 2..])
            }
            Some(i) => (&rest[..i], &rest[i + 1..]),
        };
        rest = next;
        Some(line)
    })
}

/// A line's field name and value (`data: x` → (`data`, `x`)).
fn field(line: &[u8]) -> (&[u8], &[u8]) {
    match line.iter().position(|c| *c == b':') {
        None => (line, &[]),
        Some(i) => {
            let v = &line[i + 1..];
            (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
        }
    }
}

/// Appends the event as the client may see it: unchanged, rewritten
/// without the tools it may not call (returns true), or nothing at all.
fn filter_event(event: &[u8], filter: &ToolFilter, out: &mut BytesMut) -> bool {
    let mut data: Vec<u8> = Vec::new();
    let mut data_lines = 0usize;
    for line in lines(event) {
        let (name, value) = field(line);
        if name == b"data" {
            if data_lines > 0 {
                data.push(b'\n');
            }
            data.extend_from_slice(value);
            data_lines += 1;
        }
    }
    let rewritten = match filter.filter_json(&data) {
        // Unchanged, or no payload (a priming event, a comment, a retry hint).
        Ok(None) => {
            out.extend_from_slice(event);
            return false;
        }
        Ok(Some(json)) => json,
        Err(e) => {
            tracing::debug!(error = %e, "SSE event withheld from a restricted client");
            return true;
        }
    };
    let mut wrote_data = false;
    for line in lines(event) {
        let (name, _) = field(line);
        if name == b"data" {
            if !wrote_data {
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(&rewritten);
                out.extend_from_slice(b"\n");
                wrote_data = true;
            }
        } else if !line.is_empty() {
            out.extend_from_slice(line);
            out.extend_from_slice(b"\n");
        }
    }
    out.extend_from_slice(b"\n");
    true
}

enum Kind {
    Json(BytesMut),
    Sse(SseEvents),
}

struct Filtered {
    inner: Body,
    filter: ToolFilter,
    kind: Kind,
    done: bool,
}

impl http_body::Body for Filtered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(f))) => f,
                Poll::Ready(None) => {
                    this.done = true;
                    let rest = match &mut this.kind {
                        Kind::Sse(events) => events.finish(&this.filter),
                        Kind::Json(buf) => match this.filter.filter_json(buf) {
                            Ok(None) => std::mem::take(buf).freeze(),
                            Ok(Some(v)) => Bytes::from(v),
                            Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                        },
                    };
                    return Poll::Ready((!rest.is_empty()).then(|| Ok(Frame::data(rest))));
                }
            };
            let data = match frame.into_data() {
                Ok(d) => d,
                // Trailers: pass them on once the data before them is out.
                Err(frame) => return Poll::Ready(Some(Ok(frame))),
            };
            match &mut this.kind {
                Kind::Sse(events) => match events.push(&data, &this.filter) {
                    Ok(out) if out.is_empty() => continue,
                    Ok(out) => return Poll::Ready(Some(Ok(Frame::data(out)))),
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                },
                Kind::Json(buf) => {
                    if buf.len() + data.len() > this.filter.max_bytes {
                        this.done = true;
                        return Poll::Ready(Some(Err(Box::new(Unfilterable("answer too large")))));
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> ToolFilter {
        ToolFilter {
            allowed: vec!["search_*".into(), "github/whoami".into()].into(),
            integration: "github".into(),
            max_bytes: 1 << 16,
        }
    }

    const LIST: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"search_code"},{"name":"delete_repo"},{"name":"whoami"},{"title":"no name"}]}}"#;

    fn names(json: &[u8]) -> Vec<String> {
        let v: Value = serde_json::from_slice(json).unwrap();
        v["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn json_answers_keep_only_allowed_tools() {
        let out = filter().filter_json(LIST.as_bytes()).unwrap().unwrap();
        assert_eq!(names(&out), ["search_code", "whoami"]);
        let other = br#"{"jsonrpc":"2.0","id":2,"result":{"content":[]}}"#;
        assert_eq!(filter().filter_json(other).unwrap(), None);
        let dup = br#"{"result":{"tools":[]},"result":{"tools":[{"name":"delete_repo"}]}}"#;
        assert!(filter().filter_json(dup).is_err());
    }

    #[test]
    fn sse_events_are_filtered_one_by_one() {
        let f = filter();
        let mut ev = SseEvents::default();
        let first = ev.push(b"id: 1\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\r\n\r\n", &f).unwrap();
        assert!(
            first.starts_with(b"id: 1\r\n"),
            "unchanged events pass byte for byte"
        );
        let partial = ev
            .push(format!("id: 2\ndata: {}", &LIST[..40]).as_bytes(), &f)
            .unwrap();
        assert!(partial.is_empty(), "an incomplete event is held");
        let rest = ev
            .push(
                format!("{}\n\n: keep-alive\n\n", &LIST[40..]).as_bytes(),
                &f,
            )
            .unwrap();
        let text = String::from_utf8(rest.to_vec()).unwrap();
        assert!(text.starts_with("id: 2\ndata: {"), "{text}");
        assert!(
            !text.contains("delete_repo") && text.contains("search_code"),
            "{text}"
        );
        assert!(text.ends_with("\n\n: keep-alive\n\n"), "{text}");
        assert!(ev.finish(&f).is_empty());
    }

    #[test]
    fn unreadable_events_are_withheld_and_big_ones_end_the_stream() {
        let f = filter();
        let mut ev = SseEvents::default();
        let out = ev
            .push(b"data: {\"a\":1,\"a\":2}\n\ndata:\n\n", &f)
            .unwrap();
        assert_eq!(&out[..], b"data:\n\n");
        let mut small = filter();
        small.max_bytes = 10;
        assert!(
            SseEvents::default()
                .push(b"data: 0123456789abc", &small)
                .is_err()
        );
    }

    #[test]
    fn multi_line_data_and_cr_line_ends() {
        let f = filter();
        let mut ev = SseEvents::default();
        let (a, b) = LIST.split_at(LIST.find("\"result\"").unwrap());
        let out = ev
            .push(format!("data: {a}\rdata: {b}\r").as_bytes(), &f)
            .unwrap();
        assert!(out.is_empty(), "a trailing CR may be half of CRLF");
        let out = ev.push(b"\r", &f).unwrap();
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(
            !text.contains("delete_repo") && text.contains("whoami"),
            "{text}"
        );
    }
}
