//! SQL for `vault_entries`. Secret columns arrive here already sealed.

use std::fmt;

use super::audit::insert_audit;
use super::outbox::insert_event;
use super::{AuditEvent, BeginWrite as _, OutboxRow, Result, Store, with_pool};

/// A vault row as stored: secret columns are sealed blobs.
#[derive(Clone, sqlx::FromRow)]
pub struct VaultRow {
    pub app: String,
    pub user_id: String,
    pub provider: String,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub token_type: String,
    pub scope: String,
    pub access_expires_at: Option<i64>,
    pub needs_reauth: bool,
    pub row_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The refresh lease: live while `refresh_lease_until` is set.
    pub refresh_lease_owner: Option<String>,
    pub refresh_lease_id: Option<String>,
    pub refresh_lease_until: Option<i64>,
    /// Sealed ID token of a refresh that could not be verified yet.
    pub pending_id_token: Option<Vec<u8>>,
    pub pending_id_token_at: Option<i64>,
    /// The IdP's `sub` and session of the sign-in (back-channel logout).
    pub idp_sub: Option<String>,
    pub idp_sid: Option<String>,
    /// Sealed: the last ID token (the `id_token_hint` of an IdP sign-out).
    pub id_token: Option<Vec<u8>>,
    /// Set when the entry was created; sessions and key bindings renew only
    /// while it is unchanged (a sign-out and a new sign-in change it).
    pub signin_generation: Option<String>,
}

impl fmt::Debug for VaultRow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultRow")
            .field("app", &self.app)
            .field("user_id", &self.user_id)
            .field("provider", &self.provider)
            .field("has_refresh_token", &self.refresh_token.is_some())
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .field("access_expires_at", &self.access_expires_at)
            .field("needs_reauth", &self.needs_reauth)
            .field("row_version", &self.row_version)
            .field("refresh_lease_owner", &self.refresh_lease_owner)
            .field("refresh_lease_until", &self.refresh_lease_until)
            .field("has_pending_id_token", &self.pending_id_token.is_some())
            .finish_non_exhaustive()
    }
}

/// What a sign-in writes.
#[derive(Debug)]
pub struct SealedEntry<'a> {
    pub app: &'a str,
    pub user_id: &'a str,
    pub provider: &'a str,
    pub access_token: Vec<u8>,
    /// `None` keeps the stored refresh token (IdPs often omit it on later sign-ins),
    /// unless that one was refused by the IdP or came from another provider.
    pub refresh_token: Option<Vec<u8>>,
    pub token_type: &'a str,
    pub scope: &'a str,
    pub access_expires_at: Option<i64>,
    pub idp_sub: Option<&'a str>,
    pub idp_sid: Option<&'a str>,
    /// Sealed.
    pub id_token: Option<Vec<u8>>,
    /// The generation the entry gets if this creates it (random).
    pub generation: String,
}

/// What a sign-in's write found and left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInWrite {
    /// The user had no usable entry before (new, or refused by the IdP).
    pub fresh: bool,
    /// The entry's sign-in generation after the write.
    pub generation: Option<String>,
}

/// What a sign-in's write records beside the tokens, in its transaction: they
/// commit together or not at all.
#[derive(Debug, Clone, Copy, Default)]
pub struct SignInRecords<'a> {
    /// The event of a sign-in, recorded only when the user had no usable
    /// entry (new, or refused by the IdP).
    pub signed_in: Option<&'a OutboxRow>,
    /// The sign-in's audit row, recorded always.
    pub audit: Option<AuditEvent<'a>>,
}

/// A re-encrypted row for `vault rekey`, written only if the row is unchanged.
#[derive(Debug)]
pub struct Resealed {
    pub app: String,
    pub user_id: String,
    pub row_version: i64,
    pub access_token: Vec<u8>,
    pub refresh_token: Option<Vec<u8>>,
    pub pending_id_token: Option<Vec<u8>>,
    pub id_token: Option<Vec<u8>>,
}

/// The columns of [`VaultRow`], for `concat!`.
macro_rules! vault_columns {
    () => {
        "app, user_id, provider, access_token, refresh_token, token_type, scope, \
         access_expires_at, needs_reauth, row_version, created_at, updated_at, \
         refresh_lease_owner, refresh_lease_id, refresh_lease_until, pending_id_token, \
         pending_id_token_at, idp_sub, idp_sid, id_token, signin_generation"
    };
}

