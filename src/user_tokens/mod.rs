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
mod refresh;
mod signout;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::task::TaskTracker;

use crate::domain::{AppId, AuditAction, AuditOutcome, UserId};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::oidc::Providers;
use crate::secret::SecretString;
use crate::store::{Store, StoreError};
use crate::vault::{GrantStatus, Vault, VaultEntry, VaultError};
use inflight::InFlight;
pub use signout::{LogoutRequestError, Revocation};

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
    /// The batched writer of bots' token reads.
    audit: crate::audit::AuditLog,
}

impl TokenService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Store,
        vault: Vault,
        providers: Arc<Providers>,
        metrics: Arc<Metrics>,
        settings: RefreshSettings,
        events: Events,
        audit: crate::audit::AuditLog,
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
                audit,
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
        let read = inner.vault.read_access(app, user_id).await?;
        let read = read.ok_or_else(|| not_found(app, user_id))?;
        if read.needs_reauth {
            return Err(reauth());
        }
        let margin = inner.settings.read_cache_ttl;
        if !read.pending_id_token
            && valid_beyond(
                read.expires_at,
                crate::time::now(),
                inner.settings.refresh_skew + margin,
            )
        {
            return Ok(FreshToken {
                access_token: read.access_token,
                token_type: read.token_type,
                expires_at: read.expires_at,
                scope: read.scope,
                refreshed: false,
            });
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

    /// A bot's read of a user's fresh access token (the bot API and the Bot
    /// Framework API alike), audited through the batched writer with how it
    /// ended.
    pub async fn read_for_bot(
        &self,
        app: &AppId,
        user_id: &UserId,
        actor: &str,
    ) -> Result<FreshToken, LookupError> {
        let result = self.fresh_access_token(app, user_id, actor).await;
        let outcome = match &result {
            Ok(t) if t.refreshed => AuditOutcome::OkRefreshed,
            Ok(_) => AuditOutcome::Ok,
            Err(LookupError::NotFound(_)) => AuditOutcome::NotFound,
            Err(LookupError::ReauthRequired(_)) => AuditOutcome::ReauthRequired,
            Err(LookupError::Unavailable(_)) => AuditOutcome::Unavailable,
            Err(LookupError::Failed(_)) => AuditOutcome::Error,
        };
        self.audit_read(app, user_id, actor, AuditAction::TokenRead, outcome)
            .await;
        result
    }

    /// A bot's status read of a user's grant (no secret is opened), audited
    /// like [`TokenService::read_for_bot`]. `None`: no entry.
    pub async fn status_for_bot(
        &self,
        app: &AppId,
        user_id: &UserId,
        actor: &str,
    ) -> Result<Option<GrantStatus>, VaultError> {
        let status = self.inner.vault.status(app, user_id).await?;
        let outcome = if status.is_some() {
            AuditOutcome::Ok
        } else {
            AuditOutcome::NotFound
        };
        self.audit_read(app, user_id, actor, AuditAction::StatusRead, outcome)
            .await;
        Ok(status)
    }

    /// A bot's read, through the batched writer (anyone with a bot secret
    /// can cause many); also one refused before the vault was read.
    pub async fn audit_read(
        &self,
        app: &AppId,
        user_id: &UserId,
        actor: &str,
        action: AuditAction,
        outcome: AuditOutcome,
    ) {
        self.inner
            .audit
            .count(crate::audit::EventRef {
                at: crate::time::now(),
                event: crate::store::AuditEvent {
                    actor,
                    app: Some(app),
                    user_id: Some(user_id),
                    action,
                    outcome,
                    detail: None,
                },
            })
            .await;
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

    /// Which apps take events, and their outbox rows.
    pub fn events(&self) -> &Events {
        &self.inner.events
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
    valid_beyond(entry.tokens.expires_at, now, skew)
}

/// An access token expiring at `expires_at` is valid for longer than `skew`
/// (or of unknown lifetime, which only the IdP could judge).
fn valid_beyond(expires_at: Option<i64>, now: i64, skew: Duration) -> bool {
    expires_at.is_none_or(|exp| exp > now + skew.as_secs() as i64)
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
