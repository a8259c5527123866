//! The audit writer for high-volume events (bot token reads): events are queued
//! and written in batches, one transaction per batch, so a busy bot API does not
//! pay a database write per request. A batch holds what arrives within 20 ms
//! of its first event (or 500 events, or until a flush). Identical events of one batch — the same second, actor, app, user,
//! action, outcome and detail — are one row with their `count` (a bot reading
//! one user's token 500 times in a few milliseconds is one row that says 500):
//! every read is counted, fewer rows are written. The queue is flushed on shutdown; a crash can lose the events of
//! the batch being written. Rare, security-relevant events (sign-in, sign-out,
//! refresh, credential changes) are written directly with `Store::record_audit`.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::domain::{AppId, AuditAction, AuditOutcome, UserId};
use crate::store::{AuditEvent, Store};

const QUEUE: usize = 10_000;
const MAX_BATCH: usize = 500;
/// How long a batch waits for more events after its first.
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// An audit event that owns its text, for the queue.
#[derive(Debug, Clone)]
pub struct QueuedEvent {
    pub at: i64,
    pub actor: String,
    pub app: Option<AppId>,
    pub user_id: Option<UserId>,
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    pub detail: Option<&'static str>,
}

enum Msg {
    Event(QueuedEvent),
    Flush(oneshot::Sender<()>),
}

#[derive(Debug, Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Msg>,
}

impl AuditLog {
    /// Starts the writer task.
    pub fn start(store: Store) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_batches(store, rx));
        (Self { tx }, task)
    }

    /// Queues an event; waits only when the queue is full (backpressure).
    pub async fn record(&self, event: QueuedEvent) {
        if self.tx.send(Msg::Event(event)).await.is_err() {
            tracing::warn!("the audit writer has stopped; an event was not recorded");
        }
    }

    /// Returns once every event queued before the call is in the database.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The events of a batch, identical ones once with their number, in the
/// order each was first seen.
fn aggregate(events: &[QueuedEvent]) -> Vec<(&QueuedEvent, i64)> {
    let mut rows: Vec<(&QueuedEvent, i64)> = Vec::new();
    let mut index: std::collections::HashMap<Key<'_>, usize> = std::collections::HashMap::new();
    for event in events {
        let key = Key::of(event);
        match index.get(&key) {
            Some(&i) => rows[i].1 += 1,
            None => {
                index.insert(key, rows.len());
                rows.push((event, 1));
            }
        }
    }
    rows
}

/// What makes two events the same row.
#[derive(PartialEq, Eq, Hash)]
struct Key<'a> {
    at: i64,
    actor: &'a str,
    app: Option<&'a str>,
    user_id: Option<&'a str>,
    action: &'static str,
    outcome: &'static str,
    detail: Option<&'static str>,
}

impl<'a> Key<'a> {
    fn of(e: &'a QueuedEvent) -> Self {
        Self {
            at: e.at,
            actor: &e.actor,
            app: e.app.as_ref().map(AppId::as_str),
            user_id: e.user_id.as_ref().map(UserId::as_str),
            action: e.action.as_str(),
            outcome: e.outcome.as_str(),
            detail: e.detail,
        }
    }
}

async fn write_batches(store: Store, mut rx: mpsc::Receiver<Msg>) {
    while let Some(first) = rx.recv().await {
        let mut events = Vec::new();
        let mut acks = Vec::new();
        // A batch collects for up to LINGER after its first event (less when
        // full, flushed or shut down): under load that is what makes
        // identical reads one row, and one write serve hundreds of reads.
        let deadline = tokio::time::Instant::now() + LINGER;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => events.push(e),
                Msg::Flush(ack) => acks.push(ack),
            }
            if events.len() >= MAX_BATCH {
                break;
            }
            next = match rx.try_recv() {
                Ok(msg) => Some(msg),
                Err(mpsc::error::TryRecvError::Disconnected) => None,
                // A flush is waiting: write what there is.
                Err(mpsc::error::TryRecvError::Empty) if !acks.is_empty() => None,
                Err(mpsc::error::TryRecvError::Empty) => {
                    tokio::time::timeout_at(deadline, rx.recv())
                        .await
                        .ok()
                        .flatten()
                }
            };
        }
        if !events.is_empty() {
            let rows: Vec<(AuditEvent<'_>, i64, i64)> = aggregate(&events)
                .into_iter()
                .map(|(e, count)| {
                    (
                        AuditEvent {
                            actor: &e.actor,
                            app: e.app.as_ref(),
                            user_id: e.user_id.as_ref(),
                            action: e.action,
                            outcome: e.outcome,
                            detail: e.detail,
                        },
                        e.at,
                        count,
                    )
                })
                .collect();
            if let Err(e) = store.record_audit_batch(&rows).await {
                tracing::error!(error = %e, events = events.len(), "cannot write audit events");
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(at: i64, actor: &str, user: &str, outcome: AuditOutcome) -> QueuedEvent {
        QueuedEvent {
            at,
            actor: actor.into(),
            app: Some(AppId::parse("support").unwrap()),
            user_id: Some(UserId::parse(user).unwrap()),
            action: AuditAction::TokenRead,
            outcome,
            detail: None,
        }
    }

    #[test]
    fn identical_reads_of_a_batch_are_one_row_with_their_number() {
        use AuditOutcome::{NotFound, Ok};
        let events = [
            read(10, "bot:a", "idp:u1", Ok),
            read(10, "bot:a", "idp:u1", Ok),
            read(10, "bot:a", "idp:u2", Ok),       // another user
            read(10, "bot:b", "idp:u1", Ok),       // another bot
            read(10, "bot:a", "idp:u1", NotFound), // another outcome
            read(11, "bot:a", "idp:u1", Ok),       // another second
            read(10, "bot:a", "idp:u1", Ok),
        ];
        let rows: Vec<_> = aggregate(&events)
            .into_iter()
            .map(|(e, n)| {
                (
                    e.at,
                    e.actor.as_str(),
                    e.user_id.as_ref().unwrap().as_str(),
                    e.outcome,
                    n,
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (10, "bot:a", "idp:u1", Ok, 3),
                (10, "bot:a", "idp:u2", Ok, 1),
                (10, "bot:b", "idp:u1", Ok, 1),
                (10, "bot:a", "idp:u1", NotFound, 1),
                (11, "bot:a", "idp:u1", Ok, 1),
            ]
        );
        // Every event is counted.
        assert_eq!(aggregate(&events).iter().map(|(_, n)| n).sum::<i64>(), 7);
    }
}
