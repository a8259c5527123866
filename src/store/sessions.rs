//! SQL for `browser_sessions` and `session_tickets`.

use super::{BeginWrite as _, Result, Store, with_pool};

/// A new ticket: for a sign-in (`user_id`; a sign-out of the user deletes
/// it) or a flow's failure (`None`); `binding_hash` when only the browser
/// holding that flow-binding cookie may take it.
#[derive(Debug)]
pub struct NewTicket<'a> {
    pub ticket_hash: &'a str,
    pub app: &'a str,
    pub origin: &'a str,
    pub user_id: Option<&'a str>,
    pub binding_hash: Option<&'a str>,
    pub signin: &'a [u8],
    pub expires_at: i64,
}

/// A taken ticket: its JSON, and the binding cookie (hashed) it requires.
#[derive(Debug, sqlx::FromRow)]
pub struct TakenTicket {
    pub signin: Vec<u8>,
    pub binding_hash: Option<String>,
}

/// Who a browser session is signed in as, for back-channel logout.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionUser {
    pub app: String,
    pub user_id: String,
    pub provider: String,
    pub idp_sub: Option<String>,
    pub idp_sid: Option<String>,
}

/// Inserts a session's users (in the caller's transaction).
macro_rules! insert_users {
    ($tx:expr, $id_hash:expr, $users:expr) => {{
        for user in $users {
            sqlx::query(
                "INSERT INTO browser_session_users (id_hash, app, user_id, provider, idp_sub, idp_sid) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id_hash, app, user_id) DO NOTHING",
            )
            .bind($id_hash)
            .bind(&user.app)
            .bind(&user.user_id)
            .bind(&user.provider)
            .bind(&user.idp_sub)
            .bind(&user.idp_sid)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}

/// Every request with chatgate's cookie.
pub(super) const LOAD_SESSION: &str =
    "SELECT data FROM browser_sessions WHERE id_hash = $1 AND expires_at > $2";
/// Every renewal saves the session again, with who it is signed in as.
pub(super) const SAVE_SESSION: &str = "INSERT INTO browser_sessions (id_hash, data, expires_at) \
     VALUES ($1, $2, $3) \
     ON CONFLICT (id_hash) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at";
pub(super) const DELETE_SESSION_USERS: &str =
    "DELETE FROM browser_session_users WHERE id_hash = $1";

impl Store {
    /// Inserts a session; `false` if the id is taken (the caller picks another).
    pub async fn insert_session(
        &self,
        id_hash: &str,
        data: &[u8],
        expires_at: i64,
        users: &[SessionUser],
    ) -> Result<bool> {
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                "INSERT INTO browser_sessions (id_hash, data, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id_hash) DO NOTHING",
            )
            .bind(id_hash)
            .bind(data)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 {
                insert_users!(tx, id_hash, users);
            }
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }

    /// Writes a session and who it is signed in as, in one transaction.
    pub async fn save_session(
        &self,
        id_hash: &str,
        data: &[u8],
        expires_at: i64,
        users: &[SessionUser],
    ) -> Result<()> {
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(SAVE_SESSION)
            .bind(id_hash)
            .bind(data)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
            sqlx::query(DELETE_SESSION_USERS)
                .bind(id_hash)
                .execute(&mut *tx)
                .await?;
            insert_users!(tx, id_hash, users);
            tx.commit().await?;
        });
        Ok(())
    }

    /// Who the session is signed in as (tests and diagnostics).
    pub async fn session_users(&self, id_hash: &str) -> Result<Vec<SessionUser>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, SessionUser>(
                "SELECT app, user_id, provider, idp_sub, idp_sid FROM browser_session_users \
                 WHERE id_hash = $1 ORDER BY app, user_id",
            )
            .bind(id_hash)
            .fetch_all(pool)
            .await?
        }))
    }

    /// The session's data if it exists and has not expired at `now`.
    pub async fn load_session(&self, id_hash: &str, now: i64) -> Result<Option<Vec<u8>>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar::<_, Vec<u8>>(LOAD_SESSION)
            .bind(id_hash)
            .bind(now)
            .fetch_optional(pool)
            .await?
        }))
    }

    pub async fn delete_session(&self, id_hash: &str) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM browser_sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn insert_session_ticket(&self, ticket: NewTicket<'_>) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO session_tickets \
                 (ticket_hash, app, origin, user_id, binding_hash, signin, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(ticket.ticket_hash)
            .bind(ticket.app)
            .bind(ticket.origin)
            .bind(ticket.user_id)
            .bind(ticket.binding_hash)
            .bind(ticket.signin)
            .bind(ticket.expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Consumes a ticket for `(app, origin)` that has not expired. A ticket
    /// is redeemed at most once.
    pub async fn take_session_ticket(
        &self,
        ticket_hash: &str,
        app: &str,
        origin: &str,
        now: i64,
    ) -> Result<Option<TakenTicket>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, TakenTicket>(
                "DELETE FROM session_tickets \
                 WHERE ticket_hash = $1 AND app = $2 AND origin = $3 AND expires_at > $4 \
                 RETURNING signin, binding_hash",
            )
            .bind(ticket_hash)
            .bind(app)
            .bind(origin)
            .bind(now)
            .fetch_optional(pool)
            .await?
        }))
    }
}
