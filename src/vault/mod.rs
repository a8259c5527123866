//! The token vault: IdP tokens stored encrypted per `(app, user_id)`.
//!
//! This layer turns plaintext tokens into sealed columns and back; the SQL is in
//! `crate::store`. Every secret column is bound to its row and column through
//! the AES-GCM associated data, so a ciphertext copied elsewhere does not open.

pub mod keyring;
pub mod mac;

use crate::secret::ExposeSecret as _;
use std::ops::ControlFlow;
use std::sync::Arc;

pub use keyring::{Aad, VaultKeyRing};

use crate::cache::TtlCache;
use crate::domain::{AppId, ProviderId, UserId};
use crate::secret::SecretString;
use crate::store::{
    Jti, OutboxRow, RefreshedEntry, Resealed, SealedEntry, SignInWrite, SignOutScope,
    SignedOutAtIdp, Store, StoreError, UserSignedOut, VaultRow,
};

pub type Result<T, E = VaultError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("vault entry ({app}, {user_id}) column {column}: {source}")]
    Crypto {
        app: String,
        user_id: String,
        column: &'static str,
        source: keyring::SealError,
    },
    #[error("vault entry ({app}, {user_id}) holds an invalid value in {column}")]
    Corrupt {
        app: String,
        user_id: String,
        column: &'static str,
    },
}

impl VaultError {
    /// The database is unavailable right now (see [`StoreError::is_transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Store(e) if e.is_transient())
    }
}

impl crate::store::Transient for VaultError {
    fn is_transient(&self) -> bool {
        VaultError::is_transient(self)
    }
}

const TABLE: &str = "vault_entries";
const ACCESS: &str = "access_token";
const REFRESH: &str = "refresh_token";
const PENDING_ID_TOKEN: &str = "pending_id_token";
const ID_TOKEN: &str = "id_token";

/// Tokens as the IdP returned them.
#[derive(Debug, Clone)]
pub struct TokenSet {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub token_type: String,
    pub scope: String,
    /// Unix seconds; `None` when the IdP did not send `expires_in`.
    pub expires_at: Option<i64>,
}

/// A decrypted vault entry.
#[derive(Debug, Clone)]
pub struct VaultEntry {
    pub app: AppId,
    pub user_id: UserId,
    pub provider: ProviderId,
    pub tokens: TokenSet,
    pub needs_reauth: bool,
    pub row_version: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The refresh lease, when one is live.
    pub lease: Option<Lease>,
    /// The ID token of a refresh that could not be verified yet.
    pub pending_id_token: Option<PendingIdToken>,
    /// The sign-in generation: set when the entry was created, so a browser
    /// session or key from before a sign-out renews nothing after it.
    pub generation: Option<String>,
}

/// A live refresh lease of a vault row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: Option<String>,
    /// The fencing value; `""` for a lease written without one.
    pub id: String,
    pub until: i64,
}

/// A refreshed ID token kept until it can be verified.
#[derive(Debug, Clone)]
pub struct PendingIdToken {
    pub token: SecretString,
    /// When chatgate received it: it is verified as of that time.
    pub received_at: i64,
}

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

/// What a sign-in's ID token said, kept with the entry.
#[derive(Debug, Default, Clone, Copy)]
pub struct SignInIdentity<'a> {
    /// The IdP's `sub` (the user id may come from another claim).
    pub sub: Option<&'a str>,
    /// The IdP session, when the ID token names one.
    pub sid: Option<&'a str>,
    pub id_token: Option<&'a SecretString>,
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

/// What `vault rekey` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RekeyReport {
    /// Entries looked at.
    pub scanned: u64,
    /// Entries re-encrypted under the newest key.
    pub moved: u64,
    /// Entries that were already under the newest key.
    pub current: u64,
    /// Entries that changed while being re-encrypted (their writer sealed them
    /// under its own key); a second run picks up any that still need it.
    pub changed_meanwhile: u64,
    /// Entries that could not be opened: `(app, user_id, reason)`.
    pub failed: Vec<(String, String, String)>,
}

#[derive(Debug, Clone)]
pub struct Vault {
    store: Store,
    keys: Arc<VaultKeyRing>,
    /// Sealed rows recently read by [`Vault::load_for_read`] (still encrypted).
    read_cache: Arc<TtlCache<(String, String), VaultRow>>,
}

fn aad<'a>(row: &'a [&'a str; 2], column: &'a str) -> Aad<'a> {
    Aad {
        table: TABLE,
        row,
        column,
    }
}

