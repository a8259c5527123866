//! Fetches of this process waiting for a silent flow's outcome, by the hash
//! of the ticket they present. Where the callback runs in the same process
//! as the waiting fetch (one replica, or a sticky load balancer), it hands the
//! outcome over in memory: no ticket row is written and then taken, and the
//! fetch answers at once. Anywhere else the outcome is stored as a ticket row
//! and the fetch finds it there (see [`super::tickets`]).
//!
//! A hand-over carries the same checks as the ticket row: only a waiter for
//! the outcome's app and origin gets it, and the binding cookie is checked
//! by the waiter as it is for a stored ticket.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::oneshot;

use crate::domain::{AppId, Origin};

/// Held by the fetch an outcome was handed to until it has answered its page
/// (dropping it says so, whatever the answer).
#[derive(Debug)]
pub struct Answering {
    _sender: oneshot::Sender<()>,
}

/// The callback's side of [`Answering`].
#[derive(Debug)]
pub(super) struct Answered(oneshot::Receiver<()>);

impl Answered {
    /// Until the fetch has answered, or `at_most`.
    pub async fn wait(self, at_most: std::time::Duration) {
        let _ = tokio::time::timeout(at_most, self.0).await;
    }
}

/// An outcome on its way to the fetch waiting for it.
pub(super) struct Handed<T> {
    /// The flow's binding-cookie hash: the waiter must hold that cookie.
    pub binding_hash: Option<String>,
    pub outcome: T,
}

struct Waiting<T> {
    id: u64,
    app: AppId,
    origin: Origin,
    tx: oneshot::Sender<(Handed<T>, Answering)>,
}

/// The waiting fetches of this process.
pub(super) struct Waiters<T> {
    next: AtomicU64,
    waiting: Mutex<HashMap<String, Waiting<T>>>,
}

impl<T> std::fmt::Debug for Waiters<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiters").finish_non_exhaustive()
    }
}

impl<T> Default for Waiters<T> {
    fn default() -> Self {
        Self {
            next: AtomicU64::new(0),
            waiting: Mutex::new(HashMap::new()),
        }
    }
}

/// A fetch's place among the waiters; leaving it (dropping) gives it up.
pub(super) struct Waiter<'a, T> {
    waiters: &'a Waiters<T>,
    hash: String,
    id: u64,
    rx: Option<oneshot::Receiver<(Handed<T>, Answering)>>,
}

impl<T> Waiters<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Waiting<T>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for the outcome of ticket `hash` for `(app, origin)`. A later
    /// wait for the same hash takes the place over (the earlier one then
    /// finds the outcome only in the database).
    pub fn wait(&self, hash: &str, app: &AppId, origin: &Origin) -> Waiter<'_, T> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock().insert(
            hash.to_string(),
            Waiting {
                id,
                app: app.clone(),
                origin: origin.clone(),
                tx,
            },
        );
        Waiter {
            waiters: self,
            hash: hash.to_string(),
            id,
            rx: Some(rx),
        }
    }

    /// Hands `outcome` to the fetch of this process waiting for ticket `hash`
    /// for `(app, origin)`, which says through [`Answered`] when it has
    /// answered; gives the outcome back when there is none (or it just
    /// left), for the database.
    pub fn hand_over(
        &self,
        hash: &str,
        app: &AppId,
        origin: &Origin,
        handed: Handed<T>,
    ) -> Result<Answered, Handed<T>> {
        let waiting = {
            let mut waiting = self.lock();
            match waiting.get(hash) {
                Some(w) if w.app == *app && w.origin == *origin => waiting.remove(hash),
                _ => None,
            }
        };
        let Some(w) = waiting else {
            return Err(handed);
        };
        let (answering, answered) = oneshot::channel();
        w.tx.send((handed, Answering { _sender: answering }))
            .map(|()| Answered(answered))
            .map_err(|(handed, _)| handed)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

impl<T> Waiter<'_, T> {
    /// The outcome, once handed over, and the [`Answering`] to hold until
    /// the fetch has answered; pending forever once it cannot come (another
    /// fetch took the place over), so it can sit in a `select!`.
    pub async fn handed(&mut self) -> (Handed<T>, Answering) {
        if let Some(rx) = self.rx.as_mut()
            && let Ok(handed) = rx.await
        {
            self.rx = None;
            return handed;
        }
        self.rx = None;
        std::future::pending().await
    }
}

