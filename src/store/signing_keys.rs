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
    /// The vault key whose derived key made `mac`.
    pub key_id: Option<String>,
    /// HMAC over `(kid, alg, public_jwk)`: rows without a valid one are not trusted.
    pub mac: Option<Vec<u8>>,
}

impl Store {
    /// Records that this replica signs with `kid` at `now` (a heartbeat). The
    /// key's own columns and tag are written every time, so a row planted
    /// under this `kid` is overwritten by the real key.
    #[allow(clippy::too_many_arguments)]
    pub async fn touch_signing_key(
        &self,
        kid: &str,
        alg: &str,
        public_jwk: &str,
        key_id: &str,
        mac: &[u8],
        now: i64,
    ) -> Result<()> {
        const SQL: &str = "INSERT INTO signing_keys \
               (kid, alg, public_jwk, first_used_at, last_used_at, key_id, mac) \
             VALUES ($1, $2, $3, $4, $4, $5, $6) \
             ON CONFLICT (kid) DO UPDATE SET alg = excluded.alg, \
               public_jwk = excluded.public_jwk, key_id = excluded.key_id, mac = excluded.mac, \
               last_used_at = CASE \
                 WHEN excluded.last_used_at > signing_keys.last_used_at THEN excluded.last_used_at \
                 ELSE signing_keys.last_used_at END";
        with_pool!(self, pool => {
            sqlx::query(SQL)
                .bind(kid)
                .bind(alg)
                .bind(public_jwk)
                .bind(now)
                .bind(key_id)
                .bind(mac)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Tags rows without a MAC (those present when migration 0004 ran).
    pub async fn tag_untagged_signing_keys(
        &self,
        key_id: &str,
        tag: impl Fn(&SigningKeyRow) -> Vec<u8>,
    ) -> Result<u64> {
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, SigningKeyRow>(
                "SELECT kid, alg, public_jwk, first_used_at, last_used_at, key_id, mac \
                 FROM signing_keys WHERE mac IS NULL",
            )
            .fetch_all(pool)
            .await?
        });
        let mut n = 0;
        for row in &rows {
            n += with_pool!(self, pool => {
                sqlx::query("UPDATE signing_keys SET key_id = $1, mac = $2 WHERE kid = $3 AND mac IS NULL")
                    .bind(key_id)
                    .bind(tag(row))
                    .bind(&row.kid)
                    .execute(pool)
                    .await?
                    .rows_affected()
            });
        }
        Ok(n)
    }

    /// Keys some replica signed with at or after `since`, newest first.
    pub async fn signing_keys_used_since(&self, since: i64) -> Result<Vec<SigningKeyRow>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, SigningKeyRow>(
                "SELECT kid, alg, public_jwk, first_used_at, last_used_at, key_id, mac \
                 FROM signing_keys WHERE last_used_at >= $1 ORDER BY last_used_at DESC, kid",
            )
            .bind(since)
            .fetch_all(pool)
            .await?
        }))
    }
}
