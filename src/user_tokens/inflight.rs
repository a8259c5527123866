//! In-process single flight: one refresh task per `(app, user)`; every lookup
//! that needs it waits on that task's published result instead of starting
//! its own. The task owns the refresh — a waiter that goes away (a bot that
//! gave up, a request timeout) changes nothing for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use super::Outcome;
use crate::domain::{AppId, UserId};

type Key = (AppId, UserId);
type Slot = watch::Receiver<Option<Outcome>>;

/// The refreshes running in this process.
#[derive(Debug, Default, Clone)]
pub(super) struct InFlight {
    map: Arc<Mutex<HashMap<Key, Slot>>>,
}

impl InFlight {
    /// Joins the refresh of `key`, or registers a new one: then the returned
    /// [`Publisher`] is the new task's to hand its result out with.
    pub(super) fn join(&self, key: Key) -> (Slot, Option<Publisher>) {
        let mut map = self.map.lock().expect("in-flight map poisoned");
        if let Some(slot) = map.get(&key) {
            return (slot.clone(), None);
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx.clone());
        let publisher = Publisher {
            key: Some(key),
            tx,
            map: self.map.clone(),
        };
        (rx, Some(publisher))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().unwrap().len()
    }
}

/// The sending half of one refresh: an interim answer for those waiting now
/// (and for those joining while the task goes on), then the final one.
#[derive(Debug)]
pub(super) struct Publisher {
    key: Option<Key>,
    tx: watch::Sender<Option<Outcome>>,
    map: Arc<Mutex<HashMap<Key, Slot>>>,
}

impl Publisher {
    /// Answers everyone waiting now, while the task keeps running.
    pub(super) fn interim(&self, outcome: Outcome) {
        self.tx.send_replace(Some(outcome));
    }

    /// The result: the refresh is no longer in flight, so a later lookup reads
    /// the database again.
    pub(super) fn finish(mut self, outcome: Outcome) {
        self.forget();
        self.tx.send_replace(Some(outcome));
    }

    fn forget(&mut self) {
        if let Some(key) = self.key.take() {
            self.map
                .lock()
                .expect("in-flight map poisoned")
                .remove(&key);
        }
    }
}

impl Drop for Publisher {
    /// A task that ended without an answer (it panicked) must not leave its
    /// user stuck: the slot goes, and waiters see the channel close.
    fn drop(&mut self) {
        self.forget();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::user_tokens::LookupError;

    fn key() -> Key {
        (
            AppId::parse("support").unwrap(),
            UserId::parse("idp:alice").unwrap(),
        )
    }

    #[tokio::test]
    async fn the_second_caller_joins_the_first_callers_task() {
        let flights = InFlight::default();
        let (mut first, publisher) = flights.join(key());
        let (mut second, none) = flights.join(key());
        assert!(publisher.is_some() && none.is_none());
        publisher
            .unwrap()
            .finish(Err(LookupError::Unavailable("x".into())));
        for rx in [&mut first, &mut second] {
            let v = rx.wait_for(Option::is_some).await.unwrap().clone();
            assert!(matches!(v, Some(Err(LookupError::Unavailable(_)))));
        }
        assert_eq!(flights.len(), 0, "a finished refresh is forgotten");
        let (_, again) = flights.join(key());
        assert!(again.is_some(), "the next lookup starts a new refresh");
    }

    #[tokio::test]
    async fn an_interim_answer_reaches_waiters_and_the_flight_goes_on() {
        let flights = InFlight::default();
        let (mut rx, publisher) = flights.join(key());
        let publisher = publisher.unwrap();
        publisher.interim(Err(LookupError::Unavailable("storing".into())));
        assert!(rx.wait_for(Option::is_some).await.is_ok());
        let (late, none) = flights.join(key());
        assert!(none.is_none(), "still in flight");
        assert!(
            late.borrow().is_some(),
            "a late joiner sees the interim answer"
        );
        drop(publisher);
        assert_eq!(flights.len(), 0, "a task that dies takes its slot along");
    }
}
