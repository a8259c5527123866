//! What the vault hands out and takes: tokens in the clear, an opened entry.

use crate::domain::{AppId, ProviderId, UserId};
use crate::secret::SecretString;

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

/// What a bot's read of an entry needs ([`super::Vault::read_access`]): the
/// access token opened, no other secret.
#[derive(Debug)]
pub struct AccessRead {
    pub access_token: SecretString,
    pub token_type: String,
    pub scope: String,
    /// Unix seconds; `None` when the IdP did not send `expires_in`.
    pub expires_at: Option<i64>,
    pub needs_reauth: bool,
    /// A refreshed ID token waits to be verified (the refresh task does it).
    pub pending_id_token: bool,
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

/// What a sign-in's ID token said, kept with the entry.
#[derive(Debug, Default, Clone, Copy)]
pub struct SignInIdentity<'a> {
    /// The IdP's `sub` (the user id may come from another claim).
    pub sub: Option<&'a str>,
    /// The IdP session, when the ID token names one.
    pub sid: Option<&'a str>,
    pub id_token: Option<&'a SecretString>,
}
