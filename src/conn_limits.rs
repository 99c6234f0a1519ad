//! How long a connection may hold a slot without asking for anything
//! (docs/RELIABILITY.md, "Hardening catalogue").
//!
//! hyper-util's auto builder first reads up to 24 bytes to tell HTTP/1.1
//! from an HTTP/2 preface, with no deadline; hyper's own HTTP/1.1 header
//! timeout only starts after that, and HTTP/2 has none. So every connection
//! is supervised here: one that has not delivered a complete request head
//! within `proxy.header_read_timeout_seconds` (nothing at all, a partial
//! head, only the HTTP/2 preface, an HTTP/2 connection that opens no stream)
//! is dropped; one that has had no request in flight and no new request for
//! that long (an idle HTTP/2 connection) is shut down gracefully (GOAWAY),
//! and dropped if it does not go within a short grace. A connection with a
//! request in flight (an open SSE stream, say) is never idle.
//!
//! Cost on the request path: an `Arc` clone and three relaxed atomic
//! operations per request; one timer per connection, re-armed once per
//! `header_read_timeout`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

/// The longest a connection gets to leave after a graceful shutdown when
/// nothing is in flight (an HTTP/2 peer that never acknowledges GOAWAY).
const MAX_CLOSE_GRACE: Duration = Duration::from_secs(5);

/// Requests seen on one connection.
#[derive(Debug, Default)]
pub(crate) struct Activity {
    /// Requests whose head was complete (the service was called).
    started: AtomicU64,
    /// Requests whose answer is not finished yet.
    open: AtomicUsize,
}

/// Held from the moment a request head arrives until its response body is
/// done (or dropped): the connection is busy meanwhile.
#[derive(Debug)]
pub(crate) struct InFlight(Arc<Activity>);

impl InFlight {
    pub(crate) fn start(activity: &Arc<Activity>) -> Self {
        activity.started.fetch_add(1, Ordering::Relaxed);
        activity.open.fetch_add(1, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request [`InFlight`] until it ends.
    pub(crate) struct Tracked<B> {
        #[pin]
        body: B,
        guard: InFlight,
    }
}

impl<B> Tracked<B> {
    pub(crate) fn new(body: B, guard: InFlight) -> Self {
        Tracked { body, guard }
    }
}

impl<B: http_body::Body<Data = Bytes>> http_body::Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, B::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Drives `conn` until it ends, applying the limits in the module doc: the
/// first request head is due at `head_due`, then no request may be missing
/// for `idle`. `graceful` starts the connection's graceful shutdown; `stop`
/// turning true (server shutdown) starts it too.
pub(crate) async fn supervise<C, E>(
    conn: C,
    graceful: impl Fn(Pin<&mut C>),
    activity: &Activity,
    head_due: Instant,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    let grace = idle.min(MAX_CLOSE_GRACE);
    let mut seen = 0;
    let mut closing = false;
    let mut check = head_due;
    loop {
        tokio::select! {
            done = conn.as_mut() => return done,
            _ = stop.wait_for(|s| *s), if !closing => {
                graceful(conn.as_mut());
                closing = true;
                check = Instant::now() + grace;
            }
            () = tokio::time::sleep_until(check) => {
                let started = activity.started.load(Ordering::Relaxed);
                let open = activity.open.load(Ordering::Relaxed);
                if open > 0 || started != seen {
                    seen = started;
                    check = Instant::now() + if closing { grace } else { idle };
                    continue;
                }
                if closing || started == 0 {
                    // Nothing in flight, nothing asked: no one to be polite to.
                    tracing::debug!(requests = started, "closing a connection with no request");
                    return Ok(());
                }
                graceful(conn.as_mut());
                closing = true;
                check = Instant::now() + grace;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A connection that never ends by itself but ends once its graceful
    /// shutdown was asked for, if `obeys`.
    struct Conn {
        shut: Arc<AtomicBool>,
        obeys: bool,
    }

    impl Future for Conn {
        type Output = Result<(), ()>;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            if self.obeys && self.shut.load(Ordering::Relaxed) {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    fn conn(obeys: bool) -> (Conn, Arc<AtomicBool>) {
        let shut = Arc::new(AtomicBool::new(false));
        (
            Conn {
                shut: shut.clone(),
                obeys,
            },
            shut,
        )
    }

    fn graceful(c: Pin<&mut Conn>) {
        c.shut.store(true, Ordering::Relaxed);
    }

    const IDLE: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_asks_is_dropped_at_the_header_timeout() {
        let (c, shut) = conn(true);
        let (_tx, rx) = watch::channel(false);
        let activity = Activity::default();
        let t0 = Instant::now();
        supervise(c, graceful, &activity, Instant::now() + IDLE, IDLE, rx)
            .await
            .unwrap();
        assert_eq!(t0.elapsed(), IDLE);
        assert!(
            !shut.load(Ordering::Relaxed),
            "dropped, not asked to shut down"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_shut_down_and_a_busy_one_is_not() {
        let (c, shut) = conn(false);
        let (_tx, rx) = watch::channel(false);
        let activity = Arc::new(Activity::default());
        let a = activity.clone();
        let t0 = Instant::now();
        let task = tokio::spawn(async move {
            supervise(c, graceful, &a, Instant::now() + IDLE, IDLE, rx).await
        });
        // One request, open for a long time (a stream): never idle.
        let guard = InFlight::start(&activity);
        tokio::time::sleep(IDLE * 5).await;
        assert!(!shut.load(Ordering::Relaxed) && !task.is_finished());
        drop(guard);
        // Idle from now: asked to shut down within two checks, then dropped
        // after the grace because it does not go by itself.
        task.await.unwrap().unwrap();
        assert!(shut.load(Ordering::Relaxed));
        assert!(
            t0.elapsed() <= IDLE * 7 + MAX_CLOSE_GRACE,
            "{:?}",
            t0.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn server_shutdown_is_graceful() {
        let (c, shut) = conn(true);
        let (tx, rx) = watch::channel(false);
        let activity = Arc::new(Activity::default());
        let _busy = InFlight::start(&activity);
        let a = activity.clone();
        let task = tokio::spawn(async move {
            supervise(c, graceful, &a, Instant::now() + IDLE, IDLE, rx).await
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send(true).unwrap();
        task.await.unwrap().unwrap();
        assert!(shut.load(Ordering::Relaxed));
    }
}
