//! SQL for `pending_flows`: authorization-code flows waiting for their callback.

use super::{Result, Store, with_pool};

/// A flow being started. `nonce` and `pkce_verifier` arrive sealed.
#[derive(Debug)]
pub struct NewFlow<'a> {
    pub state_hash: &'a str,
    pub binding_hash: &'a str,
    pub app: &'a str,
    pub provider: &'a str,
    pub origin: &'a str,
    pub mode: &'a str,
    /// The browser key the chat token is to be bound to.
    pub dpop_jkt: Option<&'a str>,
    /// The SHA-256 (hex) of the ticket the page waits for (silent flows
    /// with a browser key only).
    pub ticket_hash: Option<&'a str>,
    pub nonce: Vec<u8>,
    pub pkce_verifier: Vec<u8>,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Clone, sqlx::FromRow)]
pub struct PendingFlowRow {
    pub state_hash: String,
    pub binding_hash: String,
    pub app: String,
    pub provider: String,
    pub origin: String,
    pub mode: String,
    pub dpop_jkt: Option<String>,
    pub ticket_hash: Option<String>,
    pub nonce: Vec<u8>,
    pub pkce_verifier: Vec<u8>,
    pub created_at: i64,
    pub expires_at: i64,
}

impl std::fmt::Debug for PendingFlowRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingFlowRow")
            .field("app", &self.app)
            .field("provider", &self.provider)
            .field("origin", &self.origin)
            .field("mode", &self.mode)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

macro_rules! columns {
    () => {
        "state_hash, binding_hash, app, provider, origin, mode, dpop_jkt, ticket_hash, \
         nonce, pkce_verifier, created_at, expires_at"
    };
}

/// A callback takes its flow by the state's hash and the browser's binding cookie.
pub(super) const TAKE_FLOW: &str = concat!(
    "DELETE FROM pending_flows WHERE state_hash = $1 AND binding_hash = $2 RETURNING ",
    columns!()
);
/// Without the cookie, a flow bound to a browser key is taken by its state:
/// its result is a ticket that only a proof of that key redeems.
pub(super) const TAKE_KEY_BOUND_FLOW: &str = concat!(
    "DELETE FROM pending_flows WHERE state_hash = $1 AND dpop_jkt IS NOT NULL RETURNING ",
    columns!()
);
/// Without the cookie or a key, a flow is only read (never consumed) to tell
/// its page that this browser cannot finish it.
pub(super) const PEEK_FLOW: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM pending_flows WHERE state_hash = $1"
);

impl Store {
    pub async fn insert_flow(&self, flow: NewFlow<'_>) -> Result<()> {
        const SQL: &str = "INSERT INTO pending_flows (state_hash, binding_hash, app, provider, \
               origin, mode, dpop_jkt, ticket_hash, nonce, pkce_verifier, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
        with_pool!(self, pool => {
            sqlx::query(SQL)
                .bind(flow.state_hash)
                .bind(flow.binding_hash)
                .bind(flow.app)
                .bind(flow.provider)
                .bind(flow.origin)
                .bind(flow.mode)
                .bind(flow.dpop_jkt)
                .bind(flow.ticket_hash)
                .bind(flow.nonce)
                .bind(flow.pkce_verifier)
                .bind(flow.created_at)
                .bind(flow.expires_at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Consumes the flow with this state, atomically: of two callbacks racing
    /// with the same state, one gets the row and the other gets `None`. A browser
    /// that does not hold the binding cookie cannot consume (or burn) the flow.
    /// The row is returned even when expired; the caller rejects it.
    pub async fn take_flow(
        &self,
        state_hash: &str,
        binding_hash: &str,
    ) -> Result<Option<PendingFlowRow>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, PendingFlowRow>(TAKE_FLOW)
                .bind(state_hash)
                .bind(binding_hash)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Consumes the flow with this state if it was started with a browser key
    /// (`dpop_jkt`), atomically, without the binding cookie: the browser that
    /// dropped the cookie proves the key instead, when it redeems the result.
    pub async fn take_key_bound_flow(&self, state_hash: &str) -> Result<Option<PendingFlowRow>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, PendingFlowRow>(TAKE_KEY_BOUND_FLOW)
                .bind(state_hash)
                .fetch_optional(pool)
                .await?
        }))
    }

    /// The flow with this state, left in place: only where its result may be
    /// told that this browser cannot finish it.
    pub async fn peek_flow(&self, state_hash: &str) -> Result<Option<PendingFlowRow>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, PendingFlowRow>(PEEK_FLOW)
                .bind(state_hash)
                .fetch_optional(pool)
                .await?
        }))
    }
}
