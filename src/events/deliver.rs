//! Delivering the outbox: every replica runs a [`Deliverer`]; each claims due
//! events (a lease on the row, so one replica sends each attempt), POSTs them
//! signed, and records the result — delivered on a 2xx, else retried with
//! exponential backoff (5 s doubling to 1 h) until 24 hours after the event,
//! then dead (`chatgate events redeliver ID` queues it again).
//!
//! Each claimed event is sent at once, in a task of its own, and no more are
//! claimed than can be sent at once ([`IN_FLIGHT`]): an attempt ends within
//! [`SEND_TIMEOUT`], long inside its [`CLAIM`], so no other replica sends it
//! meanwhile; and a receiver that does not answer holds only its own events,
//! while every other app's are sent beside them.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::{Events, sign};
use crate::metrics::Metrics;
use crate::store::{EventSettlement, Store, StoredEvent};

/// How often the outbox is looked at when nothing wakes the deliverer.
const POLL: Duration = Duration::from_secs(1);
/// Events claimed at a time (at most the free places of [`IN_FLIGHT`]).
const BATCH: u32 = 20;
/// Deliveries under way at once, per replica.
pub const IN_FLIGHT: usize = 64;
/// How long a claim lasts (a replica that dies while sending lets go): far
/// longer than one attempt can take.
const CLAIM: i64 = 60;
/// Delivery attempts are retried this long after the event.
pub const RETRY_FOR: i64 = 24 * 3600;
const FIRST_BACKOFF: i64 = 5;
const MAX_BACKOFF: i64 = 3600;
/// Longest time one delivery may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends this replica's share of the outbox.
#[derive(Debug, Clone)]
pub struct Deliverer {
    store: Store,
    events: Events,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
    owner: String,
    wake: Arc<Notify>,
    /// Places for deliveries under way.
    slots: Arc<Semaphore>,
}

impl Deliverer {
    pub fn new(store: Store, events: Events, http: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            events,
            http,
            metrics,
            owner: format!("deliverer-{}", crate::secret::random_token::<9>()),
            wake: Arc::new(Notify::new()),
            slots: Arc::new(Semaphore::new(IN_FLIGHT)),
        }
    }

    /// Makes the deliverer look at the outbox now (an event was just written).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers until the task is aborted.
    pub async fn run(self) {
        loop {
            let sent = match self.deliver_due(crate::time::now()).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the event outbox; will retry");
                    0
                }
            };
            if let Ok(pending) = self.store.pending_events().await {
                self.metrics.events_pending(pending);
            }
            if sent < BATCH as usize {
                let _ = tokio::time::timeout(POLL, self.wake.notified()).await;
            }
        }
    }

    /// One round: claims as many due events as there are free places and
    /// starts sending each (without waiting for the answers). Returns how many.
    pub async fn deliver_due(&self, now: i64) -> Result<usize, crate::store::StoreError> {
        let free = self.slots.available_permits().min(BATCH as usize);
        if free == 0 {
            return Ok(0);
        }
        let due = self
            .store
            .claim_due_events(&self.owner, now, now + CLAIM, free as u32)
            .await?;
        let n = due.len();
        for event in due {
            // Only this loop takes places, and it claimed no more than were free.
            let Ok(place) = self.slots.clone().try_acquire_owned() else {
                break;
            };
            let this = self.clone();
            tokio::spawn(async move {
                this.deliver(&event).await;
                drop(place);
                // A place is free again: look for more.
                this.wake();
            });
        }
        Ok(n)
    }

    /// One attempt at a claimed event, and its result recorded.
    async fn deliver(&self, event: &StoredEvent) {
        let settlement = self.send(event).await;
        let outcome = match &settlement {
            Settled::Delivered => "delivered",
            Settled::Retry(_) => "failed",
            Settled::Dead(_) => "dead",
        };
        self.metrics.event(outcome);
        let at = crate::time::now();
        let result = match &settlement {
            Settled::Delivered => EventSettlement::Delivered { at },
            Settled::Retry(error) => EventSettlement::Retry {
                at: at + backoff(event.attempts),
                error,
            },
            Settled::Dead(error) => EventSettlement::Dead { at, error },
        };
        if let Err(e) = self
            .store
            .settle_event(&event.id, &self.owner, result)
            .await
        {
            // The claim lapses; the event is sent again (at least once).
            tracing::warn!(event = %event.id, error = %e, "cannot record an event delivery");
        }
    }

    async fn send(&self, event: &StoredEvent) -> Settled {
        let Some(target) = self.events.target(&event.app) else {
            return Settled::Dead("the app has no events_url any more".into());
        };
        let timestamp = crate::time::now();
        let signature = sign(&target.secret, &event.id, timestamp, &event.payload);
        let sent = self
            .http
            .post(target.url.clone())
            .timeout(SEND_TIMEOUT)
            .header("content-type", "application/json")
            .header("webhook-id", &event.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(event.payload.clone())
            .send()
            .await;
        let error = match sent {
            Ok(r) if r.status().is_success() => return Settled::Delivered,
            Ok(r) => format!("HTTP {}", r.status().as_u16()),
            Err(e) if e.is_timeout() => "timed out".to_string(),
            Err(e) if e.is_connect() => "connection failed".to_string(),
            Err(_) => "request failed".to_string(),
        };
        tracing::info!(event = %event.id, app = %event.app, attempt = event.attempts + 1, error = %error, "event delivery failed; will retry");
        let next = timestamp + backoff(event.attempts);
        if next > event.created_at + RETRY_FOR {
            tracing::warn!(event = %event.id, app = %event.app, "giving up on an event after 24 hours");
            Settled::Dead(error)
        } else {
            Settled::Retry(error)
        }
    }
}

enum Settled {
    Delivered,
    Retry(String),
    Dead(String),
}

/// Seconds until the next attempt after `attempts` failed ones.
fn backoff(attempts: i64) -> i64 {
    let shift = attempts.clamp(0, 20) as u32;
    FIRST_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    #[test]
    fn backoff_doubles_from_5_s_to_an_hour() {
        let steps: Vec<i64> = (0..12).map(super::backoff).collect();
        assert_eq!(&steps[..5], &[5, 10, 20, 40, 80]);
        assert_eq!(steps[11], 3600);
    }
}