impl Vault {
    pub fn new(store: Store, keys: Arc<VaultKeyRing>) -> Self {
        Self::with_read_cache(store, keys, std::time::Duration::ZERO)
    }

    /// A vault whose [`Vault::load_for_read`] may answer from rows read within
    /// `ttl`. Every write through this vault invalidates its cached row.
    pub fn with_read_cache(
        store: Store,
        keys: Arc<VaultKeyRing>,
        ttl: std::time::Duration,
    ) -> Self {
        Self {
            store,
            keys,
            read_cache: Arc::new(TtlCache::new(ttl)),
        }
    }

    /// A back- or front-channel logout: deletes the vault entries and browser
    /// sessions in `scope` (see [`Store::end_idp_sessions`]) and forgets the
    /// deleted entries in this process's read cache. `None` when `jti` (a
    /// logout token's) was used before.
    pub async fn end_idp_sessions(
        &self,
        scope: SignOutScope<'_>,
        jti: Option<&Jti<'_>>,
        event: impl Fn(&str, &str) -> Option<OutboxRow>,
    ) -> Result<Option<SignedOutAtIdp>> {
        let done = self.store.end_idp_sessions(scope, jti, event).await?;
        for (app, user_id) in done.iter().flat_map(|d| &d.entries) {
            self.forget_row(app, user_id);
        }
        Ok(done)
    }

    fn forget(&self, app: &AppId, user_id: &UserId) {
        self.forget_row(app.as_str(), user_id.as_str());
    }

    /// Drops a row from this process's read cache.
    fn forget_row(&self, app: &str, user_id: &str) {
        self.read_cache
            .remove(&(app.to_string(), user_id.to_string()));
    }

    /// Like [`Vault::load`], but may use a row read within the read-cache TTL:
    /// for the bot API's lookups of tokens that are not about to expire.
    pub async fn load_for_read(&self, app: &AppId, user_id: &UserId) -> Result<Option<VaultEntry>> {
        let key = (app.to_string(), user_id.to_string());
        if let Some(row) = self.read_cache.get(&key) {
            return self.open_row(row).map(Some);
        }
        match self
            .store
            .get_vault_entry(app.as_str(), user_id.as_str())
            .await?
        {
            Some(row) => {
                self.read_cache.insert(key, row.clone());
                self.open_row(row).map(Some)
            }
            None => Ok(None),
        }
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
        Ok(self
            .store
            .mark_needs_reauth(
                app.as_str(),
                user_id.as_str(),
                lease_id,
                now,
                reauth_required,
            )
            .await?)
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
        Ok(self
            .store
            .settle_pending_id_token(
                app.as_str(),
                user_id.as_str(),
                row_version,
                needs_reauth,
                now,
                reauth_required,
            )
            .await?)
    }

    /// The access and refresh token sealed for the row of `(app, user_id)`.
    fn seal_tokens(
        &self,
        app: &AppId,
        user_id: &UserId,
        tokens: &TokenSet,
    ) -> (Vec<u8>, Option<Vec<u8>>) {
        let row = [app.as_str(), user_id.as_str()];
        let access = self.keys.seal(
            &aad(&row, ACCESS),
            tokens.access_token.expose_secret().as_bytes(),
        );
        let refresh = tokens.refresh_token.as_ref().map(|t| {
            self.keys
                .seal(&aad(&row, REFRESH), t.expose_secret().as_bytes())
        });
        (access, refresh)
    }

    /// Stores many users' tokens at once, sealed as [`Vault::save`] would;
    /// users who have an entry already are left alone. For bulk imports (and
    /// the scale benchmark). Returns how many were new.
    pub async fn save_many(
        &self,
        entries: &[(AppId, UserId, ProviderId, TokenSet)],
        now: i64,
    ) -> Result<u64> {
        let rows: Vec<SealedEntry<'_>> = entries
            .iter()
            .map(|(app, user, provider, tokens)| {
                self.sealed_entry(app, user, provider, tokens, &SignInIdentity::default())
            })
            .collect();
        Ok(self.store.insert_vault_entries(&rows, now).await?)
    }

    pub fn keys(&self) -> &VaultKeyRing {
        &self.keys
    }

    /// Stores the tokens of a sign-in, replacing earlier ones. When `tokens` has
    /// no refresh token the stored one is kept.
    pub async fn save(
        &self,
        app: &AppId,
        user_id: &UserId,
        provider: &ProviderId,
        tokens: &TokenSet,
        now: i64,
    ) -> Result<()> {
        self.save_signin(
            app,
            user_id,
            provider,
            tokens,
            &SignInIdentity::default(),
            now,
            None,
        )
        .await
        .map(|_| ())
    }