/// Every bot lookup and renewal reads the entry by its key.
pub(super) const GET_ENTRY: &str = concat!(
    "SELECT ",
    vault_columns!(),
    " FROM vault_entries WHERE app = $1 AND user_id = $2"
);
/// A sign-in: was there a usable entry before?
pub(super) const UPSERT_BEFORE: &str =
    "SELECT needs_reauth FROM vault_entries WHERE app = $1 AND user_id = $2";

/// The refresh of an expired token takes the row's lease.
pub(super) const TAKE_LEASE: &str = "UPDATE vault_entries SET refresh_lease_owner = $1, refresh_lease_id = $2, \
               refresh_lease_until = $3 \
             WHERE app = $4 AND user_id = $5 AND row_version = $6 AND needs_reauth = FALSE \
               AND ((refresh_lease_until IS NULL AND $7) \
                 OR (COALESCE(refresh_lease_id, '') = $8 AND refresh_lease_until = $9))";

/// The refreshed tokens, fenced by the lease.
pub(super) const WRITE_REFRESHED: &str = "UPDATE vault_entries SET access_token = $1, \
               refresh_token = COALESCE($2, refresh_token), token_type = $3, scope = $4, \
               access_expires_at = $5, needs_reauth = $6, pending_id_token = $7, \
               pending_id_token_at = $8, row_version = row_version + 1, updated_at = $9, \
               id_token = COALESCE($10, id_token), idp_sub = COALESCE($14, idp_sub), \
               refresh_failing_since = NULL, refresh_failing_notified = FALSE, \
               refresh_lease_owner = NULL, refresh_lease_until = NULL \
             WHERE app = $11 AND user_id = $12 AND refresh_lease_id = $13";

/// Rows per statement of a bulk insert (15 parameters each: well within
/// SQLite's 32 766 and PostgreSQL's 65 535).
pub const BULK_ROWS: usize = 1000;

