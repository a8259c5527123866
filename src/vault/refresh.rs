//! What a refresh does to a vault row: its lease (taken, kept, given back),
//! its answer (sealed once, written under the lease), its failures (noted,
//! or the refresh token marked as refused) and the ID token kept for later.
//! Each write that records an event wakes the deliverer.

use crate::secret::ExposeSecret as _;

use super::{ID_TOKEN, PENDING_ID_TOKEN, PendingIdToken, Result, TokenSet, Vault, aad};
use crate::domain::{AppId, UserId};
use crate::secret::SecretString;
use crate::store::{LeaseTake, OutboxRow, RefreshedEntry};

/// What a refresher stores, under the lease it refreshed with.
#[derive(Debug)]
pub struct RefreshResult<'a> {
    pub lease_id: &'a str,
    pub tokens: &'a TokenSet,
    /// The refreshed ID token, when it could not be verified yet.
    pub pending_id_token: Option<&'a PendingIdToken>,
    /// The refreshed ID token was invalid: keep the tokens, require a sign-in.
    pub needs_reauth: bool,
    /// The refreshed ID token, once verified (the next `id_token_hint`).
    pub id_token: Option<&'a SecretString>,
    /// Its `sub`.
    pub idp_sub: Option<&'a str>,
    /// Recorded with the write.
    pub event: Option<&'a OutboxRow>,
}

/// A refresh result, sealed for its row: what a refresher holds in memory
/// until the database takes it.
pub struct SealedRefresh {
    app: AppId,
    user_id: UserId,
    lease_id: String,
    access_token: Vec<u8>,
    refresh_token: Option<Vec<u8>>,
    token_type: String,
    scope: String,
    access_expires_at: Option<i64>,
    pending_id_token: Option<Vec<u8>>,
    pending_id_token_at: Option<i64>,
    needs_reauth: bool,
    id_token: Option<Vec<u8>>,
    idp_sub: Option<String>,
    event: Option<OutboxRow>,
}

