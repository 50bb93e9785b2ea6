//! The node's HTTP edge (`docs/design.md` section 10): the accept loop, the cap on open
//! connections, and the timeouts of each connection, in front of the router. hyper is driven
//! directly because `axum::serve` has none of these knobs.
//!
//! - **Connection cap** (`limits.max_connections`): every accepted TCP connection takes a slot
//!   until its socket closes, WebSocket sessions included (the slot travels with the socket
//!   through the upgrade). Beyond the cap a connection is answered at once with a fixed `503`
//!   (`{"error":"overloaded"}`, `Connection: close`) without reading its request, and closed;
//!   nothing is spawned for it. Counted in `impush_http_connections_refused_total`.
//! - **Header read timeout** (`limits.header_read_timeout`): a connection must send a complete
//!   request head within this time of opening, and within this time of the first byte of each
//!   later request. A connection that sends half a head, or nothing, is closed.
//! - **Idle keep-alive timeout** (`limits.keep_alive_timeout`): between requests a connection
//!   may stay silent this long.
//! - **Request body timeout** (`limits.request_body_timeout`): a body must arrive whole within
//!   this time of its head; reading it then fails with [`BodyTimeout`] (the API answers `408`
//!   and the connection is closed). Requests without a body (the WebSocket upgrade, the SSE
//!   stream) are never cut: no timeout runs while a response is being produced or streamed.
//!
//! The timeouts are one deadline per connection, recomputed whenever hyper makes progress on it,
//! so an idle connection costs one timer and no wake-ups.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, LazyLock,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::Body,
    http::{Request, Response},
    Router,
};
use bytes::Bytes;
use hyper::{
    body::{Body as HttpBody, Frame, Incoming, SizeHint},
    server::conn::http1,
};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use impush_core::config::LimitsConfig;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::metrics::{Metrics, TimeoutKind};

/// The `[limits]` keys the edge applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EdgeLimits {
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) keep_alive_timeout: Duration,
    pub(crate) request_body_timeout: Duration,
}

impl EdgeLimits {
    pub(crate) fn new(l: &LimitsConfig) -> Self {
        Self {
            max_connections: l.max_connections,
            header_read_timeout: l.header_read_timeout,
            keep_alive_timeout: l.keep_alive_timeout,
            request_body_timeout: l.request_body_timeout,
        }
    }
}

/// Pause after an accept error that is not about one connection (e.g. out of file
/// descriptors), so the loop does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `stop` is cancelled, then stops accepting, lets every
/// connection finish its current request (hyper's graceful shutdown) and returns when all have
/// closed. Upgraded WebSockets are not waited for: they belong to the sessions by then.
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: EdgeLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) -> io::Result<()> {
    let conns = TaskTracker::new();
    let service = TowerToHyperService::new(router);
    let mut failing = false;
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                Metrics::bump(&metrics.accept_errors);
                if !failing {
                    failing = true;
                    tracing::error!(error = %e, "accepting connections failed; retrying");
                }
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        if failing {
            failing = false;
            tracing::info!("accepting connections again");
        }
        let Some(slot) = Slot::take(&metrics, limits.max_connections) else {
            Metrics::bump(&metrics.http_refused);
            refuse(stream);
            continue;
        };
        conns.spawn(connection(
            stream,
            peer,
            slot,
            service.clone(),
            limits,
            metrics.clone(),
            stop.clone(),
        ));
    }
    drop(listener);
    conns.close();
    conns.wait().await;
    Ok(())
}

/// Errors that concern one incoming connection only: go on accepting at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// The whole answer to a connection over the cap.
static REFUSAL: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let body = r#"{"error":"overloaded","message":"this node has limits.max_connections connections open; retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
});

