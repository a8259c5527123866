//! SQL for `audit_events`.

use serde::Serialize;

use super::{Result, Store, with_pool};
use crate::domain::{AppId, AuditAction, AuditOutcome, UserId};

/// One thing that happened to a user's tokens or to a credential. Never a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AuditEvent<'a> {
    /// `bot:<id>`, `user`, `cli` or `system`.
    pub actor: &'a str,
    pub app: Option<&'a AppId>,
    pub user_id: Option<&'a UserId>,
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    pub detail: Option<&'a str>,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct AuditRow {
    pub id: i64,
    pub at: i64,
    /// How many identical events this row stands for (bot reads the batched
    /// writer aggregated; 1 for every other row).
    pub count: i64,
    pub actor: String,
    pub app: Option<String>,
    pub user_id: Option<String>,
    pub action: String,
    pub outcome: String,
    pub detail: Option<String>,
}

/// Which events to list; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user_id: Option<String>,
    pub actor: Option<String>,
    pub limit: u32,
}

/// Inserts one audit row (standing for one event) with `$executor`: a pool,
/// or a transaction whose write the event belongs to.
macro_rules! insert_audit {
    ($executor:expr, $event:expr, $now:expr) => {{
        let event: &$crate::store::AuditEvent<'_> = $event;
        sqlx::query(
            "INSERT INTO audit_events (at, actor, app, user_id, action, outcome, detail) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind($now)
        .bind(event.actor)
        .bind(event.app.map($crate::domain::AppId::as_str))
        .bind(event.user_id.map($crate::domain::UserId::as_str))
        .bind(event.action.as_str())
        .bind(event.outcome.as_str())
        .bind(event.detail)
        .execute($executor)
        .await?;
    }};
}
pub(crate) use insert_audit;

impl Store {
    pub async fn record_audit(&self, event: AuditEvent<'_>, now: i64) -> Result<()> {
        with_pool!(self, pool => insert_audit!(pool, &event, now));
        Ok(())
    }

    /// Records `event` as happening now. A failure is logged, never fatal to the
    /// request being audited.
    pub async fn audit(&self, event: AuditEvent<'_>) {
        if let Err(e) = self.record_audit(event, crate::time::now()).await {
            tracing::warn!(error = %e, action = event.action.as_str(), "cannot write an audit event");
        }
    }

    /// Writes several events with one multi-row `INSERT`: each `(event, at,
    /// count)` is one row standing for `count` identical events.
    pub async fn record_audit_batch(&self, events: &[(AuditEvent<'_>, i64, i64)]) -> Result<()> {
        // 8 parameters a row; both databases take thousands per statement.
        for chunk in events.chunks(500) {
            with_pool!(self, pool => {
                let mut query = sqlx::QueryBuilder::new(
                    "INSERT INTO audit_events (at, count, actor, app, user_id, action, outcome, detail) ",
                );
                query.push_values(chunk, |mut row, (event, at, count)| {
                    row.push_bind(*at)
                        .push_bind(*count)
                        .push_bind(event.actor)
                        .push_bind(event.app.map(AppId::as_str))
                        .push_bind(event.user_id.map(UserId::as_str))
                        .push_bind(event.action.as_str())
                        .push_bind(event.outcome.as_str())
                        .push_bind(event.detail);
                });
                // Not kept in the statement cache: every batch size is another statement.
                query.build().persistent(false).execute(pool).await?;
            });
        }
        Ok(())
    }

    /// The newest events first.
    pub async fn list_audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRow>> {
        const SQL: &str = "SELECT id, at, count, actor, app, user_id, action, outcome, detail \
             FROM audit_events \
             WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR actor = $2) \
             ORDER BY id DESC LIMIT $3";
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, AuditRow>(SQL)
                .bind(filter.user_id.as_deref())
                .bind(filter.actor.as_deref())
                .bind(i64::from(filter.limit))
                .fetch_all(pool)
                .await?
        }))
    }
}