impl Store {
    /// Inserts or replaces the tokens of `(app, user_id)` in one statement.
    ///
    /// A sign-in that brings a refresh token starts a newer grant: it ends any
    /// refresh in flight (the lease is cleared, so that refresher's write does
    /// not land and nothing of the older grant is used again). A sign-in without
    /// one keeps the stored refresh token and leaves a refresh in flight alone,
    /// so a rotated refresh token is still stored when it arrives.
    ///
    /// `records` (the sign-in's event and audit row) are written in the same
    /// transaction. A new entry gets `entry.generation`; an existing one
    /// keeps its own.
    pub async fn upsert_vault_entry(
        &self,
        entry: SealedEntry<'_>,
        now: i64,
        records: SignInRecords<'_>,
    ) -> Result<SignInWrite> {
        const SQL: &str = "INSERT INTO vault_entries (app, user_id, provider, access_token, \
               refresh_token, token_type, scope, access_expires_at, needs_reauth, row_version, \
               created_at, updated_at, idp_sub, idp_sid, id_token, signin_generation) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, FALSE, 1, $9, $9, $10, $11, $12, $13) \
             ON CONFLICT (app, user_id) DO UPDATE SET \
               idp_sub = excluded.idp_sub, idp_sid = excluded.idp_sid, \
               id_token = COALESCE(excluded.id_token, vault_entries.id_token), \
               refresh_failing_since = NULL, refresh_failing_notified = FALSE, \
               access_token = excluded.access_token, \
               refresh_token = CASE \
                 WHEN excluded.refresh_token IS NOT NULL THEN excluded.refresh_token \
                 WHEN vault_entries.needs_reauth OR vault_entries.provider <> excluded.provider THEN NULL \
                 ELSE vault_entries.refresh_token END, \
               provider = excluded.provider, \
               token_type = excluded.token_type, \
               scope = excluded.scope, \
               access_expires_at = excluded.access_expires_at, \
               needs_reauth = FALSE, \
               row_version = vault_entries.row_version + 1, \
               updated_at = excluded.updated_at, \
               pending_id_token = NULL, pending_id_token_at = NULL, \
               refresh_lease_owner = CASE WHEN excluded.refresh_token IS NOT NULL \
                   OR vault_entries.provider <> excluded.provider THEN NULL \
                 ELSE vault_entries.refresh_lease_owner END, \
               refresh_lease_id = CASE WHEN excluded.refresh_token IS NOT NULL \
                   OR vault_entries.provider <> excluded.provider THEN NULL \
                 ELSE vault_entries.refresh_lease_id END, \
               refresh_lease_until = CASE WHEN excluded.refresh_token IS NOT NULL \
                   OR vault_entries.provider <> excluded.provider THEN NULL \
                 ELSE vault_entries.refresh_lease_until END \
             RETURNING signin_generation";
        let fresh = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let before: Option<bool> = sqlx::query_scalar(UPSERT_BEFORE)
                .bind(entry.app)
                .bind(entry.user_id)
                .fetch_optional(&mut *tx)
                .await?;
            let generation: Option<String> = sqlx::query_scalar(SQL)
                .bind(entry.app)
                .bind(entry.user_id)
                .bind(entry.provider)
                .bind(&entry.access_token)
                .bind(&entry.refresh_token)
                .bind(entry.token_type)
                .bind(entry.scope)
                .bind(entry.access_expires_at)
                .bind(now)
                .bind(entry.idp_sub)
                .bind(entry.idp_sid)
                .bind(&entry.id_token)
                .bind(&entry.generation)
                .fetch_one(&mut *tx)
                .await?;
            let fresh = before.is_none_or(|needs_reauth| needs_reauth);
            if fresh && let Some(event) = records.signed_in {
                insert_event!(&mut *tx, event);
            }
            if let Some(event) = &records.audit {
                insert_audit!(&mut *tx, event, now);
            }
            tx.commit().await?;
            SignInWrite { fresh, generation }
        });
        Ok(fresh)
    }

    /// Inserts many new entries at once (a bulk import; the scale benchmark
    /// seeds a million users with it): multi-row `INSERT`s of
    /// [`BULK_ROWS`] rows, each batch one transaction. An entry that exists
    /// already is left as it is.
    pub async fn insert_vault_entries(&self, entries: &[SealedEntry<'_>], now: i64) -> Result<u64> {
        let mut inserted = 0;
        for batch in entries.chunks(BULK_ROWS) {
            inserted += with_pool!(self, pool => {
                let mut tx = pool.begin_write().await?;
                let mut insert = sqlx::QueryBuilder::new(
                    "INSERT INTO vault_entries (app, user_id, provider, access_token, \
                       refresh_token, token_type, scope, access_expires_at, needs_reauth, \
                       row_version, created_at, updated_at, idp_sub, idp_sid, id_token, \
                       signin_generation) ",
                );
                insert.push_values(batch, |mut row, e| {
                    row.push_bind(e.app)
                        .push_bind(e.user_id)
                        .push_bind(e.provider)
                        .push_bind(&e.access_token)
                        .push_bind(&e.refresh_token)
                        .push_bind(e.token_type)
                        .push_bind(e.scope)
                        .push_bind(e.access_expires_at)
                        .push_bind(false)
                        .push_bind(1_i64)
                        .push_bind(now)
                        .push_bind(now)
                        .push_bind(e.idp_sub)
                        .push_bind(e.idp_sid)
                        .push_bind(&e.id_token)
                        .push_bind(&e.generation);
                });
                insert.push(" ON CONFLICT (app, user_id) DO NOTHING");
                let n = insert.build().execute(&mut *tx).await?.rows_affected();
                tx.commit().await?;
                n
            });
        }
        Ok(inserted)
    }

    /// Sets `idp_sub` from the user id (`{provider}:{sub}`) where it is
    /// missing, for a provider whose user ids are the IdP's `sub`. Once,
    /// after migration 7.
    pub async fn backfill_idp_sub(&self, provider: &str) -> Result<u64> {
        const SQL: &str = "UPDATE vault_entries SET idp_sub = substr(user_id, length(provider) + 2) \
             WHERE provider = $1 AND idp_sub IS NULL AND user_id LIKE provider || ':%'";
        Ok(with_pool!(self, pool => {
            sqlx::query(SQL).bind(provider).execute(pool).await?.rows_affected()
        }))
    }

    pub async fn get_vault_entry(&self, app: &str, user_id: &str) -> Result<Option<VaultRow>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, VaultRow>(GET_ENTRY).bind(app).bind(user_id).fetch_optional(pool).await?
        }))
    }

    /// Up to `limit` rows after `after` (exclusive) in `(app, user_id)` order, for
    /// scanning the whole vault in batches.
    pub async fn vault_entries_after(
        &self,
        after: Option<(&str, &str)>,
        limit: u32,
    ) -> Result<Vec<VaultRow>> {
        let (app, user) = after.unwrap_or(("", ""));
        const SQL: &str = concat!(
            "SELECT ",
            vault_columns!(),
            " FROM vault_entries WHERE (app, user_id) > ($1, $2) ORDER BY app, user_id LIMIT $3"
        );
        Ok(with_pool!(self, pool => {
            sqlx::query_as::<_, VaultRow>(SQL)
                .bind(app)
                .bind(user)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        }))
    }

    /// Writes re-encrypted columns in one transaction. A row that changed since
    /// it was read (its `row_version` moved on) is left alone: the writer that
    /// changed it sealed it afresh. The refresh lease is not touched, so a
    /// refresh in flight stores its result whether or not rekey came first.
    /// Returns how many rows were written.
    pub async fn write_resealed(&self, rows: &[Resealed], now: i64) -> Result<u64> {
        const SQL: &str = "UPDATE vault_entries SET access_token = $1, refresh_token = $2, \
               pending_id_token = $3, id_token = $4, row_version = row_version + 1, updated_at = $5 \
             WHERE app = $6 AND user_id = $7 AND row_version = $8";
        let mut written = 0;
        with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            for row in rows {
                written += sqlx::query(SQL)
                    .bind(&row.access_token)
                    .bind(&row.refresh_token)
                    .bind(&row.pending_id_token)
                    .bind(&row.id_token)
                    .bind(now)
                    .bind(&row.app)
                    .bind(&row.user_id)
                    .bind(row.row_version)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            tx.commit().await?;
        });
        Ok(written)
    }
}

