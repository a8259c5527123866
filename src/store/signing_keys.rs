//! SQL for `signing_keys`: the public halves of chat-token signing keys and when
//! each was last in use, so every replica can publish every key whose tokens may
//! still be valid.

use super::{Result, Store, with_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SigningKeyRow {
    pub kid: String,
    pub alg: String,
    pub public_jwk: String,
    pub first_used_at: i64,
    pub last_used_at: i64,
}

impl Store {
    /// Records that this replica signs with `kid` at `now` (a heartbeat).
    pub async fn touch_signing_key(
        &self,
        kid: &str,
        alg: &str,
        public_jwk: &str,
        now: i64,
    ) -> Result<()> {
        const SQL: &str = "INSERT INTO signing_keys (kid, alg, public_jwk, first_used_at, last_used_at) \
             VALUES ($1, $2, $3, $4, $4) \
             ON CONFLICT (kid) DO UPDATE SET last_used_at = CASE \
               WHEN excluded.last_used_at > signing_keys.last_used_at THEN excluded.last_used_at \
               ELSE signing_keys.last_used_at END";
        with_pool!(self, pool => {
            sqlx::query(SQL)
                .bind(kid)
                .bind(alg)
                .bind(public_jwk)
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Keys some replica signed with at or after `since`, newest first.
    pub async fn signing_keys_used_since(&self, since: i64) -> Result<Vec<SigningKeyRow>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, SigningKeyRow>(
                "SELECT kid, alg, public_jwk, first_used_at, last_used_at FROM signing_keys \
                 WHERE last_used_at >= $1 ORDER BY last_used_at DESC, kid",
            )
            .bind(since)
            .fetch_all(pool)
            .await?
        }))
    }
}
