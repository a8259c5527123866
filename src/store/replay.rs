//! SQL for `host_token_jtis`: the replay cache of host-signed tokens.

use super::{Result, Store, with_pool};

/// Host tokens, exchanged ID tokens and DPoP proofs, each once.
pub(super) const REMEMBER_JTI: &str = "INSERT INTO host_token_jtis (app, jti, expires_at) \
     VALUES ($1, $2, $3) ON CONFLICT (app, jti) DO NOTHING";

impl Store {
    /// Records that `jti` was used for `app`. Returns `true` the first time and
    /// `false` for a replay. Atomic: of two replicas recording the same `jti` at
    /// the same moment, exactly one gets `true`.
    pub async fn remember_jti(&self, app: &str, jti: &str, expires_at: i64) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query(REMEMBER_JTI)
            .bind(app)
            .bind(jti)
            .bind(expires_at)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }
}