/// New tokens from a refresh, sealed.
#[derive(Debug)]
pub struct RefreshedEntry<'a> {
    pub app: &'a str,
    pub user_id: &'a str,
    /// The lease the refresh was made under: the write lands only while the
    /// row still carries it.
    pub lease_id: &'a str,
    pub access_token: &'a [u8],
    /// `None` keeps the stored refresh token (the IdP did not rotate it).
    pub refresh_token: Option<&'a [u8]>,
    pub token_type: &'a str,
    pub scope: &'a str,
    pub access_expires_at: Option<i64>,
    /// The refreshed ID token, sealed, when it could not be verified yet.
    pub pending_id_token: Option<&'a [u8]>,
    pub pending_id_token_at: Option<i64>,
    /// The refreshed ID token was invalid: keep the tokens (the only live
    /// refresh token), but the user must sign in again.
    pub needs_reauth: bool,
    /// The refreshed ID token, sealed, once verified (a later `id_token_hint`).
    pub id_token: Option<&'a [u8]>,
    /// Its `sub` (back-channel logout finds the entry by it); `None` keeps
    /// the stored one.
    pub idp_sub: Option<&'a str>,
    /// Recorded with the write (`user.reauth_required` when `needs_reauth`).
    pub event: Option<&'a OutboxRow>,
}

/// Which lease a refresher may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseTake {
    /// A free lease (`refresh_lease_until` is NULL).
    Free,
    /// A lapsed lease whose holder was seen to leave it untouched: only if it
    /// is still exactly this one (`id` is `""` for a lease without an id).
    Stale { id: String, until: i64 },
}

