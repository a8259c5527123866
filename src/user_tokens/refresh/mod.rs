//! One refresh task: wait for or take the user's lease, use the refresh token
//! once, check the refreshed ID token, and store the answer — holding on to it
//! until the database takes it. The ID token is judged in `identity.rs`;
//! every failure ends through `failure.rs`.

mod failure;
mod identity;

use crate::secret::ExposeSecret as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::failure::Failure;
use self::identity::Identity;
use super::inflight::Publisher;
use super::lease::{LeaseKeeper, Watch, takeover_window};
use super::{
    Inner, KEEP_UNSAVED_FOR, LookupError, Outcome, fresh_enough, not_found, reauth, still_valid,
    view,
};
use crate::domain::{AppId, AuditAction, AuditOutcome, UserId};
use crate::metrics::RefreshOutcome;
use crate::oidc::{IdpTokens, OidcError, Provider};
use crate::secret::SecretString;
use crate::store::AuditEvent;
use crate::vault::{LeaseTake, PendingIdToken, RefreshResult, SealedRefresh, TokenSet, VaultEntry};

/// How often a task waiting for another replica's refresh reads the row.
const POLL: Duration = Duration::from_millis(100);
/// Backoff of the store retries: doubling from the first, capped.
const STORE_RETRY_FIRST: Duration = Duration::from_millis(100);
const STORE_RETRY_MAX: Duration = Duration::from_secs(1);
/// While an answer waits for the database, an error is logged this often.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// The refresh of one user's tokens, run as a task of its own.
pub(super) struct Task {
    pub(super) inner: Arc<Inner>,
    pub(super) app: AppId,
    pub(super) user: UserId,
    /// Who asked first (`bot:<id>`), for the audit log.
    pub(super) actor: String,
}

/// What one pass under a lease came to.
enum Step {
    Done(Outcome),
    /// The row changed under us (a newer sign-in): read it again.
    Again,
}

/// How often an ambiguous refusal is asked again, and how long apart.
const AMBIGUOUS_TRIES: u32 = 3;
const AMBIGUOUS_RETRY_DELAY: Duration = Duration::from_millis(500);

/// What an OAuth error answer of the token endpoint to a refresh means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// The refresh token is dead: the user must sign in again.
    Definitive,
    /// Not now: the IdP says it is overloaded or failing (`5xx` and `429`
    /// are transient before they get here).
    Transient,
    /// Anything else (`invalid_request`, `invalid_client`,
    /// `unauthorized_client`, `invalid_scope`, a bare 4xx, unknown codes):
    /// not an outage — real IdPs answer a dead refresh token this way too
    /// (LemonLDAP::NG: `invalid_request`) — so a refusal once it persists.
    Ambiguous,
}

fn refusal(code: &str) -> Refusal {
    match code {
        "invalid_grant" => Refusal::Definitive,
        "temporarily_unavailable" | "server_error" | "slow_down" => Refusal::Transient,
        _ => Refusal::Ambiguous,
    }
}

impl Task {
    pub(super) async fn run(self, publisher: Publisher) {
        let _gauge = self.inner.metrics.refresh_in_flight();
        let outcome = self.refresh(&publisher).await;
        publisher.finish(outcome);
    }

