//! The audit writer for high-volume events (bot token reads). A read is not a
//! database write: it is counted in memory under its key — the second it
//! happened in, actor, app, user, action, outcome and detail — and a writer
//! task writes what was counted 100 ms after the first count (at once on a
//! flush), one multi-row insert, one row per key with its `count`. A bot
//! reading one user's token 500 times in that window is one row that says
//! 500: every read is accounted for, and a busy bot API pays a hash-map
//! increment per request, not a row. The tally is written on shutdown
//! (`flush`); a crash loses what was counted in the last 100 ms. Rare,
//! security-relevant events (sign-in, sign-out, refresh, credential changes)
//! are written directly with `Store::record_audit`.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indexmap::{Equivalent, IndexMap};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::domain::{AppId, AuditAction, AuditOutcome, UserId};
use crate::store::{AuditEvent, Store};

/// How long the writer waits after the first count before it writes.
const LINGER: Duration = Duration::from_millis(100);
/// Distinct keys the tally holds before a new key waits for a write (a
/// database that does not keep up slows the readers down instead of
/// growing the tally without bound).
const MAX_KEYS: usize = 10_000;

/// An audit event that owns its text.
#[derive(Debug, Clone)]
pub struct QueuedEvent {
    pub at: i64,
    pub actor: String,
    pub app: Option<AppId>,
    pub user_id: Option<UserId>,
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    pub detail: Option<String>,
}

/// An event as a request has it (borrowed), to count without allocating:
/// when it happened (Unix seconds) and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventRef<'a> {
    pub at: i64,
    pub event: AuditEvent<'a>,
}

impl QueuedEvent {
    fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            at: self.at,
            event: AuditEvent {
                actor: &self.actor,
                app: self.app.as_ref(),
                user_id: self.user_id.as_ref(),
                action: self.action,
                outcome: self.outcome,
                detail: self.detail.as_deref(),
            },
        }
    }
}

impl EventRef<'_> {
    fn to_owned(self) -> QueuedEvent {
        let e = self.event;
        QueuedEvent {
            at: self.at,
            actor: e.actor.to_string(),
            app: e.app.cloned(),
            user_id: e.user_id.cloned(),
            action: e.action,
            outcome: e.outcome,
            detail: e.detail.map(str::to_string),
        }
    }
}

// The tally's key: an owned event, hashed and compared as its borrowed form.
impl Hash for QueuedEvent {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state);
    }
}

impl PartialEq for QueuedEvent {
    fn eq(&self, other: &Self) -> bool {
        self.as_ref() == other.as_ref()
    }
}

impl Eq for QueuedEvent {}

impl Equivalent<QueuedEvent> for EventRef<'_> {
    fn equivalent(&self, key: &QueuedEvent) -> bool {
        *self == key.as_ref()
    }
}

/// What was counted and not yet written, in the order first seen.
#[derive(Debug, Default)]
struct Tally {
    counts: Mutex<IndexMap<QueuedEvent, i64>>,
    /// Something was counted (wakes the writer).
    counted: Notify,
    /// The tally was taken for writing (wakes readers waiting for room).
    taken: Notify,
}

impl Tally {
    /// Counts `event`; `false` (and nothing counted) when it is a new key
    /// and the tally is full.
    fn count(&self, event: EventRef<'_>) -> bool {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&event) {
            *n += 1;
            return true;
        }
        if counts.len() >= MAX_KEYS {
            return false;
        }
        let first = counts.is_empty();
        counts.insert(event.to_owned(), 1);
        drop(counts);
        if first {
            self.counted.notify_one();
        }
        true
    }

    fn take(&self) -> IndexMap<QueuedEvent, i64> {
        let taken = std::mem::take(&mut *self.counts.lock().unwrap_or_else(|e| e.into_inner()));
        self.taken.notify_waiters();
        taken
    }
}

#[derive(Debug, Clone)]
pub struct AuditLog {
    tally: Arc<Tally>,
    flushes: mpsc::Sender<oneshot::Sender<()>>,
}

