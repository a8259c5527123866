//! A user's stored IdP tokens as bots and sign-out see them: fresh access
//! tokens (with the refresh that never loses a rotated refresh token), status,
//! and sign-out with revocation at the IdP.
//!
//! What is guaranteed (docs/bots.md, "Refresh safety", says it for operators):
//!
//! - **One refresh per user at a time**, across every replica: one task per
//!   `(app, user)` in a process ([`inflight`]), a fenced lease in the vault row
//!   across processes ([`lease`]).
//! - **The refresh belongs to the service, not to the request**: it runs in a
//!   task of its own, so a bot that disconnects or a request that times out
//!   does not cut it short; every waiter gets its result. Graceful shutdown
//!   waits for refreshes in flight.
//! - **An answer the IdP gave is kept until it is stored**: the new token set
//!   stays in memory (sealed in the process, never logged) while the write is
//!   retried with backoff and the lease kept alive, for up to
//!   [`KEEP_UNSAVED_FOR`]. The write is fenced by the lease id, so harmless
//!   writers (`vault rekey`) cannot make it fail.
//! - The one window left: a process killed between the IdP's answer and the
//!   write. `chatgate_refresh_duration_seconds{phase="store"}` measures it.

mod inflight;
mod lease;
mod logout;
mod refresh;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::domain::{AppId, AuditAction, AuditOutcome, UserId};
use crate::events::deliver::Deliverer;
use crate::events::{Events, SignOutReason};
use crate::metrics::{Metrics, VaultOp, VaultOutcome};
use crate::oidc::{Providers, TokenKind};
use crate::secret::SecretString;
use crate::store::{AuditEvent, Store, StoreError};
use crate::vault::{Vault, VaultEntry, VaultError};
use inflight::InFlight;
pub use logout::LogoutError;

/// `Retry-After` when the IdP or the database is unavailable.
pub const RETRY_AFTER_SECS: u64 = 5;
/// How long a refresh keeps an IdP answer it could not store yet, retrying.
pub const KEEP_UNSAVED_FOR: Duration = Duration::from_secs(600);

/// What the refresh machinery needs to know of the configuration.
#[derive(Debug, Clone)]
pub struct RefreshSettings {
    /// Refresh a stored access token this long before it expires.
    pub refresh_skew: Duration,
    /// The bot API may serve a row read this long ago (see `read_cache_ttl`).
    pub read_cache_ttl: Duration,
    pub clock_skew: Duration,
    /// How long a refresh lease lasts without a heartbeat.
    pub lease: Duration,
    /// The redirect URI registered at IdPs (sent with refresh requests by
    /// some clients; harmless for the others).
    pub redirect_uri: String,
    /// How long a lookup waits for a refresh before answering
    /// `temporarily_unavailable` (the refresh goes on).
    pub wait: Duration,
}

/// A token a bot may use now.
#[derive(Debug, Clone)]
pub struct FreshToken {
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_at: Option<i64>,
    pub scope: String,
    /// Whether this lookup's refresh produced it.
    pub refreshed: bool,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LookupError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ReauthRequired(String),
    /// The IdP or the database is unavailable, or a refresh is still running:
    /// retry after [`RETRY_AFTER_SECS`].
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Failed(Arc<VaultError>),
}

impl From<VaultError> for LookupError {
    fn from(e: VaultError) -> Self {
        if e.is_transient() {
            tracing::warn!(error = %e, "the database is unavailable");
            Self::Unavailable("the database is unavailable; retry shortly".into())
        } else {
            Self::Failed(Arc::new(e))
        }
    }
}

impl From<StoreError> for LookupError {
    fn from(e: StoreError) -> Self {
        VaultError::from(e).into()
    }
}

/// The result every waiter of one refresh gets.
type Outcome = Result<FreshToken, LookupError>;

/// What became of the user's grant at the IdP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The IdP confirmed the revocation (RFC 7009) of the refresh token (or,
    /// without one, of the access token).
    Revoked,
    /// The IdP has no revocation endpoint: its refresh token stays valid at
    /// the IdP until it expires there (chatgate has forgotten it).
    NoRevocationEndpoint,
    /// The IdP could not be reached, or refused.
    Failed,
    /// chatgate held no tokens of the user.
    NothingStored,
}

impl Revocation {
    /// Why the IdP did not confirm a revocation, as the API says it.
    pub fn error_code(self) -> Option<&'static str> {
        match self {
            Self::Revoked | Self::NothingStored => None,
            Self::NoRevocationEndpoint => Some("no_revocation_endpoint"),
            Self::Failed => Some("revocation_failed"),
        }
    }
}

/// What a sign-out did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignOut {
    /// There was a vault entry and it is gone.
    pub deleted: bool,
    /// What the IdP said of the grant.
    pub revocation: Revocation,
    /// Browser sessions ended and browser keys forgotten with it.
    pub sessions: u64,
    pub keys: u64,
}