/// Answers a connection over the cap and closes it, without waiting for anything: one
/// non-blocking write into the empty socket buffer, then whatever request bytes already
/// arrived are read and discarded so that the close is a FIN (which lets the client read the
/// answer) rather than a reset.
fn refuse(stream: TcpStream) {
    use std::io::{Read, Write};
    let Ok(mut s) = stream.into_std() else {
        return;
    };
    let _ = s.write(&REFUSAL);
    let mut buf = [0u8; 4096];
    for _ in 0..4 {
        match s.read(&mut buf) {
            Ok(n) if n > 0 => continue,
            _ => break,
        }
    }
}

/// One of the `limits.max_connections` places; freed when the socket is dropped.
#[derive(Debug)]
pub(crate) struct Slot(Arc<Metrics>);

impl Slot {
    fn take(metrics: &Arc<Metrics>, max: usize) -> Option<Self> {
        // Only the accept loop adds, so a plain check-then-add cannot overshoot.
        if metrics.http_connections.load(Ordering::Acquire) >= max as u64 {
            return None;
        }
        metrics.http_connections.fetch_add(1, Ordering::AcqRel);
        Some(Self(metrics.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.http_connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves one connection: hyper's HTTP/1 state machine plus the edge's deadline.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    service: TowerToHyperService<Router>,
    limits: EdgeLimits,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let state = Arc::new(ConnState::new());
    let io = TokioIo::new(EdgeIo {
        stream,
        state: state.clone(),
        _slot: slot,
    });
    let service = EdgeService {
        inner: service,
        peer,
        state: state.clone(),
        body_timeout: limits.request_body_timeout,
        metrics: metrics.clone(),
    };
    let mut builder = http1::Builder::new();
    // The edge keeps its own deadlines (hyper's header timer would also cut idle keep-alives).
    builder.header_read_timeout(None);
    let conn = builder.serve_connection(io, service).with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
    let mut armed: Option<Instant> = None;
    let mut stopped = std::pin::pin!(stop.cancelled_owned());
    let mut stopping = false;
    let expired = std::future::poll_fn(|cx| loop {
        if conn.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if !stopping && stopped.as_mut().poll(cx).is_ready() {
            stopping = true;
            conn.as_mut().graceful_shutdown();
            continue; // poll the connection again: an idle one closes right away
        }
        // Whatever the connection just did is in `state`: recompute the deadline.
        let Some((at, kind)) = state.deadline(&limits) else {
            return Poll::Pending;
        };
        if armed != Some(at) {
            armed = Some(at);
            timer.as_mut().reset(at);
        }
        return match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(kind)),
            Poll::Pending => Poll::Pending,
        };
    })
    .await;
    if let Some(kind) = expired {
        metrics.timeout(kind);
        tracing::debug!(?kind, "closing an HTTP connection that timed out");
    }
}

/// What a connection is doing, for its deadline. Only the connection's own task touches it
/// (hyper reads, calls the service and drops response bodies while the task polls it), so
/// relaxed atomics suffice; they are atomics only because the service must be `Send + Sync`.
#[derive(Debug)]
struct ConnState {
    opened: Instant,
    /// Requests whose response is not finished (SSE streams, slow handlers, bodies).
    in_flight: AtomicUsize,
    /// A request has completed on this connection: waiting for the next one is idle time.
    served: AtomicBool,
    /// When the last response finished, in ms since `opened`.
    idle_since: AtomicU64,
    /// When the first byte of the next request head arrived, in ms since `opened`, plus one
    /// (0: none yet).
    first_byte: AtomicU64,
}

impl ConnState {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    /// A request head is complete: no deadline until its response is done.
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    fn end(&self) {
        self.idle_since.store(self.now_ms(), Ordering::Relaxed);
        self.first_byte.store(0, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    fn read(&self, n: usize) {
        if n > 0
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.first_byte.load(Ordering::Relaxed) == 0
        {
            self.first_byte.store(self.now_ms() + 1, Ordering::Relaxed);
        }
    }

    fn deadline(&self, l: &EdgeLimits) -> Option<(Instant, TimeoutKind)> {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let first = self.first_byte.load(Ordering::Relaxed);
        if first > 0 {
            return Some((
                self.at(first - 1) + l.header_read_timeout,
                TimeoutKind::Header,
            ));
        }
        if !self.served.load(Ordering::Relaxed) {
            return Some((self.opened + l.header_read_timeout, TimeoutKind::Header));
        }
        let idle = self.idle_since.load(Ordering::Relaxed);
        Some((self.at(idle) + l.keep_alive_timeout, TimeoutKind::Idle))
    }
}

/// Ends a request (the connection becomes idle) when dropped with its response body.
#[derive(Debug)]
struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// Takes the socket of an upgraded request back from hyper: the TCP stream, the bytes hyper
/// read past the request, and the connection's slot, which the WebSocket session holds as long
/// as the socket lives. `None` for an upgrade of a connection the edge did not accept.
pub(crate) fn take_socket(upgraded: hyper::upgrade::Upgraded) -> Option<(TcpStream, Bytes, Slot)> {
    let parts = upgraded.downcast::<TokioIo<EdgeIo>>().ok()?;
    let EdgeIo { stream, _slot, .. } = parts.io.into_inner();
    Some((stream, parts.read_buf, _slot))
}

/// The socket as hyper (and after an upgrade, the WebSocket session) sees it: notes when request
/// bytes arrive, and holds the connection's slot until the socket is dropped.
#[derive(Debug)]
struct EdgeIo {
    stream: TcpStream,
    state: Arc<ConnState>,
    _slot: Slot,
}

impl AsyncRead for EdgeIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.state.read(buf.filled().len() - before);
        }
        r
    }
}

