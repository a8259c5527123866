//! SQL for `idp_signouts`: IdP sign-outs started by the widget.

use super::{Result, Store, with_pool};

/// A sign-out at the IdP, between the widget's request and the IdP's return.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdpSignoutRow {
    pub app: String,
    pub origin: String,
    pub provider: String,
    /// Sealed by the vault (the `id_token_hint`).
    pub id_token: Option<Vec<u8>>,
}

impl Store {
    pub async fn insert_idp_signout(
        &self,
        ticket_hash: &str,
        row: &IdpSignoutRow,
        expires_at: i64,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO idp_signouts (ticket_hash, app, origin, provider, id_token, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(ticket_hash)
            .bind(&row.app)
            .bind(&row.origin)
            .bind(&row.provider)
            .bind(&row.id_token)
            .bind(expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Uses the ticket (once) and records the `state` sent to the IdP.
    pub async fn use_idp_signout_ticket(
        &self,
        ticket_hash: &str,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<IdpSignoutRow>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, IdpSignoutRow>(
                "UPDATE idp_signouts SET ticket_used = TRUE, state_hash = $2 \
                 WHERE ticket_hash = $1 AND ticket_used = FALSE AND expires_at > $3 \
                 RETURNING app, origin, provider, id_token",
            )
            .bind(ticket_hash)
            .bind(state_hash)
            .bind(now)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Ends the sign-out the IdP returned from: `(app, origin)`, once.
    pub async fn take_idp_signout_state(
        &self,
        state_hash: &str,
        now: i64,
    ) -> Result<Option<(String, String)>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, (String, String)>(
                "DELETE FROM idp_signouts WHERE state_hash = $1 AND expires_at > $2 \
                 RETURNING app, origin",
            )
            .bind(state_hash)
            .bind(now)
            .fetch_optional(pool)
            .await?
        }))
    }
}
