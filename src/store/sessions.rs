//! SQL for `browser_sessions` and `session_tickets`.

use super::{Result, Store, with_pool};

impl Store {
    /// Inserts a session; `false` if the id is taken (the caller picks another).
    pub async fn insert_session(
        &self,
        id_hash: &str,
        data: &[u8],
        expires_at: i64,
    ) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO browser_sessions (id_hash, data, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id_hash) DO NOTHING",
            )
            .bind(id_hash)
            .bind(data)
            .bind(expires_at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    pub async fn save_session(&self, id_hash: &str, data: &[u8], expires_at: i64) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO browser_sessions (id_hash, data, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id_hash) DO UPDATE SET data = excluded.data, expires_at = excluded.expires_at",
            )
            .bind(id_hash)
            .bind(data)
            .bind(expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The session's data if it exists and has not expired at `now`.
    pub async fn load_session(&self, id_hash: &str, now: i64) -> Result<Option<Vec<u8>>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT data FROM browser_sessions WHERE id_hash = $1 AND expires_at > $2",
            )
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

    pub async fn insert_session_ticket(
        &self,
        ticket_hash: &str,
        app: &str,
        origin: &str,
        signin: &[u8],
        expires_at: i64,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO session_tickets (ticket_hash, app, origin, signin, expires_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(ticket_hash)
            .bind(app)
            .bind(origin)
            .bind(signin)
            .bind(expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Consumes a ticket for `(app, origin)` that has not expired; returns its
    /// sign-in JSON. A ticket is redeemed at most once.
    pub async fn take_session_ticket(
        &self,
        ticket_hash: &str,
        app: &str,
        origin: &str,
        now: i64,
    ) -> Result<Option<Vec<u8>>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar::<_, Vec<u8>>(
                "DELETE FROM session_tickets \
                 WHERE ticket_hash = $1 AND app = $2 AND origin = $3 AND expires_at > $4 \
                 RETURNING signin",
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
