//! SQL for `bots`: bot credentials (a keyed hash of the secret, never the
//! secret) with a MAC over the row (see `crate::bots`).

use super::{Result, Store, with_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BotRow {
    pub id: String,
    pub app: String,
    pub name: String,
    pub secret_hash: Vec<u8>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
    /// `hmac` or `sha256` (from before keyed hashes).
    pub hash_format: String,
    pub key_id: Option<String>,
    pub mac: Option<Vec<u8>>,
}

/// A bot's credential columns as written.
#[derive(Debug, Clone, Copy)]
pub struct BotCredential<'a> {
    pub secret_hash: &'a [u8],
    pub hash_format: &'a str,
    pub key_id: &'a str,
    pub mac: &'a [u8],
}

const COLUMNS: &str =
    "id, app, name, secret_hash, created_at, revoked_at, hash_format, key_id, mac";

/// Bot authentication, on every bot API request.
pub(super) const BY_SECRET_HASH: &str = "SELECT id, app, name, secret_hash, created_at, \
     revoked_at, hash_format, key_id, mac FROM bots WHERE secret_hash = $1";

impl Store {
    pub async fn insert_bot(
        &self,
        id: &str,
        app: &str,
        name: &str,
        credential: BotCredential<'_>,
        now: i64,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO bots (id, app, name, secret_hash, created_at, hash_format, key_id, mac) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(id)
            .bind(app)
            .bind(name)
            .bind(credential.secret_hash)
            .bind(now)
            .bind(credential.hash_format)
            .bind(credential.key_id)
            .bind(credential.mac)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Replaces a bot's credential columns (a re-hash under the current key),
    /// if they are still `old_hash`.
    pub async fn update_bot_credential(
        &self,
        id: &str,
        old_hash: &[u8],
        credential: BotCredential<'_>,
    ) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE bots SET secret_hash = $1, hash_format = $2, key_id = $3, mac = $4 \
                 WHERE id = $5 AND secret_hash = $6",
            )
            .bind(credential.secret_hash)
            .bind(credential.hash_format)
            .bind(credential.key_id)
            .bind(credential.mac)
            .bind(id)
            .bind(old_hash)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    pub async fn list_bots(&self) -> Result<Vec<BotRow>> {
        let sql = format!("SELECT {COLUMNS} FROM bots ORDER BY app, created_at, id");
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, BotRow>(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?
        }))
    }

    /// Marks the bot revoked; `false` when there is no such bot or it already was.
    pub async fn revoke_bot(&self, id: &str, now: i64) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query("UPDATE bots SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
                .bind(now)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// The bots whose secret hash is one of `hashes` (one per candidate key),
    /// revoked or not.
    pub async fn find_bots_by_secret_hash(&self, hashes: &[Vec<u8>]) -> Result<Vec<BotRow>> {
        let mut rows = Vec::new();
        for hash in hashes {
            let found = with_pool!(self, pool => {
                sqlx::query_as::<_, BotRow>(BY_SECRET_HASH)
                    .bind(hash)
                    .fetch_optional(pool)
                    .await?
            });
            rows.extend(found);
        }
        Ok(rows)
    }

    /// Tags rows without a MAC (those present when migration 0004 ran): `tag`
    /// computes the MAC of `(id, app, hash_format, secret_hash)`.
    pub async fn tag_untagged_bots(
        &self,
        key_id: &str,
        tag: impl Fn(&BotRow) -> Vec<u8>,
    ) -> Result<u64> {
        let sql = format!("SELECT {COLUMNS} FROM bots WHERE mac IS NULL");
        let rows = with_pool!(self, pool => {
            sqlx::query_as::<_, BotRow>(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?
        });
        let mut n = 0;
        for row in &rows {
            n += with_pool!(self, pool => {
                sqlx::query("UPDATE bots SET key_id = $1, mac = $2 WHERE id = $3 AND mac IS NULL")
                    .bind(key_id)
                    .bind(tag(row))
                    .bind(&row.id)
                    .execute(pool)
                    .await?
                    .rows_affected()
            });
        }
        Ok(n)
    }
}
