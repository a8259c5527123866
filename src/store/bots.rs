//! SQL for `bots`: bot credentials (a hash of the secret, never the secret).

use super::{Result, Store, with_pool};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BotRow {
    pub id: String,
    pub app: String,
    pub name: String,
    pub secret_hash: Vec<u8>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl Store {
    pub async fn insert_bot(
        &self,
        id: &str,
        app: &str,
        name: &str,
        secret_hash: &[u8],
        now: i64,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO bots (id, app, name, secret_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(id)
            .bind(app)
            .bind(name)
            .bind(secret_hash)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn list_bots(&self) -> Result<Vec<BotRow>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, BotRow>(
                "SELECT id, app, name, secret_hash, created_at, revoked_at FROM bots ORDER BY app, created_at, id",
            )
            .fetch_all(pool)
            .await?
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

    /// The bot whose secret hashes to `secret_hash`, revoked or not.
    pub async fn find_bot_by_secret_hash(&self, secret_hash: &[u8]) -> Result<Option<BotRow>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, BotRow>(
                "SELECT id, app, name, secret_hash, created_at, revoked_at FROM bots WHERE secret_hash = $1",
            )
            .bind(secret_hash)
            .fetch_optional(pool)
            .await?
        }))
    }
}
