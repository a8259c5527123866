//! Deleting what has expired, in bounded batches: pending flows, session
//! tickets, used token ids, browser sessions, DPoP key bindings, and audit
//! events older than
//! `audit_retention`. A batch is one short statement, so a sweep never holds
//! SQLite's write lock (or a PostgreSQL lock) for long, however much an
//! anonymous client made chatgate store.

use super::{Result, Store, with_pool};

/// Delivered and dead events stay this long (`chatgate events list`,
/// `chatgate events redeliver`).
pub const EVENTS_KEPT_FOR: i64 = 7 * 24 * 3600;

/// A table that only grows unless it is swept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    PendingFlows,
    SessionTickets,
    /// Host-token `jti`s and exchanged ID tokens.
    ReplayCache,
    BrowserSessions,
    /// IdP sign-outs whose user never came back from the IdP.
    IdpSignouts,
    /// Events delivered or given up on, a week later.
    EventOutbox,
    /// Rows older than the cutoff, not expired ones.
    AuditEvents,
    /// DPoP key bindings past their idle expiry.
    KeyBindings,
}

impl Table {
    pub const ALL: [Table; 8] = [
        Table::PendingFlows,
        Table::SessionTickets,
        Table::ReplayCache,
        Table::BrowserSessions,
        Table::IdpSignouts,
        Table::EventOutbox,
        Table::AuditEvents,
        Table::KeyBindings,
    ];

    /// Deletes up to `$2` rows whose time is at or before `$1`.
    pub fn sql(self) -> &'static str {
        match self {
            Self::PendingFlows => {
                "DELETE FROM pending_flows WHERE state_hash IN \
                 (SELECT state_hash FROM pending_flows WHERE expires_at <= $1 LIMIT $2)"
            }
            Self::SessionTickets => {
                "DELETE FROM session_tickets WHERE ticket_hash IN \
                 (SELECT ticket_hash FROM session_tickets WHERE expires_at <= $1 LIMIT $2)"
            }
            Self::ReplayCache => {
                "DELETE FROM host_token_jtis WHERE (app, jti) IN \
                 (SELECT app, jti FROM host_token_jtis WHERE expires_at <= $1 LIMIT $2)"
            }
            Self::BrowserSessions => {
                "DELETE FROM browser_sessions WHERE id_hash IN \
                 (SELECT id_hash FROM browser_sessions WHERE expires_at <= $1 LIMIT $2)"
            }
            Self::IdpSignouts => {
                "DELETE FROM idp_signouts WHERE ticket_hash IN \
                 (SELECT ticket_hash FROM idp_signouts WHERE expires_at <= $1 LIMIT $2)"
            }
            Self::EventOutbox => {
                "DELETE FROM event_outbox WHERE id IN \
                 (SELECT id FROM event_outbox WHERE delivered_at <= $1 OR dead_at <= $1 LIMIT $2)"
            }
            Self::KeyBindings => {
                "DELETE FROM dpop_bindings WHERE (app, jkt, pending_jti) IN \
                 (SELECT app, jkt, pending_jti FROM dpop_bindings WHERE idle_expires_at <= $1 LIMIT $2)"
            }
            // Oldest first, along the index on `at`: a batch reads only
            // the rows it deletes.
            Self::AuditEvents => {
                "DELETE FROM audit_events WHERE id IN \
                 (SELECT id FROM audit_events WHERE at <= $1 ORDER BY at LIMIT $2)"
            }
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::PendingFlows => "pending_flows",
            Self::SessionTickets => "session_tickets",
            Self::ReplayCache => "host_token_jtis",
            Self::BrowserSessions => "browser_sessions",
            Self::IdpSignouts => "idp_signouts",
            Self::EventOutbox => "event_outbox",
            Self::AuditEvents => "audit_events",
            Self::KeyBindings => "dpop_bindings",
        }
    }
}

/// What one sweep deleted, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Swept {
    pub rows: Vec<(Table, u64)>,
}

impl Swept {
    pub fn total(&self) -> u64 {
        self.rows.iter().map(|(_, n)| n).sum()
    }
}

impl Store {
    /// One batch: deletes at most `limit` rows of `table` whose expiry (for
    /// the audit log: whose time) is at or before `cutoff`.
    pub async fn sweep_batch(&self, table: Table, cutoff: i64, limit: u32) -> Result<u64> {
        Ok(with_pool!(self, pool => {
            sqlx::query(table.sql())
                .bind(cutoff)
                .bind(i64::from(limit))
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    /// Sweeps every table in batches of `batch` rows until nothing is left
    /// to delete, pausing briefly between batches so other writers get in.
    pub async fn sweep(&self, now: i64, audit_before: i64, batch: u32) -> Result<Swept> {
        let mut swept = Swept::default();
        for table in Table::ALL {
            let cutoff = match table {
                Table::AuditEvents => audit_before,
                Table::EventOutbox => now - EVENTS_KEPT_FOR,
                _ => now,
            };
            let mut total = 0;
            loop {
                let n = self.sweep_batch(table, cutoff, batch).await?;
                total += n;
                if n < u64::from(batch) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            swept.rows.push((table, total));
        }
        Ok(swept)
    }
}
