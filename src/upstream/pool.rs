//! Idle upstream connections, pooled per upstream, and the response body
//! that drives its connection and hands it back when it ends.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;

use crate::http::Body;

/// How long an upstream connection may sit idle in the pool: between two and
/// three sweeps of [`SWEEP`].
const SWEEP: Duration = Duration::from_secs(30);
const IDLE_SWEEPS: u64 = 3;
/// Idle connections kept per upstream; more are closed when they come back.
const MAX_IDLE_PER_UPSTREAM: usize = 1024;

type Io = MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>;

/// One upstream connection: the request half and the connection state,
/// which the current user polls.
pub(super) struct Conn {
    tx: http1::SendRequest<Body>,
    conn: http1::Connection<Io, Body>,
    /// The pool's sweep count when the connection went idle.
    idle_since: u64,
    /// The connection future has completed and must not be polled again.
    done: bool,
}

impl Conn {
    /// Boxed once for its lifetime: it moves between pool, request and
    /// body, and its buffers are large.
    pub(super) fn new(
        tx: http1::SendRequest<Body>,
        conn: http1::Connection<Io, Body>,
    ) -> Box<Self> {
        Box::new(Conn {
            tx,
            conn,
            idle_since: 0,
            done: false,
        })
    }

    /// Sends one request, driving the connection until the response head
    /// is in.
    pub(super) async fn request(
        &mut self,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<Body>>> {
        let mut answer = std::pin::pin!(self.tx.try_send_request(req));
        std::future::poll_fn(|cx| {
            // Writes the request and reads the answer; when the connection
            // ends first, the answer carries the reason.
            self.drive(cx);
            answer.as_mut().poll(cx)
        })
        .await
    }

    /// Polls the connection; false once it has ended (closed or failed).
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.done && Pin::new(&mut self.conn).poll(cx).is_ready() {
            self.done = true;
        }
        !self.done
    }

    /// Lets the connection finish the exchange; true when it is idle and
    /// can take another request.
    pub(super) fn settle(&mut self) -> bool {
        self.drive(&mut Context::from_waker(Waker::noop())) && self.tx.is_ready()
    }
}

/// Idle connections by upstream (`Target::key`), newest last. Boxed: a
/// connection moves between pool, request and body; a box moves as a
/// pointer.
#[derive(Default)]
pub(super) struct Pool {
    #[allow(clippy::vec_box)]
    idle: Mutex<HashMap<Arc<str>, Vec<Box<Conn>>>>,
    sweeps: AtomicU64,
}

impl Pool {
    /// A usable idle connection, if any.
    pub(super) fn checkout(&self, key: &str) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().expect("pool lock");
        let conns = idle.get_mut(key)?;
        while let Some(mut conn) = conns.pop() {
            if conn.settle() {
                return Some(conn);
            }
        }
        None
    }

    pub(super) fn checkin(&self, key: &Arc<str>, mut conn: Box<Conn>) {
        conn.idle_since = self.sweeps.load(Ordering::Relaxed);
        let mut idle = self.idle.lock().expect("pool lock");
        let conns = match idle.get_mut(&**key) {
            Some(conns) => conns,
            None => idle.entry(key.clone()).or_default(),
        };
        if conns.len() < MAX_IDLE_PER_UPSTREAM {
            conns.push(conn);
        }
    }
}

/// Closes connections idle too long or closed by the upstream, until the
/// client is gone.
pub(super) async fn sweep(pool: Weak<Pool>) {
    let mut tick = tokio::time::interval(SWEEP);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else { return };
        let now = pool.sweeps.fetch_add(1, Ordering::Relaxed) + 1;
        let mut idle = pool.idle.lock().expect("pool lock");
        for conns in idle.values_mut() {
            conns.retain_mut(|c| now - c.idle_since < IDLE_SWEEPS && c.settle());
        }
    }
}

/// An upstream response body. It drives its connection and hands the
/// connection back to the pool when the body ends.
pub(super) struct UpstreamBody {
    pub(super) body: Incoming,
    pub(super) conn: Option<Box<Conn>>,
    pub(super) pool: Arc<Pool>,
    pub(super) key: Arc<str>,
}

impl http_body::Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(c) = this.conn.as_mut()
            && !c.drive(cx)
        {
            // Closed or broken: what it read is in `body`, or its error is.
            this.conn = None;
        }
        let frame = std::task::ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            Some(Ok(_)) if !this.body.is_end_stream() => {}
            Some(Err(_)) => this.conn = None,
            _ => {
                if let Some(mut conn) = this.conn.take()
                    && conn.settle()
                {
                    this.pool.checkin(&this.key, conn);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
