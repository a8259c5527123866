//! SQL for `event_outbox`: events for bots, written in the same transaction
//! as the change they report, delivered at least once by one replica at a
//! time (a lease on the row; `FOR UPDATE SKIP LOCKED` on PostgreSQL).

use super::{Result, Store, with_pool};

/// An event to record with a change.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub id: String,
    pub app: String,
    pub kind: String,
    pub user_id: String,
    /// The JSON body (never a token).
    pub payload: String,
    pub created_at: i64,
}

/// An event as stored, with its delivery state.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub id: String,
    pub app: String,
    #[sqlx(rename = "type")]
    pub kind: String,
    pub user_id: String,
    pub payload: String,
    pub created_at: i64,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub delivered_at: Option<i64>,
    pub dead_at: Option<i64>,
    pub last_error: Option<String>,
}

const COLUMNS: &str = "id, app, type, user_id, payload, created_at, attempts, \
     next_attempt_at, delivered_at, dead_at, last_error";

/// Events due for delivery, claimed by one replica (SQLite; PostgreSQL adds
/// `FOR UPDATE SKIP LOCKED`).
macro_rules! claim_due {
    ($lock:literal) => {
        concat!(
            "UPDATE event_outbox SET locked_by = $1, locked_until = $2 WHERE id IN \
             (SELECT id FROM event_outbox WHERE delivered_at IS NULL AND dead_at IS NULL \
               AND next_attempt_at <= $3 AND (locked_until IS NULL OR locked_until < $3) \
               ORDER BY created_at LIMIT $4",
            $lock,
            ") RETURNING id, app, type, user_id, payload, created_at, attempts, \
             next_attempt_at, delivered_at, dead_at, last_error"
        )
    };
}
pub(super) const CLAIM_DUE_SQLITE: &str = claim_due!("");
pub(super) const CLAIM_DUE_POSTGRES: &str = claim_due!(" FOR UPDATE SKIP LOCKED");
/// `chatgate_events_pending`, at every scrape.
pub(super) const PENDING_COUNT: &str =
    "SELECT COUNT(*) FROM event_outbox WHERE delivered_at IS NULL AND dead_at IS NULL";

/// Inserts `$row` (an `&OutboxRow`) with the executor `$tx`, inside a
/// transaction of either backend.
macro_rules! insert_event {
    ($tx:expr, $row:expr) => {{
        let row: &$crate::store::OutboxRow = $row;
        sqlx::query(
            "INSERT INTO event_outbox (id, app, type, user_id, payload, created_at, \
             next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&row.id)
        .bind(&row.app)
        .bind(&row.kind)
        .bind(&row.user_id)
        .bind(&row.payload)
        .bind(row.created_at)
        .execute($tx)
        .await?;
    }};
}
pub(crate) use insert_event;

/// Which events to list.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventFilter {
    /// Only those not delivered (pending or dead).
    pub undelivered: bool,
    pub limit: u32,
}

impl Store {
    /// Records events on their own (a change written elsewhere).
    pub async fn insert_events(&self, rows: &[OutboxRow]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for row in rows {
                insert_event!(&mut *tx, row);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Claims up to `limit` events due for delivery for `owner` until `until`:
    /// none that another replica holds. PostgreSQL skips rows another
    /// transaction has locked; SQLite has one writer at a time anyway.
    pub async fn claim_due_events(
        &self,
        owner: &str,
        now: i64,
        until: i64,
        limit: u32,
    ) -> Result<Vec<StoredEvent>> {
        let rows = match self {
            Store::Sqlite(pool) => {
                sqlx::query_as::<_, StoredEvent>(CLAIM_DUE_SQLITE)
                    .bind(owner)
                    .bind(until)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?
            }
            Store::Postgres(pool) => {
                sqlx::query_as::<_, StoredEvent>(CLAIM_DUE_POSTGRES)
                    .bind(owner)
                    .bind(until)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(pool)
                    .await?
            }
        };
        Ok(rows)
    }

    /// A delivery attempt's result, by the replica that claimed the event.
    pub async fn settle_event(
        &self,
        id: &str,
        owner: &str,
        outcome: EventSettlement<'_>,
    ) -> Result<()> {
        let (delivered, dead, next, error) = match outcome {
            EventSettlement::Delivered { at } => (Some(at), None, None, None),
            EventSettlement::Retry { at, error } => (None, None, Some(at), Some(error)),
            EventSettlement::Dead { at, error } => (None, Some(at), None, Some(error)),
        };
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE event_outbox SET attempts = attempts + 1, delivered_at = $1, dead_at = $2, \
                   next_attempt_at = COALESCE($3, next_attempt_at), last_error = $4, \
                   locked_by = NULL, locked_until = NULL \
                 WHERE id = $5 AND locked_by = $6",
            )
            .bind(delivered)
            .bind(dead)
            .bind(next)
            .bind(error)
            .bind(id)
            .bind(owner)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Events newest first.
    pub async fn list_events(&self, filter: EventFilter) -> Result<Vec<StoredEvent>> {
        let condition = if filter.undelivered {
            "WHERE delivered_at IS NULL"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM event_outbox {condition} ORDER BY created_at DESC, id LIMIT $1"
        );
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, StoredEvent>(sqlx::AssertSqlSafe(sql))
                .bind(i64::from(filter.limit))
                .fetch_all(pool)
                .await?
        }))
    }

    /// Queues an event for delivery again (a dead one, or one to resend);
    /// `false` when there is no such event.
    pub async fn redeliver_event(&self, id: &str, now: i64) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE event_outbox SET delivered_at = NULL, dead_at = NULL, next_attempt_at = $1, \
                   created_at = $1, attempts = 0, locked_by = NULL, locked_until = NULL \
                 WHERE id = $2",
            )
            .bind(now)
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Events neither delivered nor dead.
    pub async fn pending_events(&self) -> Result<i64> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(PENDING_COUNT)
            .fetch_one(pool)
            .await?
        }))
    }
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, Copy)]
pub enum EventSettlement<'a> {
    Delivered { at: i64 },
    Retry { at: i64, error: &'a str },
    Dead { at: i64, error: &'a str },
}
