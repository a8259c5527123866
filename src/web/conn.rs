//! Connection limits, below HTTP: slow or idle clients cannot hold
//! connections, and there is a cap on how many are open.
//!
//! - **Header read timeout**: once the first byte of a request (or of the TLS
//!   handshake) arrives, the whole request head must follow within
//!   `header_read_timeout` — a client trickling half-sent headers is cut off.
//!   A new connection that sends no byte at all gets the same time, not
//!   `idle_timeout`: opening sockets and sending nothing holds no slot long.
//! - **Idle timeout**: a connection with no request in flight and nothing
//!   arriving is closed after `idle_timeout` (keep-alive connections too),
//!   once it has served a request. A request being served is never cut by it
//!   (`request_timeout` bounds that).
//! - **Maximum connections**: beyond `max_connections` open connections a new
//!   one is closed at once; so is one beyond `max_connections_per_address`
//!   from one client address (IPv6: one /64), so no single address takes the
//!   server's slots. `trusted_proxies` carry many clients and are not capped
//!   per address.
//!
//! [`LimitAcceptor`] wraps axum-server's acceptor (plain or TLS): each
//! connection's stream is a [`Guarded`] that times the reads, and its service
//! a [`Tracked`] that tells the stream when requests start and end.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;
use crate::rate_limits::ClientKey;

/// The limits, from the configuration.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Peers not capped per address (`trusted_proxies`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

/// A stream that knows its peer's address (the TCP connection).
pub trait PeerAddress {
    fn peer_ip(&self) -> Option<IpAddr>;
}

impl PeerAddress for tokio::net::TcpStream {
    fn peer_ip(&self) -> Option<IpAddr> {
        self.peer_addr().ok().map(|a| a.ip())
    }
}

/// Open connections per client address.
#[derive(Debug, Default)]
struct PerAddress {
    open: Mutex<HashMap<ClientKey, usize>>,
}

impl PerAddress {
    /// Takes one of `key`'s places, unless it holds `max` already.
    fn take(self: &Arc<Self>, key: ClientKey, max: usize) -> Option<AddressSlot> {
        let mut open = self.open.lock().expect("connection table poisoned");
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

/// One connection's place in its address's count; given back on drop.
#[derive(Debug)]
struct AddressSlot {
    table: Arc<PerAddress>,
    key: ClientKey,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().expect("connection table poisoned");
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// Applies [`ConnLimits`] to every connection, then hands it to `inner`.
#[derive(Debug, Clone)]
pub struct LimitAcceptor<A> {
    inner: A,
    limits: Arc<ConnLimits>,
    permits: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
    metrics: Arc<Metrics>,
}

impl<A> LimitAcceptor<A> {
    pub fn new(inner: A, limits: ConnLimits, metrics: Arc<Metrics>) -> Self {
        Self {
            inner,
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            limits: Arc::new(limits),
            per_address: Arc::default(),
            metrics,
        }
    }

    /// The connection's place under `max_connections_per_address`: `None`
    /// when its address holds them all; `Some(None)` for a trusted proxy or
    /// an unknown peer.
    fn address_slot(&self, peer: Option<IpAddr>) -> Option<Option<AddressSlot>> {
        let Some(ip) = peer else {
            return Some(None);
        };
        if self.limits.trusted_proxies.iter().any(|n| n.contains(&ip)) {
            return Some(None);
        }
        self.per_address
            .take(ClientKey::from(ip), self.limits.max_connections_per_address)
            .map(Some)
    }
}

impl<A, I, S> Accept<I, S> for LimitAcceptor<A>
where
    A: Accept<Guarded<I>, Tracked<S>>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
    I: AsyncRead + AsyncWrite + Unpin + PeerAddress,
{
    type Stream = A::Stream;
    type Service = A::Service;
    type Future = Pin<Box<dyn Future<Output = io::Result<(A::Stream, A::Service)>> + Send>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let refuse = |stream: I, why: &'static str| -> Self::Future {
            // Dropping the stream closes the connection at once.
            self.metrics.connection_refused();
            drop(stream);
            Box::pin(std::future::ready(Err(io::Error::other(why))))
        };
        let Some(address_slot) = self.address_slot(stream.peer_ip()) else {
            return refuse(stream, "max_connections_per_address reached");
        };
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return refuse(stream, "max_connections reached");
        };
        let activity = Arc::new(Activity::new());
        let guarded = Guarded {
            inner: stream,
            activity: activity.clone(),
            limits: self.limits.clone(),
            timer: None,
            _open: OpenConnection {
                _permit: permit,
                _address: address_slot,
                _gauge: self.metrics.connection_opened(),
            },
            metrics: self.metrics.clone(),
        };
        let tracked = Tracked {
            inner: service,
            activity,
        };
        Box::pin(self.inner.accept(guarded, tracked))
    }
}