impl Store {
    /// Takes the refresh lease of a row, if the row is still at `row_version`
    /// (so the refresh token read is the current one), does not need
    /// re-authentication, and its lease is as `take` says. At most one replica
    /// wins.
    #[allow(clippy::too_many_arguments)]
    pub async fn take_refresh_lease(
        &self,
        app: &str,
        user_id: &str,
        row_version: i64,
        take: &LeaseTake,
        owner: &str,
        lease_id: &str,
        until: i64,
    ) -> Result<bool> {
        let (free, stale_id, stale_until) = match take {
            LeaseTake::Free => (true, "", i64::MIN),
            LeaseTake::Stale { id, until } => (false, id.as_str(), *until),
        };
        let n = with_pool!(self, pool => {
            sqlx::query(TAKE_LEASE)
                .bind(owner)
                .bind(lease_id)
                .bind(until)
                .bind(app)
                .bind(user_id)
                .bind(row_version)
                .bind(free)
                .bind(stale_id)
                .bind(stale_until)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// Extends a live lease; `false` when the row no longer carries it.
    pub async fn extend_refresh_lease(
        &self,
        app: &str,
        user_id: &str,
        lease_id: &str,
        until: i64,
    ) -> Result<bool> {
        let n = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE vault_entries SET refresh_lease_until = $1 \
                 WHERE app = $2 AND user_id = $3 AND refresh_lease_id = $4 \
                   AND refresh_lease_until IS NOT NULL",
            )
            .bind(until)
            .bind(app)
            .bind(user_id)
            .bind(lease_id)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Gives a lease back without writing tokens (the refresh failed transiently).
    pub async fn release_refresh_lease(
        &self,
        app: &str,
        user_id: &str,
        lease_id: &str,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE vault_entries SET refresh_lease_owner = NULL, refresh_lease_id = NULL, \
                   refresh_lease_until = NULL \
                 WHERE app = $1 AND user_id = $2 AND refresh_lease_id = $3",
            )
            .bind(app)
            .bind(user_id)
            .bind(lease_id)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Stores refreshed tokens — the new access token and, when the IdP rotated
    /// it, the new refresh token, in one statement — and ends the lease, if the
    /// row still carries the lease they were made under. The row keeps the
    /// lease id, so repeating the write after an unclear failure (a connection
    /// lost before the answer) writes the same again. Returns whether it landed.
    pub async fn write_refreshed(&self, entry: RefreshedEntry<'_>, now: i64) -> Result<bool> {
        macro_rules! update {
            ($executor:expr) => {
                sqlx::query(WRITE_REFRESHED)
                    .bind(entry.access_token)
                    .bind(entry.refresh_token)
                    .bind(entry.token_type)
                    .bind(entry.scope)
                    .bind(entry.access_expires_at)
                    .bind(entry.needs_reauth)
                    .bind(entry.pending_id_token)
                    .bind(entry.pending_id_token_at)
                    .bind(now)
                    .bind(entry.id_token)
                    .bind(entry.app)
                    .bind(entry.user_id)
                    .bind(entry.lease_id)
                    .bind(entry.idp_sub)
                    .execute($executor)
                    .await?
                    .rows_affected()
            };
        }
        // The common case is one statement: this write is the end of the
        // window in which a rotated refresh token exists only in memory.
        let n = with_pool!(self, pool => match entry.event {
            None => update!(pool),
            Some(event) => {
                let mut tx = pool.begin_write().await?;
                let n = update!(&mut *tx);
                if n == 1 {
                    insert_event!(&mut *tx, event);
                }
                tx.commit().await?;
                n
            }
        });
        Ok(n == 1)
    }

    /// Notes a refresh that failed for a passing reason (IdP unreachable).
    /// When the failures have lasted `after` and `failing` was not recorded
    /// for this stretch yet, records it (in the same transaction). Returns
    /// whether it did.
    pub async fn note_refresh_failure(
        &self,
        app: &str,
        user_id: &str,
        now: i64,
        after: i64,
        failing: Option<&OutboxRow>,
    ) -> Result<bool> {
        let notified = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            sqlx::query(
                "UPDATE vault_entries SET refresh_failing_since = COALESCE(refresh_failing_since, $1) \
                 WHERE app = $2 AND user_id = $3",
            )
            .bind(now)
            .bind(app)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
            let n = sqlx::query(
                "UPDATE vault_entries SET refresh_failing_notified = TRUE \
                 WHERE app = $1 AND user_id = $2 AND refresh_failing_since <= $3 \
                   AND refresh_failing_notified = FALSE",
            )
            .bind(app)
            .bind(user_id)
            .bind(now - after)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 && let Some(event) = failing {
                insert_event!(&mut *tx, event);
            }
            tx.commit().await?;
            n == 1
        });
        Ok(notified)
    }

    /// Marks the row's refresh token as refused by the IdP, if the row still
    /// carries the lease under which it was refused, and ends the lease.
    pub async fn mark_needs_reauth(
        &self,
        app: &str,
        user_id: &str,
        lease_id: &str,
        now: i64,
        reauth_required: Option<&OutboxRow>,
    ) -> Result<bool> {
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                "UPDATE vault_entries SET needs_reauth = TRUE, row_version = row_version + 1, \
                   updated_at = $1, refresh_lease_owner = NULL, refresh_lease_until = NULL \
                 WHERE app = $2 AND user_id = $3 AND refresh_lease_id = $4",
            )
            .bind(now)
            .bind(app)
            .bind(user_id)
            .bind(lease_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 && let Some(event) = reauth_required {
                insert_event!(&mut *tx, event);
            }
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }

    /// Settles a pending ID token that has now been checked: cleared when it
    /// was about the same user, else the entry needs re-authentication. Only if
    /// the row is still at `row_version`.
    pub async fn settle_pending_id_token(
        &self,
        app: &str,
        user_id: &str,
        row_version: i64,
        needs_reauth: bool,
        now: i64,
        reauth_required: Option<&OutboxRow>,
    ) -> Result<bool> {
        let n = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(
                "UPDATE vault_entries SET pending_id_token = NULL, pending_id_token_at = NULL, \
                   needs_reauth = (needs_reauth OR $1), row_version = row_version + 1, updated_at = $2 \
                 WHERE app = $3 AND user_id = $4 AND row_version = $5",
            )
            .bind(needs_reauth)
            .bind(now)
            .bind(app)
            .bind(user_id)
            .bind(row_version)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 1 && needs_reauth && let Some(event) = reauth_required {
                insert_event!(&mut *tx, event);
            }
            tx.commit().await?;
            n
        });
        Ok(n == 1)
    }
}
