//! The body type every handler answers with, what a handler knows of its
//! connection, and small request and response helpers. Below both the
//! server and the proxy.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited, combinators::UnsyncBoxBody};
use serde::Serialize;

use crate::error::ProxyError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Response (and forwarded request) body: streamed or buffered, boxed once.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;

/// What a handler knows about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's IP, formatted once per connection (`X-Forwarded-For`).
    pub peer_ip: http::HeaderValue,
    pub tls: bool,
}

impl ConnInfo {
    /// `X-Forwarded-Proto` for requests on this connection.
    pub fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// Marker error: the streamed request body passed `max_body_bytes`.
#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body over {} bytes", self.0)
    }
}

impl std::error::Error for BodyTooLarge {}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e| match e {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    full(Bytes::new())
}

pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(full(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON answer that must not be cached (it carries a secret or a token).
pub fn json_no_store<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<Body> {
    let mut resp = json_response(status, value);
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Buffers a small request body (OAuth and admin endpoints, bodies kept for
/// replay), refusing more than `limit` bytes with 413 and a body that has
/// not fully arrived within `deadline` with 408: a stalled sender cannot pin
/// the buffer.
pub async fn read_body<B>(body: B, limit: usize, deadline: Duration) -> Result<Bytes, ProxyError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    // The timer is only registered if the body is not already complete.
    match tokio::time::timeout(deadline, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ProxyError::RequestTimeout),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(ProxyError::PayloadTooLarge {
            limit: limit as u64,
        }),
        Ok(Err(_)) => Err(ProxyError::bad_request("could not read request body")),
    }
}

/// A fresh request id (UUID v4), unless the caller sent a usable one.
pub fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    headers
        .get("x-request-id")
        .filter(|v| {
            let b = v.as_bytes();
            !b.is_empty()
                && b.len() <= 128
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.:".contains(c))
        })
        .cloned()
        .unwrap_or_else(|| {
            // A thread-local CSPRNG (uuid's `fast-rng`): no syscall per request.
            let mut buf = uuid::Uuid::encode_buffer();
            let id = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
            HeaderValue::from_str(id).expect("uuid is ascii")
        })
}

/// Reads and discards what is left of a request body, briefly, so the
/// connection stays usable for the caller's next request. Returns false when
/// the body did not end in time or was too large: the answer must then say
/// `Connection: close`, because hyper closes a connection whose request body
/// was not read, and a pooling client would see its next request fail.
pub async fn drain<B>(body: B) -> bool
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    const MAX_DRAIN: usize = 64 * 1024;
    if body.is_end_stream() {
        return true;
    }
    // Frames are dropped as they come: nothing of a refused body is kept.
    let discard = async move {
        let mut body = std::pin::pin!(body);
        let mut seen = 0usize;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > MAX_DRAIN {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(Duration::from_millis(200), discard)
        .await
        .unwrap_or(false)
}

pin_project_lite::pin_project! {
    /// A streamed body that fails when no frame arrives for `idle` while it
    /// is waited on: a stalled peer cannot hold a connection and its buffers
    /// forever. The timer is armed only when the body makes its reader wait,
    /// so a body that is ready when read costs no timer at all.
    pub struct IdleTimeout<B> {
        #[pin]
        inner: B,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        idle: std::time::Duration,
    }
}

impl<B> IdleTimeout<B> {
    pub fn new(inner: B, idle: std::time::Duration) -> Self {
        IdleTimeout {
            inner,
            sleep: None,
            idle,
        }
    }
}

/// The error a stalled stream ends with.
#[derive(Debug)]
pub struct StreamIdle;

impl std::fmt::Display for StreamIdle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stream idle timeout")
    }
}

impl std::error::Error for StreamIdle {}

impl<B> http_body::Body for IdleTimeout<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        use std::future::Future;
        use std::task::Poll;
        let mut this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep.set(None);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.sleep.is_none() {
                    this.sleep.set(Some(tokio::time::sleep(*this.idle)));
                }
                match this.sleep.as_pin_mut().map(|s| s.poll(cx)) {
                    Some(Poll::Ready(())) => Poll::Ready(Some(Err(Box::new(StreamIdle)))),
                    _ => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_408_and_a_complete_one_is_read() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(1);
        let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
        tx.send(Ok(http_body::Frame::data(Bytes::from("part"))))
            .await
            .unwrap();
        let read = read_body(body, 1024, Duration::from_secs(30));
        let err = read.await.unwrap_err();
        assert!(matches!(err, ProxyError::RequestTimeout), "{err:?}");
        drop(tx);
        let whole = read_body(full("ok"), 1024, Duration::from_secs(30)).await;
        assert_eq!(whole.unwrap(), "ok");
        let big = read_body(full("too long"), 3, Duration::from_secs(30)).await;
        assert!(matches!(big, Err(ProxyError::PayloadTooLarge { limit: 3 })));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_stream_is_cut_and_active_one_is_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, BoxError>>(1);
        let body = http_body_util::StreamBody::new(tokio_stream_from(rx));
        let mut body = Box::pin(IdleTimeout::new(body, Duration::from_secs(5)));
        tx.send(Ok(http_body::Frame::data(Bytes::from("a"))))
            .await
            .unwrap();
        assert!(body.frame().await.unwrap().is_ok());
        tokio::time::advance(Duration::from_secs(4)).await;
        tx.send(Ok(http_body::Frame::data(Bytes::from("b"))))
            .await
            .unwrap();
        assert!(
            body.frame().await.unwrap().is_ok(),
            "activity resets the timer"
        );
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.is::<StreamIdle>());
        drop(tx);
    }

    fn tokio_stream_from<T>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures_util::Stream<Item = T> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
