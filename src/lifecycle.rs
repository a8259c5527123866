//! Where the process is in its life — serving, or draining before it stops —
//! and how many requests are in flight. A drain is what load balancers
//! expect of a server that is going away: `/readyz` fails first, everything
//! else keeps serving while they notice (each HTTP/1 response saying
//! `Connection: close`, so no pooled connection is reused), and only then does
//! the listener close (see `server.rs`).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Shared by the server (which starts the drain) and the handlers (which see it).
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
    in_flight: AtomicUsize,
    served_while_draining: AtomicUsize,
}

impl Lifecycle {
    /// From now on `/readyz` answers 503 and responses close their connection.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Requests being served now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Requests answered since the drain began.
    pub fn served_while_draining(&self) -> usize {
        self.served_while_draining.load(Ordering::SeqCst)
    }

    /// Counts a request until the returned guard is dropped.
    pub fn request(&self) -> RequestGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        RequestGuard(self)
    }
}

/// One request in flight (see [`Lifecycle::request`]).
#[derive(Debug)]
pub struct RequestGuard<'a>(&'a Lifecycle);

impl Drop for RequestGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.0.is_draining() {
            self.0.served_while_draining.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Lifecycle;

    #[test]
    fn requests_are_counted_until_they_end() {
        let life = Lifecycle::default();
        let a = life.request();
        let b = life.request();
        assert_eq!(life.in_flight(), 2);
        drop(a);
        life.start_draining();
        assert!(life.is_draining());
        drop(b);
        assert_eq!(life.in_flight(), 0);
        assert_eq!(life.served_while_draining(), 1);
    }
}
