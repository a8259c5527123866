//! SQL of a back-channel logout: the vault entries and browser sessions of a
//! user (`sub`) or an IdP session (`sid`) at one provider, deleted in one
//! transaction with the events that report it.

use super::outbox::insert_event;
use super::{BeginWrite as _, OutboxRow, Result, Store, with_pool};

/// Whose sign-ins a logout ends: at `provider`, those of `sub`, of `sid`, or
/// with both, the user's sign-ins in that session (and those whose session
/// chatgate does not know, when the ID token named none).
#[derive(Debug, Clone, Copy)]
pub struct LogoutScope<'a> {
    pub provider: &'a str,
    pub sub: Option<&'a str>,
    pub sid: Option<&'a str>,
}

/// The condition on `provider`, `idp_sub`, `idp_sid` ($1, $2, $3).
macro_rules! matches_scope {
    () => {
        "provider = $1 AND ($2 IS NULL OR idp_sub = $2) \
         AND ($3 IS NULL OR idp_sid = $3 OR ($2 IS NOT NULL AND idp_sid IS NULL))"
    };
}

/// A single-use token id for the replay cache (`host_token_jtis`).
#[derive(Debug, Clone, Copy)]
pub struct Jti<'a> {
    /// Keeps ids of different issuers and token kinds apart.
    pub scope: &'a str,
    pub id: &'a str,
    /// Kept until then (swept afterwards).
    pub expires_at: i64,
}

/// What a logout deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoggedOut {
    /// `(app, user_id)` of the vault entries deleted.
    pub entries: Vec<(String, String)>,
    /// Browser sessions ended.
    pub sessions: u64,
}

impl Store {
    /// Deletes the matching vault entries and browser sessions, and records
    /// `event(app, user_id)` for every entry deleted, in one transaction with
    /// the logout token's id in the replay cache. `None` (and nothing done)
    /// when that id was used before.
    pub async fn end_idp_sessions(
        &self,
        scope: LogoutScope<'_>,
        jti: &Jti<'_>,
        event: impl Fn(&str, &str) -> Option<OutboxRow>,
    ) -> Result<Option<LoggedOut>> {
        // Without sub or sid nothing would be selective: refuse to match all.
        if scope.sub.is_none() && scope.sid.is_none() {
            return Ok(Some(LoggedOut::default()));
        }
        let logged_out = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let fresh = sqlx::query(
                "INSERT INTO host_token_jtis (app, jti, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (app, jti) DO NOTHING",
            )
            .bind(jti.scope)
            .bind(jti.id)
            .bind(jti.expires_at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !fresh {
                return Ok(None);
            }
            let entries: Vec<(String, String)> = sqlx::query_as(concat!(
                "DELETE FROM vault_entries WHERE ",
                matches_scope!(),
                " RETURNING app, user_id"
            ))
            .bind(scope.provider)
            .bind(scope.sub)
            .bind(scope.sid)
            .fetch_all(&mut *tx)
            .await?;
            for (app, user_id) in &entries {
                if let Some(row) = event(app, user_id) {
                    insert_event!(&mut *tx, &row);
                }
            }
            // Their rows in browser_session_users go with them (ON DELETE CASCADE).
            let sessions = sqlx::query(concat!(
                "DELETE FROM browser_sessions WHERE id_hash IN \
                 (SELECT id_hash FROM browser_session_users WHERE ",
                matches_scope!(),
                ")"
            ))
            .bind(scope.provider)
            .bind(scope.sub)
            .bind(scope.sid)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // Keys bound to those sign-ins renew no more.
            sqlx::query(concat!("DELETE FROM dpop_bindings WHERE ", matches_scope!()))
                .bind(scope.provider)
                .bind(scope.sub)
                .bind(scope.sid)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            LoggedOut { entries, sessions }
        });
        Ok(Some(logged_out))
    }

    /// Ends every browser session signed in as `user_id` in `app`, and
    /// forgets the browser keys bound to them.
    pub async fn end_user_sessions(&self, app: &str, user_id: &str) -> Result<u64> {
        Ok(with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                "DELETE FROM browser_sessions WHERE id_hash IN \
                 (SELECT id_hash FROM browser_session_users WHERE app = $1 AND user_id = $2)",
            )
            .bind(app)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM dpop_bindings WHERE app = $1 AND user_id = $2")
                .bind(app)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n
        }))
    }
}
