//! SQL of sign-out: a user signed out of an app everywhere (the vault entry,
//! browser sessions, key bindings, tickets and Direct Line user id, in one
//! transaction), and the
//! IdP's logout of a user (`sub`) or an IdP session (`sid`) at one provider,
//! deleted in one transaction with the events that report it.

use super::direct_line::DELETE_DL_USER;
use super::outbox::insert_event;
use super::{BeginWrite as _, OutboxRow, Result, Store, with_pool};

/// Whose sign-ins a logout ends: at `provider`, those of `sub`, of `sid`, or
/// with both, the user's sign-ins in that session (and those whose session
/// chatgate does not know, when the ID token named none).
#[derive(Debug, Clone, Copy)]
pub struct SignOutScope<'a> {
    pub provider: &'a str,
    pub sub: Option<&'a str>,
    pub sid: Option<&'a str>,
}

/// One statement in three forms, by what the logout names: `[sub only,
/// sid only, both]`. Each form is an equality on an index's columns
/// (`(provider, idp_sub)` or `(provider, idp_sid)`): a logout never scans all
/// of a provider's users. Parameters: `$1` provider, then `$2` the sub (or
/// the sid), and with both `$3` the sid.
macro_rules! by_scope {
    ($before:literal, $after:literal) => {
        [
            concat!($before, "provider = $1 AND idp_sub = $2", $after),
            concat!($before, "provider = $1 AND idp_sid = $2", $after),
            concat!(
                $before,
                "provider = $1 AND idp_sub = $2 AND (idp_sid = $3 OR idp_sid IS NULL)",
                $after
            ),
        ]
    };
}

/// The vault entries a logout deletes.
pub(super) const DELETE_ENTRIES: [&str; 3] = by_scope!(
    "DELETE FROM vault_entries WHERE ",
    " RETURNING app, user_id"
);
/// The browser sessions it ends (their users go with them: ON DELETE CASCADE).
pub(super) const DELETE_SESSIONS: [&str; 3] = by_scope!(
    "DELETE FROM browser_sessions WHERE id_hash IN \
     (SELECT id_hash FROM browser_session_users WHERE ",
    ")"
);
/// The browser keys bound to those sign-ins.
pub(super) const DELETE_KEY_BINDINGS: [&str; 3] = by_scope!("DELETE FROM dpop_bindings WHERE ", "");

/// `chatgate users sign-out`: the user's sessions in an app.
pub(super) const END_USER_SESSIONS: &str = "DELETE FROM browser_sessions WHERE id_hash IN \
     (SELECT id_hash FROM browser_session_users WHERE app = $1 AND user_id = $2)";
pub(super) const END_USER_KEYS: &str = "DELETE FROM dpop_bindings WHERE app = $1 AND user_id = $2";

/// Sign-out by the widget, a bot or the CLI.
pub(super) const DELETE_ENTRY: &str = "DELETE FROM vault_entries WHERE app = $1 AND user_id = $2";
/// ... and the user's tickets in the app with it.
pub(super) const DELETE_USER_TICKETS: &str =
    "DELETE FROM session_tickets WHERE app = $1 AND user_id = $2";

/// What a sign-out of a user ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserSignedOut {
    /// There was a vault entry and it is gone.
    pub entry: bool,
    /// Browser sessions ended.
    pub sessions: u64,
    /// Browser keys forgotten.
    pub keys: u64,
}

impl SignOutScope<'_> {
    /// Which form of a [`by_scope!`] statement, and its parameters after the
    /// provider; `None` when neither sub nor sid is named.
    fn form(&self) -> Option<(usize, Vec<&str>)> {
        match (self.sub, self.sid) {
            (Some(sub), None) => Some((0, vec![sub])),
            (None, Some(sid)) => Some((1, vec![sid])),
            (Some(sub), Some(sid)) => Some((2, vec![sub, sid])),
            (None, None) => None,
        }
    }
}

/// Binds `$1` = provider and the scope's other parameters.
macro_rules! bind_scope {
    ($query:expr, $scope:expr, $params:expr) => {{
        let mut query = $query.bind($scope.provider);
        for value in $params {
            query = query.bind(*value);
        }
        query
    }};
}

