//! SQL for `direct_line_users`: the Direct Line user id each user's Direct
//! Line tokens are bound to (`[apps.direct_line]`). Written by
//! `crate::direct_line`; deleted with the user's other sign-in state when
//! the user signs out (`signout.rs`).

use super::{Result, Store, with_pool};

/// Records `dl_user_id` as the user's, unless they already have one.
pub(super) const INSERT_DL_USER: &str = "INSERT INTO direct_line_users (app, user_id, dl_user_id, created_at) \
     VALUES ($1, $2, $3, $4) ON CONFLICT (app, user_id) DO NOTHING";
/// The user's Direct Line user id.
pub(super) const DL_USER_OF: &str =
    "SELECT dl_user_id FROM direct_line_users WHERE app = $1 AND user_id = $2";
/// Whose Direct Line user id this is.
pub(super) const USER_OF_DL: &str =
    "SELECT user_id FROM direct_line_users WHERE app = $1 AND dl_user_id = $2";
/// Sign-out: the user's Direct Line user id goes (the next sign-in makes a
/// new one, so a Direct Line token bound to the old one proves nothing).
pub(super) const DELETE_DL_USER: &str =
    "DELETE FROM direct_line_users WHERE app = $1 AND user_id = $2";

impl Store {
    /// The user's Direct Line user id: the one recorded, or `candidate`,
    /// recorded now. Of two replicas racing, both answer the one that won.
    pub async fn direct_line_user(
        &self,
        app: &str,
        user_id: &str,
        candidate: &str,
        now: i64,
    ) -> Result<String> {
        Ok(with_pool!(self, pool => {
            if let Some((id,)) = sqlx::query_as::<_, (String,)>(DL_USER_OF)
                .bind(app)
                .bind(user_id)
                .fetch_optional(pool)
                .await?
            {
                return Ok(id);
            }
            sqlx::query(INSERT_DL_USER)
                .bind(app)
                .bind(user_id)
                .bind(candidate)
                .bind(now)
                .execute(pool)
                .await?;
            let (id,): (String,) = sqlx::query_as(DL_USER_OF)
                .bind(app)
                .bind(user_id)
                .fetch_one(pool)
                .await?;
            id
        }))
    }

    /// The user a Direct Line user id belongs to, if any.
    pub async fn user_of_direct_line(&self, app: &str, dl_user_id: &str) -> Result<Option<String>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, (String,)>(USER_OF_DL)
                .bind(app)
                .bind(dl_user_id)
                .fetch_optional(pool)
                .await?
                .map(|(u,)| u)
        }))
    }
}