impl<T> Drop for Waiter<'_, T> {
    fn drop(&mut self) {
        let mut waiting = self.waiters.lock();
        if waiting.get(&self.hash).is_some_and(|w| w.id == self.id) {
            waiting.remove(&self.hash);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppId {
        AppId::parse("support").unwrap()
    }

    fn origin(o: &str) -> Origin {
        Origin::parse(o).unwrap()
    }

    fn handed(n: u32) -> Handed<u32> {
        Handed {
            binding_hash: Some("b".into()),
            outcome: n,
        }
    }

    #[tokio::test]
    async fn an_outcome_goes_to_the_fetch_waiting_for_it_once() {
        let waiters = Waiters::default();
        let page = origin("https://shop.example");
        let mut waiter = waiters.wait("h", &app(), &page);
        let Ok(answered) = waiters.hand_over("h", &app(), &page, handed(1)) else {
            panic!("the waiter is there");
        };
        let (got, answering) = waiter.handed().await;
        assert_eq!((got.outcome, got.binding_hash.as_deref()), (1, Some("b")));
        // The callback hears when the fetch has answered (dropped its side).
        let answered = tokio::spawn(answered.wait(std::time::Duration::from_secs(30)));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!answered.is_finished(), "the fetch has not answered yet");
        drop(answering);
        tokio::time::timeout(std::time::Duration::from_secs(5), answered)
            .await
            .expect("told at once")
            .unwrap();
        // Taken: a second outcome for the same hash goes to the database.
        assert!(waiters.hand_over("h", &app(), &page, handed(2)).is_err());
        drop(waiter);
        assert_eq!(waiters.len(), 0);
    }

    #[tokio::test]
    async fn only_a_waiter_for_the_same_hash_app_and_origin_gets_it() {
        let waiters = Waiters::default();
        let page = origin("https://shop.example");
        let _waiter = waiters.wait("h", &app(), &page);
        assert!(
            waiters
                .hand_over("other", &app(), &page, handed(1))
                .is_err()
        );
        let elsewhere = origin("https://evil.example");
        assert!(
            waiters
                .hand_over("h", &app(), &elsewhere, handed(1))
                .is_err()
        );
        let other_app = AppId::parse("sales").unwrap();
        assert!(
            waiters
                .hand_over("h", &other_app, &page, handed(1))
                .is_err()
        );
        assert_eq!(waiters.len(), 1, "still waiting for its own");
    }

    #[tokio::test]
    async fn a_fetch_that_left_gets_nothing_and_the_outcome_comes_back() {
        let waiters = Waiters::default();
        let page = origin("https://shop.example");
        drop(waiters.wait("h", &app(), &page));
        assert_eq!(waiters.len(), 0);
        let back = waiters
            .hand_over("h", &app(), &page, handed(7))
            .unwrap_err();
        assert_eq!(back.outcome, 7);
    }

    #[tokio::test]
    async fn a_later_wait_takes_the_place_over() {
        let waiters = Waiters::default();
        let page = origin("https://shop.example");
        let mut first = waiters.wait("h", &app(), &page);
        let mut second = waiters.wait("h", &app(), &page);
        assert!(waiters.hand_over("h", &app(), &page, handed(3)).is_ok());
        assert_eq!(second.handed().await.0.outcome, 3);
        // The first waits on (for the database) rather than getting anything.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), first.handed()).await;
        assert!(pending.is_err());
        // The first leaving does not remove the second's place (already gone
        // here) nor panic.
        drop(first);
        drop(second);
        assert_eq!(waiters.len(), 0);
    }
}