    /// [`Vault::save`] with what the sign-in's ID token said (for back-channel
    /// logout and IdP sign-out), recording `signed_in` when the user had no
    /// usable entry. Returns whether that was so, and the entry's sign-in
    /// generation.
    #[allow(clippy::too_many_arguments)]
    pub async fn save_signin(
        &self,
        app: &AppId,
        user_id: &UserId,
        provider: &ProviderId,
        tokens: &TokenSet,
        identity: &SignInIdentity<'_>,
        now: i64,
        signed_in: Option<&OutboxRow>,
    ) -> Result<SignInWrite> {
        self.forget(app, user_id);
        let entry = self.sealed_entry(app, user_id, provider, tokens, identity);
        Ok(self.store.upsert_vault_entry(entry, now, signed_in).await?)
    }

    /// The row of a sign-in: its tokens (and ID token) sealed for it.
    fn sealed_entry<'a>(
        &self,
        app: &'a AppId,
        user_id: &'a UserId,
        provider: &'a ProviderId,
        tokens: &'a TokenSet,
        identity: &SignInIdentity<'a>,
    ) -> SealedEntry<'a> {
        let (access, refresh) = self.seal_tokens(app, user_id, tokens);
        let row = [app.as_str(), user_id.as_str()];
        let id_token = identity.id_token.map(|t| {
            self.keys
                .seal(&aad(&row, ID_TOKEN), t.expose_secret().as_bytes())
        });
        SealedEntry {
            app: app.as_str(),
            user_id: user_id.as_str(),
            provider: provider.as_str(),
            access_token: access,
            refresh_token: refresh,
            token_type: &tokens.token_type,
            scope: &tokens.scope,
            access_expires_at: tokens.expires_at,
            idp_sub: identity.sub,
            idp_sid: identity.sid,
            id_token,
            generation: crate::secret::random_token::<16>(),
        }
    }

    /// The last ID token of the entry, for an IdP sign-out's `id_token_hint`.
    pub async fn id_token_hint(
        &self,
        app: &AppId,
        user_id: &UserId,
    ) -> Result<Option<SecretString>> {
        let Some(row) = self
            .store
            .get_vault_entry(app.as_str(), user_id.as_str())
            .await?
        else {
            return Ok(None);
        };
        match &row.id_token {
            Some(sealed) => self.open_column(&row, ID_TOKEN, sealed).map(Some),
            None => Ok(None),
        }
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
        Ok(self
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
            .await?)
    }

    pub async fn load(&self, app: &AppId, user_id: &UserId) -> Result<Option<VaultEntry>> {
        match self
            .store
            .get_vault_entry(app.as_str(), user_id.as_str())
            .await?
        {
            Some(row) => self.open_row(row).map(Some),
            None => Ok(None),
        }
    }

    /// Signs the user out of the app everywhere: deletes the entry, the
    /// browser sessions, key bindings and tickets signed in as the user, in
    /// one transaction, recording `signed_out` with it when there was an entry.
    pub async fn delete(
        &self,
        app: &AppId,
        user_id: &UserId,
        signed_out: Option<&OutboxRow>,
    ) -> Result<UserSignedOut> {
        self.forget(app, user_id);
        Ok(self
            .store
            .delete_vault_entry(app.as_str(), user_id.as_str(), signed_out)
            .await?)
    }

    /// Decrypts a stored row.
    pub fn open_row(&self, row: VaultRow) -> Result<VaultEntry> {
        let access = self.open_column(&row, ACCESS, &row.access_token)?;
        let refresh = match &row.refresh_token {
            Some(sealed) => Some(self.open_column(&row, REFRESH, sealed)?),
            None => None,
        };
        let pending_id_token = match (&row.pending_id_token, row.pending_id_token_at) {
            (Some(sealed), Some(received_at)) => Some(PendingIdToken {
                token: self.open_column(&row, PENDING_ID_TOKEN, sealed)?,
                received_at,
            }),
            _ => None,
        };
        let lease = row.refresh_lease_until.map(|until| Lease {
            owner: row.refresh_lease_owner.clone(),
            id: row.refresh_lease_id.clone().unwrap_or_default(),
            until,
        });
        let corrupt = |column: &'static str| VaultError::Corrupt {
            app: row.app.clone(),
            user_id: row.user_id.clone(),
            column,
        };
        let app = AppId::parse(row.app.clone()).map_err(|_| corrupt("app"))?;
        let user_id = UserId::parse(row.user_id.clone()).map_err(|_| corrupt("user_id"))?;
        let provider = ProviderId::parse(row.provider.clone()).map_err(|_| corrupt("provider"))?;
        Ok(VaultEntry {
            tokens: TokenSet {
                access_token: access,
                refresh_token: refresh,
                token_type: row.token_type,
                scope: row.scope,
                expires_at: row.access_expires_at,
            },
            app,
            user_id,
            provider,
            needs_reauth: row.needs_reauth,
            row_version: row.row_version,
            created_at: row.created_at,
            updated_at: row.updated_at,
            lease,
            pending_id_token,
            generation: row.signin_generation,
        })
    }

    fn open_column(
        &self,
        row: &VaultRow,
        column: &'static str,
        sealed: &[u8],
    ) -> Result<SecretString> {
        let ids = [row.app.as_str(), row.user_id.as_str()];
        let plain = self
            .keys
            .open(&aad(&ids, column), sealed)
            .map_err(|source| VaultError::Crypto {
                app: row.app.clone(),
                user_id: row.user_id.clone(),
                column,
                source,
            })?;
        crate::secret::secret_text(&plain).map_err(|_| VaultError::Corrupt {
            app: row.app.clone(),
            user_id: row.user_id.clone(),
            column,
        })
    }

    /// Re-encrypts every entry that is not under the newest key, `batch_size`
    /// rows per transaction. `after_batch` sees the running report after each
    /// batch and may stop the run (`ControlFlow::Break`); every finished batch is
    /// committed, so an interrupted run loses nothing and the next run continues.
    pub async fn rekey(
        &self,
        batch_size: u32,
        now: i64,
        mut after_batch: impl FnMut(&RekeyReport) -> ControlFlow<()>,
    ) -> Result<RekeyReport> {
        let current = self.keys.current_key_id().as_str();
        let mut report = RekeyReport::default();
        let mut cursor: Option<(String, String)> = None;
        loop {
            let rows = self
                .store
                .vault_entries_after(
                    cursor.as_ref().map(|(a, u)| (a.as_str(), u.as_str())),
                    batch_size.max(1),
                )
                .await?;
            let Some(last) = rows.last() else { break };
            cursor = Some((last.app.clone(), last.user_id.clone()));
            let mut resealed = Vec::new();
            for row in &rows {
                report.scanned += 1;
                let columns = std::iter::once(row.access_token.as_slice())
                    .chain(row.refresh_token.as_deref())
                    .chain(row.pending_id_token.as_deref())
                    .chain(row.id_token.as_deref());
                let all_current = columns
                    .map(VaultKeyRing::sealed_key_id)
                    .all(|id| id.is_ok_and(|id| id == current));
                if all_current {
                    report.current += 1;
                    continue;
                }
                match self.reseal_row(row) {
                    Ok(r) => resealed.push(r),
                    Err(e) => {
                        report
                            .failed
                            .push((row.app.clone(), row.user_id.clone(), e.to_string()))
                    }
                }
            }
            let written = self.store.write_resealed(&resealed, now).await?;
            report.moved += written;
            report.changed_meanwhile += resealed.len() as u64 - written;
            if after_batch(&report).is_break() {
                break;
            }
        }
        Ok(report)
    }

    fn reseal_row(&self, row: &VaultRow) -> Result<Resealed> {
        let ids = [row.app.as_str(), row.user_id.as_str()];
        let reseal = |column: &'static str, sealed: &[u8]| {
            self.keys
                .reseal(&aad(&ids, column), sealed)
                .map_err(|source| VaultError::Crypto {
                    app: row.app.clone(),
                    user_id: row.user_id.clone(),
                    column,
                    source,
                })
        };
        Ok(Resealed {
            app: row.app.clone(),
            user_id: row.user_id.clone(),
            row_version: row.row_version,
            access_token: reseal(ACCESS, &row.access_token)?,
            refresh_token: row
                .refresh_token
                .as_deref()
                .map(|s| reseal(REFRESH, s))
                .transpose()?,
            pending_id_token: row
                .pending_id_token
                .as_deref()
                .map(|s| reseal(PENDING_ID_TOKEN, s))
                .transpose()?,
            id_token: row
                .id_token
                .as_deref()
                .map(|s| reseal(ID_TOKEN, s))
                .transpose()?,
        })
    }
}