impl AsyncWrite for EdgeIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router as one connection's hyper service: marks requests busy until their response body
/// is done, and puts the body deadline on request bodies.
#[derive(Debug)]
struct EdgeService {
    inner: TowerToHyperService<Router>,
    /// The client's address, for handlers that limit per address (`ConnectInfo`).
    peer: SocketAddr,
    state: Arc<ConnState>,
    body_timeout: Duration,
    metrics: Arc<Metrics>,
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<EdgeBody>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for EdgeService {
    type Response = Response<EdgeBody>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = self.state.begin();
        let mut req = req.map(|body| TimedBody::new(body, self.body_timeout, &self.metrics));
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(self.peer));
        let response = hyper::service::Service::call(&self.inner, req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| EdgeBody {
                inner,
                _guard: guard,
            }))
        })
    }
}

/// A response body that ends its request when it is dropped (written out, or the connection
/// closed).
#[derive(Debug)]
struct EdgeBody {
    inner: Body,
    _guard: RequestGuard,
}

impl HttpBody for EdgeBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Reading a request body took longer than `limits.request_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within limits.request_body_timeout")]
pub(crate) struct BodyTimeout;

/// A request body with a deadline for all of it. Requests without a body get no timer.
struct TimedBody {
    inner: Incoming,
    deadline: Option<Pin<Box<Sleep>>>,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for TimedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimedBody").finish_non_exhaustive()
    }
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration, metrics: &Arc<Metrics>) -> Self {
        let (deadline, metrics) = if inner.is_end_stream() {
            (None, None)
        } else {
            (
                Some(Box::pin(tokio::time::sleep(timeout))),
                Some(metrics.clone()),
            )
        };
        Self {
            inner,
            deadline,
            metrics,
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if frame.is_none() {
                self.deadline = None;
            }
            return Poll::Ready(frame.map(|f| f.map_err(BoxError::from)));
        }
        if let Some(deadline) = self.deadline.as_mut() {
            if deadline.as_mut().poll(cx).is_ready() {
                self.deadline = None;
                if let Some(m) = self.metrics.take() {
                    m.timeout(TimeoutKind::Body);
                }
                return Poll::Ready(Some(Err(Box::new(BodyTimeout))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `err` (an extractor's rejection, say) was caused by [`BodyTimeout`].
pub(crate) fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(err);
    while let Some(e) = cur {
        if e.is::<BodyTimeout>() {
            return true;
        }
        cur = e.source();
    }
    false
}