/// Fresh tokens for bots, and sign-out. Cheap to clone.
#[derive(Debug, Clone)]
pub struct TokenService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    vault: Vault,
    providers: Arc<Providers>,
    metrics: Arc<Metrics>,
    /// This process's name in refresh leases.
    replica_id: String,
    settings: RefreshSettings,
    inflight: InFlight,
    /// Refresh tasks, for graceful shutdown.
    tasks: TaskTracker,
    /// Makes the events (sign-out, re-authentication, failing refreshes).
    events: Events,
    /// Woken when an event was recorded.
    deliverer: Option<Deliverer>,
}

impl TokenService {
    pub fn new(
        store: Store,
        vault: Vault,
        providers: Arc<Providers>,
        metrics: Arc<Metrics>,
        settings: RefreshSettings,
        events: Events,
        deliverer: Option<Deliverer>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                vault,
                providers,
                metrics,
                replica_id: format!("replica-{}", crate::secret::random_token::<9>()),
                settings,
                inflight: InFlight::default(),
                tasks: TaskTracker::new(),
                events,
                deliverer,
            }),
        }
    }

    /// The fresh access token of `user_id` in `app`: the stored one while it is
    /// valid for longer than `refresh_skew`, else the result of the user's one
    /// refresh in flight (started here if there is none).
    pub async fn fresh_access_token(
        &self,
        app: &AppId,
        user_id: &UserId,
        actor: &str,
    ) -> Result<FreshToken, LookupError> {
        if user_id.namespace() == "host" {
            return Err(LookupError::NotFound(
                "host-signed users have no identity-provider tokens; only a chat token exists for them"
                    .into(),
            ));
        }
        let inner = &self.inner;
        // The hot path may use a row read within `read_cache_ttl`; a token that
        // is due for refresh is always read again by the refresh task.
        let cached = inner.vault.load_for_read(app, user_id).await?;
        inner.metrics.vault_op(
            VaultOp::Read,
            if cached.is_some() {
                VaultOutcome::Ok
            } else {
                VaultOutcome::Absent
            },
        );
        let entry = cached.ok_or_else(|| not_found(app, user_id))?;
        if entry.needs_reauth {
            return Err(reauth());
        }
        let margin = inner.settings.read_cache_ttl;
        if entry.pending_id_token.is_none()
            && fresh_enough(
                &entry,
                crate::time::now(),
                inner.settings.refresh_skew + margin,
            )
        {
            return Ok(view(&entry, false));
        }
        let (mut result, publisher) = inner.inflight.join((app.clone(), user_id.clone()));
        if let Some(publisher) = publisher {
            let task = refresh::Task {
                inner: self.inner.clone(),
                app: app.clone(),
                user: user_id.clone(),
                actor: actor.to_string(),
            };
            inner.tasks.spawn(task.run(publisher));
        }
        match tokio::time::timeout(inner.settings.wait, result.wait_for(Option::is_some)).await {
            Ok(Ok(outcome)) => outcome.clone().expect("waited for Some"),
            Ok(Err(_)) => Err(LookupError::Unavailable(
                "the refresh stopped unexpectedly; retry".into(),
            )),
            Err(_) => Err(LookupError::Unavailable(
                "the refresh is still running; retry shortly".into(),
            )),
        }
    }

    /// Whether chatgate's session may stand in for the IdP for this user now:
    /// the vault holds a usable entry of the sign-in `generation` the session
    /// was made under (read afresh, never from the read cache: a sign-out
    /// counts at once), refreshed first when its access token has expired (or
    /// is about to) — so an account disabled at the IdP is noticed within one
    /// access-token lifetime. `Err` only when that cannot be told now (IdP or
    /// database unavailable).
    pub async fn renewable(
        &self,
        app: &AppId,
        user_id: &UserId,
        generation: Option<&str>,
    ) -> Result<bool, LookupError> {
        let Some(entry) = self.inner.vault.load(app, user_id).await? else {
            return Ok(false);
        };
        if entry.needs_reauth || entry.generation.as_deref() != generation {
            return Ok(false);
        }
        match self.fresh_access_token(app, user_id, "user").await {
            Ok(_) => Ok(true),
            Err(LookupError::NotFound(_) | LookupError::ReauthRequired(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Signs the user out of `app` everywhere: revokes their refresh token at
    /// the IdP (RFC 7009, when the IdP has a revocation endpoint), then, in one
    /// transaction, deletes the vault entry and ends every browser session,
    /// key binding and ticket of theirs in the app. A failed revocation is
    /// logged and does not keep the entry: the user asked to be signed out.
    /// A refresh in flight finds the entry gone and revokes what it got; a
    /// renewal racing the sign-out may write a session or binding back, but
    /// that one belongs to the old sign-in generation and renews nothing.
    pub async fn sign_out(
        &self,
        app: &AppId,
        user_id: &UserId,
        actor: &str,
        reason: SignOutReason,
    ) -> Result<SignOut, VaultError> {
        let inner = &self.inner;
        let entry = inner.vault.load(app, user_id).await?;
        let revocation = match &entry {
            Some(entry) => inner.revoke(entry.provider.as_str(), &entry.tokens).await,
            None => Revocation::NothingStored,
        };
        let now = crate::time::now();
        let event = inner.events.signed_out(app, user_id, reason, now);
        let ended = inner.vault.delete(app, user_id, event.as_ref()).await?;
        let deleted = ended.entry;
        if deleted && event.is_some() {
            inner.wake_deliverer();
        }
        inner.metrics.vault_op(
            VaultOp::Delete,
            if deleted {
                VaultOutcome::Ok
            } else {
                VaultOutcome::Absent
            },
        );
        inner
            .store
            .audit(AuditEvent {
                actor,
                app: Some(app),
                user_id: Some(user_id),
                action: AuditAction::SignOut,
                outcome: if deleted {
                    AuditOutcome::Ok
                } else {
                    AuditOutcome::Absent
                },
                detail: Some(match revocation {
                    Revocation::Revoked => "revoked at idp",
                    Revocation::NoRevocationEndpoint => {
                        "not revoked: the idp has no revocation endpoint"
                    }
                    Revocation::Failed => "not revoked: the revocation failed",
                    Revocation::NothingStored => "nothing stored",
                }),
            })
            .await;
        Ok(SignOut {
            deleted,
            revocation,
            sessions: ended.sessions,
            keys: ended.keys,
        })
    }

    /// Which apps take events, and their outbox rows.
    pub fn events(&self) -> &Events {
        &self.inner.events
    }

    /// An event was recorded: deliver it now rather than at the next poll.
    pub fn wake_deliverer(&self) {
        self.inner.wake_deliverer();
    }

    /// Refreshes running now.
    pub fn refreshes_in_flight(&self) -> usize {
        self.inner.tasks.len()
    }

    /// Waits up to `within` for the refreshes in flight (graceful shutdown).
    /// Returns how many were still running when it gave up.
    pub async fn drain(&self, within: Duration) -> usize {
        let tasks = &self.inner.tasks;
        tasks.close();
        if tokio::time::timeout(within, tasks.wait()).await.is_ok() {
            return 0;
        }
        let left = tasks.len();
        tracing::error!(
            refreshes = left,
            "shutdown: refreshes still running are stopped; an IdP answer among them that was \
             not stored yet is lost"
        );
        left
    }
}

impl Inner {
    /// An event was recorded: deliver it now rather than at the next poll.
    fn wake_deliverer(&self) {
        if let Some(d) = &self.deliverer {
            d.wake();
        }
    }

    /// Revokes a token set at its provider, the refresh token first (revoking
    /// it ends the grant at most IdPs). The answer is about the refresh token
    /// (the access token's, when there is none).
    async fn revoke(&self, provider: &str, tokens: &crate::vault::TokenSet) -> Revocation {
        let Some(provider) = self.providers.get(provider) else {
            tracing::warn!(provider, "provider not loaded; cannot revoke at the IdP");
            return Revocation::Failed;
        };
        if provider.revocation_endpoint().is_none() {
            tracing::info!(provider = %provider.config().id, "the identity provider has no revocation endpoint: its refresh token stays valid there until it expires");
            return Revocation::NoRevocationEndpoint;
        }
        let mut outcome = None;
        let all = tokens
            .refresh_token
            .iter()
            .map(|t| (t, TokenKind::Refresh))
            .chain(std::iter::once((&tokens.access_token, TokenKind::Access)));
        for (token, kind) in all {
            let done = match provider.revoke(token, kind).await {
                Ok(done) => done,
                Err(e) => {
                    tracing::warn!(provider = %provider.config().id, ?kind, error = %e, "revocation failed");
                    false
                }
            };
            // The first token tried (the refresh token, if any) decides.
            outcome.get_or_insert(if done {
                Revocation::Revoked
            } else {
                Revocation::Failed
            });
        }
        outcome.unwrap_or(Revocation::Failed)
    }
}

fn view(entry: &VaultEntry, refreshed: bool) -> FreshToken {
    FreshToken {
        access_token: entry.tokens.access_token.clone(),
        token_type: entry.tokens.token_type.clone(),
        expires_at: entry.tokens.expires_at,
        scope: entry.tokens.scope.clone(),
        refreshed,
    }
}

/// Valid for longer than `skew` (or of unknown lifetime, which only the IdP
/// could judge).
fn fresh_enough(entry: &VaultEntry, now: i64, skew: Duration) -> bool {
    entry
        .tokens
        .expires_at
        .is_none_or(|exp| exp > now + skew.as_secs() as i64)
}

fn still_valid(entry: &VaultEntry, now: i64) -> bool {
    entry.tokens.expires_at.is_some_and(|exp| exp > now)
}

fn reauth() -> LookupError {
    LookupError::ReauthRequired(
        "the identity provider refused the stored refresh token; the user must sign in again"
            .into(),
    )
}

fn not_found(app: &AppId, user_id: &UserId) -> LookupError {
    LookupError::NotFound(format!("no token for {user_id} in app {app}"))
}
