//! The audit writer for high-volume events (bot token reads): events are queued
//! and written in batches, one transaction per batch, so a busy bot API does not
//! pay a database write per request. Under load a batch holds whatever arrived
//! while the previous one was being written; when idle, each event is written
//! at once. The queue is flushed on shutdown; a crash can lose the events of
//! the batch being written. Rare, security-relevant events (sign-in, sign-out,
//! refresh, credential changes) are written directly with `Store::record_audit`.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::domain::{AppId, AuditAction, AuditOutcome, UserId};
use crate::store::{AuditEvent, Store};

const QUEUE: usize = 10_000;
const MAX_BATCH: usize = 500;

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

async fn write_batches(store: Store, mut rx: mpsc::Receiver<Msg>) {
    while let Some(first) = rx.recv().await {
        let mut events = Vec::new();
        let mut acks = Vec::new();
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                Msg::Event(e) => events.push(e),
                Msg::Flush(ack) => acks.push(ack),
            }
            if events.len() < MAX_BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !events.is_empty() {
            let borrowed: Vec<(AuditEvent<'_>, i64)> = events
                .iter()
                .map(|e| {
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
                    )
                })
                .collect();
            if let Err(e) = store.record_audit_batch(&borrowed).await {
                tracing::error!(error = %e, events = events.len(), "cannot write audit events");
            }
        }
        for ack in acks {
            let _ = ack.send(());
        }
    }
}