/// Holds the connection's place under `max_connections`, under its
/// address's cap, and in the gauge.
#[derive(Debug)]
struct OpenConnection {
    _permit: OwnedSemaphorePermit,
    _address: Option<AddressSlot>,
    _gauge: crate::metrics::GaugeGuard,
}

/// What the stream needs to know of the requests on its connection.
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    times: Mutex<Times>,
}

#[derive(Debug, Clone, Copy)]
struct Times {
    /// Since when nothing has been in flight (or the connection is open).
    idle_since: Instant,
    /// When the first byte of the next request arrived, while idle.
    head_started: Option<Instant>,
    /// Whether a request has been served on the connection (before the
    /// first, silence is cut after `header_read_timeout`, not `idle_timeout`).
    served: bool,
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            times: Mutex::new(Times {
                idle_since: Instant::now(),
                head_started: None,
                served: false,
            }),
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().expect("connection activity poisoned")
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let mut t = self.times();
        t.head_started = None;
        t.served = true;
    }

    fn request_ended(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            let mut t = self.times();
            t.idle_since = Instant::now();
            t.head_started = None;
        }
    }

    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0
    }
}

/// Why a connection was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    HeaderRead,
    Idle,
}

/// A connection's stream, timed.
pub struct Guarded<I> {
    inner: I,
    activity: Arc<Activity>,
    limits: Arc<ConnLimits>,
    timer: Option<(Instant, Pin<Box<Sleep>>)>,
    _open: OpenConnection,
    metrics: Arc<Metrics>,
}

impl<I> std::fmt::Debug for Guarded<I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded").finish_non_exhaustive()
    }
}

impl<I> Guarded<I> {
    /// The deadline that applies now, if any.
    fn deadline(&self) -> Option<(Instant, Expired)> {
        if self.activity.busy() {
            return None;
        }
        let t = *self.activity.times();
        Some(match t.head_started {
            Some(started) => (
                started + self.limits.header_read_timeout,
                Expired::HeaderRead,
            ),
            // Nothing sent since the connection opened.
            None if !t.served => (
                t.idle_since + self.limits.header_read_timeout,
                Expired::HeaderRead,
            ),
            None => (t.idle_since + self.limits.idle_timeout, Expired::Idle),
        })
    }

    /// Polls the timer of the current deadline; `Ready` when it has passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<Expired> {
        let Some((at, why)) = self.deadline() else {
            self.timer = None;
            return Poll::Pending;
        };
        match &mut self.timer {
            Some((armed, sleep)) if *armed == at => {
                ready!(sleep.as_mut().poll(cx));
            }
            _ => {
                let mut sleep = Box::pin(tokio::time::sleep_until(at));
                let fired = sleep.as_mut().poll(cx).is_ready();
                self.timer = Some((at, sleep));
                if !fired {
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(why)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Guarded<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before && !self.activity.busy() {
                    let mut t = self.activity.times();
                    t.head_started.get_or_insert_with(Instant::now);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.poll_deadline(cx) {
                Poll::Ready(why) => {
                    let reason = match why {
                        Expired::HeaderRead => "header_read",
                        Expired::Idle => "idle",
                    };
                    self.metrics.connection_timed_out(reason);
                    Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, reason)))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Guarded<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) && !self.activity.busy() {
            // A response still going out counts as activity.
            self.activity.times().idle_since = Instant::now();
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(written, Poll::Ready(Ok(n)) if n > 0) && !self.activity.busy() {
            self.activity.times().idle_since = Instant::now();
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A connection's service: counts its requests in flight.
#[derive(Debug, Clone)]
pub struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

/// Ends a request's count when its response future completes or is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

impl<S, R> tower::Service<R> for Tracked<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.activity.request_started();
        let guard = InFlight(self.activity.clone());
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await;
            drop(guard);
            response
        })
    }
}