impl std::fmt::Debug for SealedRefresh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedRefresh")
            .field("app", &self.app)
            .field("user_id", &self.user_id)
            .field("rotated", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// Takes the refresh lease of the row, if it is still at `row_version`
    /// (so the refresh token read is the current one), does not need
    /// re-authentication, and its lease is as `take` says. At most one
    /// replica wins.
    #[allow(clippy::too_many_arguments)]
    pub async fn take_lease(
        &self,
        app: &AppId,
        user_id: &UserId,
        row_version: i64,
        take: &LeaseTake,
        owner: &str,
        lease_id: &str,
        until: i64,
    ) -> Result<bool> {
        Ok(self
            .store
            .take_refresh_lease(
                app.as_str(),
                user_id.as_str(),
                row_version,
                take,
                owner,
                lease_id,
                until,
            )
            .await?)
    }

    /// Extends a live lease; `false` when the row no longer carries it.
    pub async fn extend_lease(
        &self,
        app: &AppId,
        user_id: &UserId,
        lease_id: &str,
        until: i64,
    ) -> Result<bool> {
        Ok(self
            .store
            .extend_refresh_lease(app.as_str(), user_id.as_str(), lease_id, until)
            .await?)
    }

    /// Gives a lease back without writing tokens (the refresh failed
    /// transiently).
    pub async fn release_lease(&self, app: &AppId, user_id: &UserId, lease_id: &str) -> Result<()> {
        Ok(self
            .store
            .release_refresh_lease(app.as_str(), user_id.as_str(), lease_id)
            .await?)
    }

    /// Notes a refresh that failed for a passing reason; once failures have
    /// lasted `after` seconds, records `failing` (once per stretch). Returns
    /// whether it did.
    pub async fn note_refresh_failure(
        &self,
        app: &AppId,
        user_id: &UserId,
        now: i64,
        after: i64,
        failing: Option<&OutboxRow>,
    ) -> Result<bool> {
        let notified = self
            .store
            .note_refresh_failure(app.as_str(), user_id.as_str(), now, after, failing)
            .await?;
        if notified && failing.is_some() {
            self.wake_deliverer();
        }
        Ok(notified)
    }

    /// Marks the entry's refresh token as refused by the IdP, if the row still
    /// carries the lease it was refused under.
    pub async fn mark_needs_reauth(
        &self,
        app: &AppId,
        user_id: &UserId,
        lease_id: &str,
        now: i64,
        reauth_required: Option<&OutboxRow>,
    ) -> Result<bool> {
        self.forget(app, user_id);
        let marked = self
            .store
            .mark_needs_reauth(
                app.as_str(),
                user_id.as_str(),
                lease_id,
                now,
                reauth_required,
            )
            .await?;
        if marked && reauth_required.is_some() {
            self.wake_deliverer();
        }
        Ok(marked)
    }

    /// Settles a pending ID token once checked (see
    /// [`crate::store::Store::settle_pending_id_token`]).
    pub async fn settle_pending_id_token(
        &self,
        app: &AppId,
        user_id: &UserId,
        row_version: i64,
        needs_reauth: bool,
        now: i64,
        reauth_required: Option<&OutboxRow>,
    ) -> Result<bool> {
        self.forget(app, user_id);
        let settled = self
            .store
            .settle_pending_id_token(
                app.as_str(),
                user_id.as_str(),
                row_version,
                needs_reauth,
                now,
                reauth_required,
            )
            .await?;
        if settled && needs_reauth && reauth_required.is_some() {
            self.wake_deliverer();
        }
        Ok(settled)
    }

    /// Stores the result of a refresh: the new access token and (when rotated)
    /// the new refresh token together, before anyone is handed the new access
    /// token — only while the row still carries the refresher's lease.
    /// `false` when it does not (a newer sign-in, a sign-out, or another
    /// replica took the lapsed lease): nothing was written.
    pub async fn save_refreshed(
        &self,
        app: &AppId,
        user_id: &UserId,
        result: &RefreshResult<'_>,
        now: i64,
    ) -> Result<bool> {
        let sealed = self.seal_refreshed(app, user_id, result);
        self.write_refreshed(&sealed, now).await
    }

    /// A refresh result sealed once, to be written (again and again, while
    /// the database is away) by [`Vault::write_refreshed`].
    pub fn seal_refreshed(
        &self,
        app: &AppId,
        user_id: &UserId,
        result: &RefreshResult<'_>,
    ) -> SealedRefresh {
        let (access, refresh) = self.seal_tokens(app, user_id, result.tokens);
        let row = [app.as_str(), user_id.as_str()];
        let pending = result.pending_id_token.map(|p| {
            self.keys.seal(
                &aad(&row, PENDING_ID_TOKEN),
                p.token.expose_secret().as_bytes(),
            )
        });
        let id_token = result.id_token.map(|t| {
            self.keys
                .seal(&aad(&row, ID_TOKEN), t.expose_secret().as_bytes())
        });
        SealedRefresh {
            app: app.clone(),
            user_id: user_id.clone(),
            lease_id: result.lease_id.to_string(),
            access_token: access,
            refresh_token: refresh,
            token_type: result.tokens.token_type.clone(),
            scope: result.tokens.scope.clone(),
            access_expires_at: result.tokens.expires_at,
            pending_id_token: pending,
            pending_id_token_at: result.pending_id_token.map(|p| p.received_at),
            needs_reauth: result.needs_reauth,
            id_token,
            idp_sub: result.idp_sub.map(str::to_string),
            event: result.event.cloned(),
        }
    }

    /// Writes a sealed refresh result; see [`Vault::save_refreshed`].
    pub async fn write_refreshed(&self, sealed: &SealedRefresh, now: i64) -> Result<bool> {
        self.forget(&sealed.app, &sealed.user_id);
        let written = self
            .store
            .write_refreshed(
                RefreshedEntry {
                    app: sealed.app.as_str(),
                    user_id: sealed.user_id.as_str(),
                    lease_id: &sealed.lease_id,
                    access_token: &sealed.access_token,
                    refresh_token: sealed.refresh_token.as_deref(),
                    token_type: &sealed.token_type,
                    scope: &sealed.scope,
                    access_expires_at: sealed.access_expires_at,
                    pending_id_token: sealed.pending_id_token.as_deref(),
                    pending_id_token_at: sealed.pending_id_token_at,
                    needs_reauth: sealed.needs_reauth,
                    id_token: sealed.id_token.as_deref(),
                    idp_sub: sealed.idp_sub.as_deref(),
                    event: sealed.event.as_ref(),
                },
                now,
            )
            .await;
        self.count_write(&written);
        let landed = written?;
        if landed && sealed.event.is_some() {
            self.wake_deliverer();
        }
        Ok(landed)
    }
}