/// A single-use token id for the replay cache (`host_token_jtis`).
#[derive(Debug, Clone, Copy)]
pub struct Jti<'a> {
    /// Keeps ids of different issuers and token kinds apart.
    pub scope: &'a str,
    pub id: &'a str,
    /// Kept until then (swept afterwards).
    pub expires_at: i64,
}

/// What a logout deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignedOutAtIdp {
    /// `(app, user_id)` of the vault entries deleted.
    pub entries: Vec<(String, String)>,
    /// Browser sessions ended.
    pub sessions: u64,
}

impl Store {
    /// Deletes the matching vault entries and browser sessions, and records
    /// `event(app, user_id)` for every entry deleted, in one transaction with
    /// the logout token's id in the replay cache (a back-channel logout; a
    /// front-channel one has none, and is idempotent anyway). `None` (and
    /// nothing done) when that id was used before.
    pub async fn end_idp_sessions(
        &self,
        scope: SignOutScope<'_>,
        jti: Option<&Jti<'_>>,
        event: impl Fn(&str, &str) -> Option<OutboxRow>,
    ) -> Result<Option<SignedOutAtIdp>> {
        // Without sub or sid nothing would be selective: refuse to match all.
        let Some((form, params)) = scope.form() else {
            return Ok(Some(SignedOutAtIdp::default()));
        };
        let logged_out = with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            if let Some(jti) = jti {
                let fresh = sqlx::query(
                    "INSERT INTO host_token_jtis (app, jti, expires_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (app, jti) DO NOTHING",
                )
                .bind(jti.scope)
                .bind(jti.id)
                .bind(jti.expires_at)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1;
                if !fresh {
                    return Ok(None);
                }
            }
            let entries: Vec<(String, String)> =
                bind_scope!(sqlx::query_as(DELETE_ENTRIES[form]), scope, &params)
                    .fetch_all(&mut *tx)
                    .await?;
            for (app, user_id) in &entries {
                if let Some(row) = event(app, user_id) {
                    insert_event!(&mut *tx, &row);
                }
            }
            for (app, user_id) in &entries {
                for sql in [DELETE_USER_TICKETS, DELETE_DL_USER] {
                    sqlx::query(sql)
                        .bind(app)
                        .bind(user_id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            let sessions = bind_scope!(sqlx::query(DELETE_SESSIONS[form]), scope, &params)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // Keys bound to those sign-ins renew no more.
            bind_scope!(sqlx::query(DELETE_KEY_BINDINGS[form]), scope, &params)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            SignedOutAtIdp { entries, sessions }
        });
        Ok(Some(logged_out))
    }

    /// Signs the user out of `app` everywhere, in one transaction: deletes
    /// the entry, ends every browser session signed in as them, forgets every
    /// browser key bound to them and every ticket not yet redeemed, and
    /// records `signed_out` when there was an entry.
    pub async fn delete_vault_entry(
        &self,
        app: &str,
        user_id: &str,
        signed_out: Option<&OutboxRow>,
    ) -> Result<UserSignedOut> {
        Ok(with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let mut counts = [0; 5];
            let statements = [
                DELETE_ENTRY,
                END_USER_SESSIONS,
                END_USER_KEYS,
                DELETE_USER_TICKETS,
                DELETE_DL_USER,
            ];
            for (n, sql) in counts.iter_mut().zip(statements) {
                *n = sqlx::query(sql)
                    .bind(app)
                    .bind(user_id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            }
            if counts[0] > 0 && let Some(event) = signed_out {
                insert_event!(&mut *tx, event);
            }
            tx.commit().await?;
            UserSignedOut {
                entry: counts[0] > 0,
                sessions: counts[1],
                keys: counts[2],
            }
        }))
    }

    /// Ends every browser session signed in as `user_id` in `app`, and
    /// forgets the browser keys bound to them.
    pub async fn end_user_sessions(&self, app: &str, user_id: &str) -> Result<u64> {
        Ok(with_pool!(self, pool => {
            let mut tx = pool.begin_write().await?;
            let n = sqlx::query(END_USER_SESSIONS)
            .bind(app)
            .bind(user_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(END_USER_KEYS)
                .bind(app)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n
        }))
    }
}
