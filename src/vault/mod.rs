//! The token vault: IdP tokens stored encrypted per `(app, user_id)`.
//!
//! This layer turns plaintext tokens into sealed columns and back; the SQL is in
//! `crate::store`. Every secret column is bound to its row and column through
//! the AES-GCM associated data, so a ciphertext copied elsewhere does not open.
//!
//! [`Vault`] is the one owner of a `vault_entries` row: every read and write
//! of one — sign-in, refresh (`refresh.rs`), status, sign-out of every kind,
//! rekey (`rekey.rs`) — goes through it; it counts its operations
//! (`chatgate_vault_operations_total`) and wakes the event deliverer when a
//! write recorded an event. Nothing above this module calls `store::vault`.

pub mod keyring;
pub mod mac;
mod refresh;
mod rekey;
mod types;

use crate::secret::ExposeSecret as _;
use std::sync::Arc;

pub use crate::store::{LeaseTake, SignInRecords};
pub use keyring::{Aad, VaultKeyRing};
pub use refresh::{RefreshResult, SealedRefresh};
pub use rekey::RekeyReport;
pub use types::{AccessRead, Lease, PendingIdToken, SignInIdentity, TokenSet, VaultEntry};

use crate::cache::TtlCache;
use crate::domain::{AppId, ProviderId, UserId};
use crate::events::deliver::Deliverer;
use crate::metrics::{Metrics, VaultOp, VaultOutcome};
use crate::secret::SecretString;
use crate::store::{
    Jti, OutboxRow, SealedEntry, SignInWrite, SignOutScope, SignedOutAtIdp, Store, StoreError,
    UserSignedOut, VaultRow,
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

#[derive(Debug, Clone)]
pub struct Vault {
    store: Store,
    keys: Arc<VaultKeyRing>,
    /// Sealed rows recently read by [`Vault::read_access`] (still encrypted).
    read_cache: Arc<TtlCache<(String, String), Arc<VaultRow>>>,
    metrics: Arc<Metrics>,
    /// Told when a write recorded an event (`None`: no app takes events).
    deliverer: Option<Deliverer>,
}

/// A grant's state as a status read sees it: no secret is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantStatus {
    pub needs_reauth: bool,
    pub access_expires_at: Option<i64>,
    pub scope: String,
    pub updated_at: i64,
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

    /// A vault whose [`Vault::read_access`] may answer from rows read within
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
            metrics: Arc::new(Metrics::new()),
            deliverer: None,
        }
    }

    /// Counts this vault's operations in `metrics` (the server's registry)
    /// and wakes `deliverer` when a write recorded an event.
    pub fn reporting(mut self, metrics: Arc<Metrics>, deliverer: Option<Deliverer>) -> Self {
        self.metrics = metrics;
        self.deliverer = deliverer;
        self
    }

    /// An event was recorded: deliver it now rather than at the next poll.
    fn wake_deliverer(&self) {
        if let Some(d) = &self.deliverer {
            d.wake();
        }
    }

    /// Counts a read: found, absent or failed.
    fn count_read<T>(&self, read: &Result<Option<T>>) {
        self.metrics.vault_op(
            VaultOp::Read,
            match read {
                Ok(Some(_)) => VaultOutcome::Ok,
                Ok(None) => VaultOutcome::Absent,
                Err(_) => VaultOutcome::Error,
            },
        );
    }

    /// Counts a write that landed or failed.
    fn count_write<T>(&self, write: &std::result::Result<T, StoreError>) {
        self.metrics.vault_op(
            VaultOp::Write,
            if write.is_ok() {
                VaultOutcome::Ok
            } else {
                VaultOutcome::Error
            },
        );
    }

    /// The grant's status, without opening a secret (`None`: no entry).
    pub async fn status(&self, app: &AppId, user_id: &UserId) -> Result<Option<GrantStatus>> {
        let read = self
            .store
            .get_vault_entry(app.as_str(), user_id.as_str())
            .await
            .map_err(VaultError::from);
        self.count_read(&read);
        Ok(read?.map(|row| GrantStatus {
            needs_reauth: row.needs_reauth,
            access_expires_at: row.access_expires_at,
            scope: row.scope,
            updated_at: row.updated_at,
        }))
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
            self.metrics.vault_op(VaultOp::Delete, VaultOutcome::Ok);
        }
        if done.as_ref().is_some_and(|d| !d.entries.is_empty()) {
            self.wake_deliverer();
        }
        Ok(done)
    }

    fn forget(&self, app: &AppId, user_id: &UserId) {
        self.forget_row(app.as_str(), user_id.as_str());
    }

    /// Drops a row from this process's read cache.
    fn forget_row(&self, app: &str, user_id: &str) {
        self.read_cache
            .remove(&(app.to_owned(), user_id.to_owned()));
    }

    /// The access token of `(app, user_id)` and what decides whether it may
    /// be handed out, from a row read within the read-cache TTL if there is
    /// one: for the bot API's lookups of tokens that are not about to expire.
    /// Only the access token is opened.
    pub async fn read_access(&self, app: &AppId, user_id: &UserId) -> Result<Option<AccessRead>> {
        let key = (app.as_str().to_owned(), user_id.as_str().to_owned());
        let row = match self.read_cache.get(&key) {
            Some(row) => Ok(Some(row)),
            None => match self
                .store
                .get_vault_entry(app.as_str(), user_id.as_str())
                .await
            {
                Ok(Some(row)) => {
                    let row = Arc::new(row);
                    self.read_cache.insert(key, row.clone());
                    Ok(Some(row))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(VaultError::from(e)),
            },
        };
        let read = row.and_then(|row| match row {
            Some(row) => Ok(Some(AccessRead {
                access_token: self.open_column(&row, ACCESS, &row.access_token)?,
                token_type: row.token_type.clone(),
                scope: row.scope.clone(),
                expires_at: row.access_expires_at,
                needs_reauth: row.needs_reauth,
                pending_id_token: row.pending_id_token.is_some()
                    && row.pending_id_token_at.is_some(),
            })),
            None => Ok(None),
        });
        self.count_read(&read);
        read
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
            SignInRecords::default(),
        )
        .await
        .map(|_| ())
    }

    /// [`Vault::save`] with what the sign-in's ID token said (for back-channel
    /// logout and IdP sign-out), writing `records` (its event, when the user
    /// had no usable entry, and its audit row) in the same transaction.
    /// Returns whether the user had none, and the entry's sign-in generation.
    #[allow(clippy::too_many_arguments)]
    pub async fn save_signin(
        &self,
        app: &AppId,
        user_id: &UserId,
        provider: &ProviderId,
        tokens: &TokenSet,
        identity: &SignInIdentity<'_>,
        now: i64,
        records: SignInRecords<'_>,
    ) -> Result<SignInWrite> {
        self.forget(app, user_id);
        let entry = self.sealed_entry(app, user_id, provider, tokens, identity);
        let written = self.store.upsert_vault_entry(entry, now, records).await;
        self.count_write(&written);
        let written = written?;
        if written.fresh && records.signed_in.is_some() {
            self.wake_deliverer();
        }
        Ok(written)
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

    /// Fills in the IdP `sub` of `provider`'s entries stored before it was
    /// kept, where the user id is the `sub` (a one-time step after migration
    /// 7). Returns how many entries it filled in.
    pub async fn backfill_idp_sub(
        &self,
        provider: &ProviderId,
    ) -> std::result::Result<u64, StoreError> {
        self.store.backfill_idp_sub(provider.as_str()).await
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

    pub async fn load(&self, app: &AppId, user_id: &UserId) -> Result<Option<VaultEntry>> {
        let read = match self
            .store
            .get_vault_entry(app.as_str(), user_id.as_str())
            .await
        {
            Ok(Some(row)) => self.open_row(row).map(Some),
            Ok(None) => Ok(None),
            Err(e) => Err(e.into()),
        };
        self.count_read(&read);
        read
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
        let ended = self
            .store
            .delete_vault_entry(app.as_str(), user_id.as_str(), signed_out)
            .await?;
        self.metrics.vault_op(
            VaultOp::Delete,
            if ended.entry {
                VaultOutcome::Ok
            } else {
                VaultOutcome::Absent
            },
        );
        if ended.entry && signed_out.is_some() {
            self.wake_deliverer();
        }
        Ok(ended)
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
        self.keys
            .open_text(&aad(&ids, column), sealed)
            .map_err(|source| match source {
                keyring::SealError::NotText => VaultError::Corrupt {
                    app: row.app.clone(),
                    user_id: row.user_id.clone(),
                    column,
                },
                source => VaultError::Crypto {
                    app: row.app.clone(),
                    user_id: row.user_id.clone(),
                    column,
                    source,
                },
            })
    }
}