impl AuditLog {
    /// Starts the writer task.
    pub fn start(store: Store) -> (Self, JoinHandle<()>) {
        let tally = Arc::new(Tally::default());
        let (flushes, rx) = mpsc::channel(64);
        let task = tokio::spawn(write_batches(store, tally.clone(), rx));
        (Self { tally, flushes }, task)
    }

    /// Counts an event; waits only while the tally is full (backpressure).
    pub async fn record(&self, event: QueuedEvent) {
        self.count(event.as_ref()).await;
    }

    /// Counts an event without copying it unless its key is new.
    pub async fn count(&self, event: EventRef<'_>) {
        loop {
            let room = self.tally.taken.notified();
            if self.tally.count(event) {
                return;
            }
            self.tally.counted.notify_one();
            room.await;
        }
    }

    /// Returns once every event counted before the call is in the database.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.flushes.send(tx).await.is_ok() {
            let _ = rx.await;
        }
    }
}

async fn write_batches(
    store: Store,
    tally: Arc<Tally>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
) {
    let mut open = true;
    while open {
        let mut acks = Vec::new();
        tokio::select! {
            flush = flushes.recv() => match flush {
                Some(ack) => acks.push(ack),
                None => open = false,
            },
            _ = tally.counted.notified() => {
                // Linger so more reads share the write; a flush cuts it short.
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    flush = flushes.recv() => match flush {
                        Some(ack) => acks.push(ack),
                        None => open = false,
                    },
                }
            }
        }
        let counted = tally.take();
        if !counted.is_empty() {
            let rows: Vec<(AuditEvent<'_>, i64, i64)> = counted
                .iter()
                .map(|(e, count)| {
                    let EventRef { at, event } = e.as_ref();
                    (event, at, *count)
                })
                .collect();
            if let Err(e) = store.record_audit_batch(&rows).await {
                tracing::error!(error = %e, rows = rows.len(), "cannot write audit events");
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
    fn identical_reads_are_one_row_with_their_number() {
        use AuditOutcome::{NotFound, Ok};
        let tally = Tally::default();
        let events = [
            read(10, "bot:a", "idp:u1", Ok),
            read(10, "bot:a", "idp:u1", Ok),
            read(10, "bot:a", "idp:u2", Ok),       // another user
            read(10, "bot:b", "idp:u1", Ok),       // another bot
            read(10, "bot:a", "idp:u1", NotFound), // another outcome
            read(11, "bot:a", "idp:u1", Ok),       // another second
            read(10, "bot:a", "idp:u1", Ok),
        ];
        for e in &events {
            assert!(tally.count(e.as_ref()));
        }
        let rows: Vec<_> = tally
            .take()
            .into_iter()
            .map(|(e, n)| (e.at, e.actor, e.user_id.unwrap().to_string(), e.outcome, n))
            .collect();
        let row = |at, actor: &str, user: &str, outcome, n| {
            (at, actor.to_string(), user.to_string(), outcome, n)
        };
        assert_eq!(
            rows,
            [
                row(10, "bot:a", "idp:u1", Ok, 3),
                row(10, "bot:a", "idp:u2", Ok, 1),
                row(10, "bot:b", "idp:u1", Ok, 1),
                row(10, "bot:a", "idp:u1", NotFound, 1),
                row(11, "bot:a", "idp:u1", Ok, 1),
            ]
        );
        assert!(tally.take().is_empty(), "taken once");
    }

    #[test]
    fn a_full_tally_counts_known_keys_and_refuses_new_ones() {
        let tally = Tally::default();
        for i in 0..MAX_KEYS {
            assert!(tally.count(read(i as i64, "bot:a", "idp:u1", AuditOutcome::Ok).as_ref()));
        }
        assert!(tally.count(read(0, "bot:a", "idp:u1", AuditOutcome::Ok).as_ref()));
        assert!(!tally.count(read(-1, "bot:a", "idp:u1", AuditOutcome::Ok).as_ref()));
        let taken = tally.take();
        assert_eq!(taken.len(), MAX_KEYS);
        assert_eq!(taken.values().sum::<i64>(), MAX_KEYS as i64 + 1);
        assert!(tally.count(read(-1, "bot:a", "idp:u1", AuditOutcome::Ok).as_ref()));
    }
}