    async fn refresh(&self, publisher: &Publisher) -> Outcome {
        let settings = &self.inner.settings;
        let window = takeover_window(settings.lease);
        // Waiting for another replica ends at the latest here; its lease is
        // kept alive only while it works, so this is generous.
        let give_up = Instant::now() + settings.lease * 3 + window;
        let mut watch = Watch::default();
        loop {
            let now = crate::time::now();
            let entry = self.load().await?;
            if entry.needs_reauth {
                return Err(reauth());
            }
            if let Some(pending) = &entry.pending_id_token {
                self.settle_pending(&entry, pending).await?;
                continue;
            }
            if fresh_enough(&entry, now, settings.refresh_skew) {
                return Ok(view(&entry, false)); // refreshed by someone else meanwhile
            }
            let Some(refresh_token) = entry.tokens.refresh_token.clone() else {
                if still_valid(&entry, now) {
                    return Ok(view(&entry, false));
                }
                return Err(LookupError::ReauthRequired(
                    "the access token expired and the identity provider issued no refresh token \
                     (offline_access); the user must sign in again"
                        .into(),
                ));
            };
            if let Some(take) = watch.take(entry.lease.as_ref(), now, window) {
                let lease_id = crate::secret::random_token::<16>();
                let until = now + settings.lease.as_secs() as i64;
                let taken = self
                    .inner
                    .vault
                    .take_lease(
                        &self.app,
                        &self.user,
                        entry.row_version,
                        &take,
                        &self.inner.replica_id,
                        &lease_id,
                        until,
                    )
                    .await?;
                if taken {
                    if let (LeaseTake::Stale { .. }, Some(lease)) = (&take, &entry.lease) {
                        tracing::warn!(
                            user = %self.user,
                            holder = lease.owner.as_deref().unwrap_or("unknown"),
                            "took over a refresh lease its holder left to lapse (a replica that died?)"
                        );
                    }
                    match self
                        .under_lease(entry, refresh_token, lease_id, publisher)
                        .await
                    {
                        Step::Done(outcome) => return outcome,
                        Step::Again => continue,
                    }
                }
                // The row moved (rekey, a sign-in) or another replica won: look again.
                continue;
            }
            if Instant::now() > give_up {
                return Err(LookupError::Unavailable(
                    "another replica's refresh has not finished; retry".into(),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The row, read from the database (never the read cache).
    async fn load(&self) -> Result<VaultEntry, LookupError> {
        let entry = self.inner.vault.load(&self.app, &self.user).await?;
        entry.ok_or_else(|| not_found(&self.app, &self.user))
    }

    async fn audit(&self, outcome: AuditOutcome, detail: Option<&str>) {
        self.inner
            .store
            .audit(AuditEvent {
                actor: &self.actor,
                app: Some(&self.app),
                user_id: Some(&self.user),
                action: AuditAction::TokenRefresh,
                outcome,
                detail,
            })
            .await;
    }

    /// Refreshes while holding the lease `lease_id`, in four steps: call the
    /// IdP, judge the identity its answer names, persist the answer, report.
    /// Every way it can end without a stored answer goes through
    /// [`Task::fail`].
    async fn under_lease(
        &self,
        entry: VaultEntry,
        refresh_token: SecretString,
        lease_id: String,
        publisher: &Publisher,
    ) -> Step {
        let inner = &self.inner;
        let keeper = LeaseKeeper::start(
            inner.vault.clone(),
            self.app.clone(),
            self.user.clone(),
            lease_id.clone(),
            inner.settings.lease,
        );
        let Some(provider) = inner.providers.get(entry.provider.as_str()) else {
            return self
                .fail(&entry, &lease_id, keeper, Failure::ProviderNotLoaded)
                .await;
        };
        // 1. Call the IdP.
        let tokens = match self.call_idp(&provider, &refresh_token).await {
            Ok(tokens) => tokens,
            Err(failure) => return self.fail(&entry, &lease_id, keeper, failure).await,
        };
        // From here on the IdP may have rotated the refresh token: its answer is
        // the only live one, and it is kept until it is stored.
        let answered = Instant::now();
        let _unsaved = inner.metrics.refresh_unsaved();
        let received_at = crate::time::now();
        // 2. Judge the identity: somebody else's tokens are not stored as
        // this user's.
        let identity = self.check_identity(&provider, &tokens, received_at).await;
        if let Identity::Other = identity {
            return self
                .fail(&entry, &lease_id, keeper, Failure::IdentityChanged)
                .await;
        }
        let (set, sealed) = self.seal(&entry, tokens, &identity, &lease_id, received_at);
        // 3. Persist.
        let stored = self.store(&sealed, publisher, &keeper).await;
        inner
            .metrics
            .refresh_phase("store", answered.elapsed().as_secs_f64());
        match stored {
            Stored::Landed { retried } => {
                drop(keeper);
                // 4. Report.
                Step::Done(self.report(&identity, retried, set).await)
            }
            Stored::Refused => {
                drop(keeper);
                self.refused(&entry, &refresh_token, &set).await
            }
            Stored::GaveUp => {
                self.fail(&entry, &lease_id, keeper, Failure::NotStored)
                    .await
            }
        }
    }

    /// Uses the refresh token at the IdP. An error whose meaning is not
    /// certain is asked again a few times (nothing was spent: the IdP
    /// refused) before it counts as a refusal.
    async fn call_idp(
        &self,
        provider: &Provider,
        refresh_token: &SecretString,
    ) -> Result<IdpTokens, Failure> {
        let redirect_uri = &self.inner.settings.redirect_uri;
        let started = Instant::now();
        let mut answer = provider.refresh(refresh_token, redirect_uri).await;
        let mut tries = 1;
        while tries < AMBIGUOUS_TRIES
            && matches!(&answer, Err(OidcError::Idp { code, .. }) if refusal(code) == Refusal::Ambiguous)
        {
            tokio::time::sleep(AMBIGUOUS_RETRY_DELAY).await;
            answer = provider.refresh(refresh_token, redirect_uri).await;
            tries += 1;
        }
        self.inner
            .metrics
            .refresh_phase("idp", started.elapsed().as_secs_f64());
        answer.map_err(|e| match e {
            OidcError::Idp { code, .. } if refusal(&code) != Refusal::Transient => {
                Failure::Refused { code, tries }
            }
            e => Failure::IdpUnavailable(e),
        })
    }

    /// The IdP's answer as the tokens to hand out and the row to write
    /// (sealed once; only the access token stays in the clear, for the
    /// answer).
    fn seal(
        &self,
        entry: &VaultEntry,
        tokens: IdpTokens,
        identity: &Identity,
        lease_id: &str,
        received_at: i64,
    ) -> (TokenSet, SealedRefresh) {
        let pending = match identity {
            Identity::Unverifiable(why) => {
                tracing::warn!(user = %self.user, reason = %why, "the refreshed ID token cannot be verified now; storing the tokens and verifying later");
                tokens
                    .id_token_text()
                    .map(|token| PendingIdToken { token, received_at })
            }
            _ => None,
        };
        let needs_reauth = matches!(identity, Identity::Invalid(_));
        let reauth_event = needs_reauth
            .then(|| self.reauth_event("id_token_invalid"))
            .flatten();
        // A verified refreshed ID token is the next sign-out's id_token_hint.
        let verified_id_token = match identity {
            Identity::Same(_) => tokens.id_token_text(),
            _ => None,
        };
        let set = TokenSet {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            token_type: tokens.token_type,
            scope: tokens.scope.unwrap_or_else(|| entry.tokens.scope.clone()),
            expires_at: tokens.expires_in.map(|d| received_at + d.as_secs() as i64),
        };
        let sealed = self.inner.vault.seal_refreshed(
            &self.app,
            &self.user,
            &RefreshResult {
                lease_id,
                tokens: &set,
                pending_id_token: pending.as_ref(),
                needs_reauth,
                id_token: verified_id_token.as_ref(),
                idp_sub: match identity {
                    Identity::Same(sub) => sub.as_deref(),
                    _ => None,
                },
                event: reauth_event.as_ref(),
            },
        );
        (set, sealed)
    }

    /// What a stored answer means for the bot that asked.
    async fn report(&self, identity: &Identity, retried: bool, set: TokenSet) -> Outcome {
        let metrics = &self.inner.metrics;
        match identity {
            Identity::Unverifiable(_) => {
                metrics.refresh(RefreshOutcome::IdTokenUnverified);
                self.audit(AuditOutcome::Ok, Some("ID token to be verified"))
                    .await;
                Err(LookupError::Unavailable(
                    "the identity provider's answer is stored but its ID token cannot be verified yet; retry shortly"
                        .into(),
                ))
            }
            Identity::Invalid(why) => {
                tracing::warn!(user = %self.user, reason = %why, "refreshed ID token rejected; the user must sign in again");
                metrics.refresh(RefreshOutcome::IdTokenInvalid);
                self.audit(AuditOutcome::Failed, Some("refreshed ID token rejected"))
                    .await;
                Err(LookupError::ReauthRequired(
                    "the identity provider's refreshed ID token is invalid; the user must sign in again"
                        .into(),
                ))
            }
            Identity::Same(_) | Identity::Other => {
                metrics.refresh(if retried {
                    RefreshOutcome::StoredAfterRetry
                } else {
                    RefreshOutcome::Ok
                });
                self.audit(AuditOutcome::Ok, None).await;
                Ok(super::FreshToken {
                    access_token: set.access_token,
                    token_type: set.token_type,
                    expires_at: set.expires_at,
                    scope: set.scope,
                    refreshed: true,
                })
            }
        }
    }

    /// Writes the refresh result until it lands, the row refuses it, or
    /// [`KEEP_UNSAVED_FOR`] has passed. The lease keeper runs meanwhile.
    async fn store(
        &self,
        sealed: &SealedRefresh,
        publisher: &Publisher,
        keeper: &LeaseKeeper,
    ) -> Stored {
        let started = Instant::now();
        let mut next_report = started + REPORT_EVERY;
        let mut delay = STORE_RETRY_FIRST;
        let mut attempt = 0u32;
        loop {
            let error = match self
                .inner
                .vault
                .write_refreshed(sealed, crate::time::now())
                .await
            {
                Ok(true) => {
                    if attempt > 0 {
                        tracing::info!(user = %self.user, attempts = attempt + 1, "refreshed tokens stored after the database recovered");
                    }
                    return Stored::Landed {
                        retried: attempt > 0,
                    };
                }
                Ok(false) => return Stored::Refused,
                Err(e) => e,
            };
            attempt += 1;
            if attempt == 1 {
                tracing::warn!(user = %self.user, error = %error, "cannot store refreshed tokens; keeping them and retrying");
                publisher.interim(Err(LookupError::Unavailable(
                    "the identity provider's answer is being stored; retry shortly".into(),
                )));
            }
            if started.elapsed() >= KEEP_UNSAVED_FOR {
                tracing::error!(user = %self.user, error = %error, "gave up storing refreshed tokens: the rotated refresh token is lost; the user will have to sign in again");
                return Stored::GaveUp;
            }
            if Instant::now() >= next_report {
                next_report += REPORT_EVERY;
                tracing::error!(
                    user = %self.user,
                    error = %error,
                    waiting_secs = started.elapsed().as_secs(),
                    lease_lost = keeper.lost(),
                    "refreshed tokens still wait for the database; retrying"
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(STORE_RETRY_MAX);
        }
    }

    /// The row no longer carried our lease when the answer was stored.
    async fn refused(&self, entry: &VaultEntry, used: &SecretString, got: &TokenSet) -> Step {
        let inner = &self.inner;
        let now_row = match self.load().await {
            Ok(row) => Some(row),
            Err(LookupError::NotFound(_)) => None,
            Err(e) => return Step::Done(Err(e)),
        };
        match now_row {
            None => {
                // Signed out meanwhile: what we got must not outlive the sign-out.
                tracing::info!(user = %self.user, "the user signed out during a refresh; revoking the refreshed tokens");
                inner.revoke(entry.provider.as_str(), got).await;
                inner.metrics.refresh(RefreshOutcome::SignedOut);
                self.audit(AuditOutcome::Failed, Some("signed out during the refresh"))
                    .await;
                Step::Done(Err(not_found(&self.app, &self.user)))
            }
            Some(row)
                if row.tokens.refresh_token.as_ref().map(|t| t.expose_secret())
                    == Some(used.expose_secret()) =>
            {
                // Our lease lapsed and another replica took it while we could
                // not reach the database: it will use the refresh token we
                // already used.
                tracing::error!(user = %self.user, "another replica took over this refresh's lapsed lease before its answer was stored; the rotation is lost");
                inner.metrics.refresh(RefreshOutcome::Lost);
                self.audit(
                    AuditOutcome::Failed,
                    Some("lease taken over; rotation lost"),
                )
                .await;
                Step::Done(Err(LookupError::Unavailable(
                    "the refresh raced with another replica; retry".into(),
                )))
            }
            Some(_) => {
                // A newer sign-in (a newer grant) replaced the tokens: it wins,
                // and nothing of the older grant is used again.
                tracing::info!(user = %self.user, "a newer sign-in replaced the tokens during a refresh; its tokens win");
                inner.metrics.refresh(RefreshOutcome::Superseded);
                self.audit(AuditOutcome::Ok, Some("superseded by a newer sign-in"))
                    .await;
                Step::Again
            }
        }
    }
}

enum Stored {
    Landed {
        retried: bool,
    },
    /// The row no longer carries our lease.
    Refused,
    GaveUp,
}
