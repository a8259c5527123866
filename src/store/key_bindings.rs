//! SQL for `dpop_bindings`: browser keys bound to a sign-in (apps with
//! `bind_chat_tokens = "dpop"`).

use super::{BeginWrite as _, Result, Store, with_pool};

/// How many confirmed keys one user keeps per app; the least recently used
/// go first (a browser whose storage was cleared made a new key).
pub const KEYS_PER_USER: i64 = 20;

/// A key binding as stored. `signin` is the session's JSON (no token).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyBindingRow {
    pub app: String,
    pub jkt: String,
    /// `""` once confirmed; else the `jti` of the chat token that confirms it.
    pub pending_jti: String,
    pub origin: String,
    pub user_id: String,
    pub provider: String,
    pub idp_sub: Option<String>,
    pub idp_sid: Option<String>,
    pub signin: String,
    pub signed_in_at: i64,
    pub idle_expires_at: i64,
}

macro_rules! columns {
    () => {
        "app, jkt, pending_jti, origin, user_id, provider, idp_sub, idp_sid, \
         signin, signed_in_at, idle_expires_at"
    };
}

/// Writes a row, replacing the one with the same key (inside a transaction
/// or on the pool).
macro_rules! upsert_binding {
    ($executor:expr, $row:expr) => {{
        let row: &KeyBindingRow = $row;
        sqlx::query(
            "INSERT INTO dpop_bindings (app, jkt, pending_jti, origin, user_id, provider, \
               idp_sub, idp_sid, signin, signed_in_at, idle_expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
             ON CONFLICT (app, jkt, pending_jti) DO UPDATE SET origin = excluded.origin, \
               user_id = excluded.user_id, provider = excluded.provider, \
               idp_sub = excluded.idp_sub, idp_sid = excluded.idp_sid, \
               signin = excluded.signin, signed_in_at = excluded.signed_in_at, \
               idle_expires_at = excluded.idle_expires_at",
        )
        .bind(&row.app)
        .bind(&row.jkt)
        .bind(&row.pending_jti)
        .bind(&row.origin)
        .bind(&row.user_id)
        .bind(&row.provider)
        .bind(&row.idp_sub)
        .bind(&row.idp_sid)
        .bind(&row.signin)
        .bind(row.signed_in_at)
        .bind(row.idle_expires_at)
        .execute($executor)
        .await?;
    }};
}

/// Keeps the user's [`KEYS_PER_USER`] most recently used confirmed keys.
macro_rules! trim_user_keys {
    ($executor:expr, $app:expr, $user_id:expr) => {{
        sqlx::query(TRIM_USER_KEYS)
            .bind($app)
            .bind($user_id)
            .bind(KEYS_PER_USER)
            .execute($executor)
            .await?;
    }};
}

/// A renewal by key reads the key's binding.
pub(super) const GET_BINDING: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM dpop_bindings \
     WHERE app = $1 AND jkt = $2 AND pending_jti = $3 AND idle_expires_at > $4"
);
/// Confirming takes the pending row.
pub(super) const TAKE_PENDING: &str = concat!(
    "DELETE FROM dpop_bindings \
     WHERE app = $1 AND jkt = $2 AND pending_jti = $3 AND idle_expires_at > $4 \
     RETURNING ",
    columns!()
);
pub(super) const TOUCH_BINDING: &str = "UPDATE dpop_bindings SET idle_expires_at = $3 \
     WHERE app = $1 AND jkt = $2 AND pending_jti = ''";
/// Keeps the user's [`KEYS_PER_USER`] most recently used confirmed keys.
pub(super) const TRIM_USER_KEYS: &str = "DELETE FROM dpop_bindings \
     WHERE app = $1 AND user_id = $2 AND pending_jti = '' \
     AND jkt NOT IN (SELECT jkt FROM dpop_bindings \
       WHERE app = $1 AND user_id = $2 AND pending_jti = '' \
       ORDER BY idle_expires_at DESC LIMIT $3)";

impl Store {
    /// Records a pending binding, or (with `pending_jti` empty) the key's
    /// confirmed binding, replacing the key's earlier one.
    pub async fn put_key_binding(&self, row: &KeyBindingRow) -> Result<()> {
        with_pool!(self, pool => {
            if row.pending_jti.is_empty() {
                let mut tx = pool.begin_write().await?;
                upsert_binding!(&mut *tx, row);
                trim_user_keys!(&mut *tx, &row.app, &row.user_id);
                tx.commit().await?;
            } else {
                upsert_binding!(pool, row);
            }
        });
        Ok(())
    }

    /// The key's binding with that `pending_jti` (`""`: the confirmed one)
    /// unless it has expired at `now`.
    pub async fn key_binding(
        &self,
        app: &str,
        jkt: &str,
        pending_jti: &str,
        now: i64,
    ) -> Result<Option<KeyBindingRow>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, KeyBindingRow>(GET_BINDING)
            .bind(app)
            .bind(jkt)
            .bind(pending_jti)
            .bind(now)
            .fetch_optional(pool)
            .await?
        }))
    }

    /// Turns the pending binding of `pending_jti` into the key's confirmed
    /// one, valid until `idle_expires_at`. Atomic and single use: `None` when
    /// there is no such pending row (any more).
    pub async fn confirm_key_binding(
        &self,
        app: &str,
        jkt: &str,
        pending_jti: &str,
        idle_expires_at: i64,
        now: i64,
    ) -> Result<Option<KeyBindingRow>> {
        Ok(with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let pending = sqlx::query_as::<_, KeyBindingRow>(TAKE_PENDING)
            .bind(app)
            .bind(jkt)
            .bind(pending_jti)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(mut row) = pending else {
                return Ok(None);
            };
            row.pending_jti = String::new();
            row.idle_expires_at = idle_expires_at;
            upsert_binding!(&mut *tx, &row);
            trim_user_keys!(&mut *tx, &row.app, &row.user_id);
            tx.commit().await?;
            Some(row)
        }))
    }

    /// Slides a confirmed binding's idle expiry.
    pub async fn touch_key_binding(
        &self,
        app: &str,
        jkt: &str,
        idle_expires_at: i64,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(TOUCH_BINDING)
            .bind(app)
            .bind(jkt)
            .bind(idle_expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Forgets every binding of the key in `app` (sign-out); `true` if there was one.
    pub async fn delete_key_bindings(&self, app: &str, jkt: &str) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query("DELETE FROM dpop_bindings WHERE app = $1 AND jkt = $2")
                .bind(app)
                .bind(jkt)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }
}
