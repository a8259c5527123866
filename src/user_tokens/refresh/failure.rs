//! The one way a refresh under a lease ends without a stored answer, and
//! what it leaves in the row: the lease given back, or the refresh token
//! marked refused; a passing failure noted (`token.refresh_failing`).

use super::{Refusal, STORE_RETRY_FIRST, Step, Task, refusal};
use crate::domain::AuditOutcome;
use crate::events::{EventType, REFRESH_FAILING_AFTER};
use crate::metrics::RefreshOutcome;
use crate::oidc::OidcError;
use crate::store::OutboxRow;
use crate::user_tokens::lease::LeaseKeeper;
use crate::user_tokens::{LookupError, Outcome, reauth, still_valid, view};
use crate::vault::VaultEntry;

/// Why a refresh under a lease ended without a stored answer.
pub(super) enum Failure {
    /// The provider's discovery has not succeeded yet.
    ProviderNotLoaded,
    /// The IdP refused the refresh token (`invalid_grant`, or an ambiguous
    /// code that persisted).
    Refused { code: String, tries: u32 },
    /// The IdP could not be reached, or answered an outage.
    IdpUnavailable(OidcError),
    /// The refreshed ID token names somebody else.
    IdentityChanged,
    /// The answer could not be stored within [`KEEP_UNSAVED_FOR`].
    NotStored,
}

/// How a [`Failure`] ends the refresh.
pub(super) struct Ending {
    lease: LeaseEnd,
    metric: RefreshOutcome,
    /// The audit record's detail.
    detail: String,
    /// A passing failure: note it (`token.refresh_failing`).
    note_failure: bool,
    answer: Outcome,
}

pub(super) enum LeaseEnd {
    /// Give the lease back: the refresh token stays usable.
    Release,
    /// Mark the refresh token refused (for this reason), which ends the lease.
    RefreshTokenRefused(&'static str),
}

impl Task {
    /// The one way a refresh under a lease ends without a stored answer: stop
    /// the heartbeat, give the lease back (or mark the refresh token refused,
    /// which ends it), count, audit, and answer.
    pub(super) async fn fail(
        &self,
        entry: &VaultEntry,
        lease_id: &str,
        keeper: LeaseKeeper,
        failure: Failure,
    ) -> Step {
        drop(keeper);
        let ending = self.ending(entry, failure);
        match ending.lease {
            LeaseEnd::Release => self.release(lease_id).await,
            LeaseEnd::RefreshTokenRefused(reason) => self.mark_needs_reauth(lease_id, reason).await,
        }
        self.inner.metrics.refresh(ending.metric);
        self.audit(AuditOutcome::Failed, Some(&ending.detail)).await;
        if ending.note_failure {
            self.note_failure().await;
        }
        Step::Done(ending.answer)
    }

    /// What each failure does; see [`Task::fail`].
    pub(super) fn ending(&self, entry: &VaultEntry, failure: Failure) -> Ending {
        match failure {
            Failure::ProviderNotLoaded => Ending {
                lease: LeaseEnd::Release,
                metric: RefreshOutcome::IdpUnavailable,
                detail: "provider not loaded".into(),
                note_failure: false,
                answer: self.transient(entry, "the identity provider is not loaded yet"),
            },
            Failure::Refused { code, tries } => {
                let (reason, metric) = if refusal(&code) == Refusal::Definitive {
                    ("invalid_grant", RefreshOutcome::InvalidGrant)
                } else {
                    ("refresh_refused", RefreshOutcome::Refused)
                };
                tracing::warn!(
                    provider = %entry.provider,
                    user = %self.user,
                    idp_error = %code,
                    tries,
                    "the identity provider refused the refresh token: the user must sign in again"
                );
                Ending {
                    lease: LeaseEnd::RefreshTokenRefused(reason),
                    metric,
                    detail: reason.into(),
                    note_failure: false,
                    answer: Err(reauth()),
                }
            }
            Failure::IdpUnavailable(e) => {
                tracing::warn!(provider = %entry.provider, error = %e, "refresh failed");
                let detail = match &e {
                    OidcError::Idp { code, .. } if code.len() <= 64 => code.clone(),
                    _ => "unavailable".into(),
                };
                Ending {
                    lease: LeaseEnd::Release,
                    metric: RefreshOutcome::IdpUnavailable,
                    detail,
                    note_failure: true,
                    answer: self.transient(entry, "the identity provider is unavailable"),
                }
            }
            Failure::IdentityChanged => Ending {
                lease: LeaseEnd::RefreshTokenRefused("identity_changed"),
                metric: RefreshOutcome::IdentityChanged,
                detail: "refreshed ID token names another user".into(),
                note_failure: false,
                answer: Err(LookupError::ReauthRequired(
                    "the identity provider's refreshed ID token does not match this user; the user must sign in again"
                        .into(),
                )),
            },
            Failure::NotStored => Ending {
                lease: LeaseEnd::Release,
                metric: RefreshOutcome::Lost,
                detail: "refreshed tokens could not be stored".into(),
                note_failure: false,
                answer: Err(LookupError::Unavailable(
                    "the database is unavailable; retry".into(),
                )),
            },
        }
    }

    /// A failure that does not condemn the refresh token: serve the stored
    /// access token while it is still valid, else tell the bot to retry.
    pub(super) fn transient(&self, entry: &VaultEntry, why: &str) -> Outcome {
        if still_valid(entry, crate::time::now()) {
            tracing::warn!(user = %self.user, reason = why, "refresh failed; serving the still-valid access token");
            Ok(view(entry, false))
        } else {
            Err(LookupError::Unavailable(format!("{why}; retry")))
        }
    }

    pub(super) async fn release(&self, lease_id: &str) {
        if let Err(e) = self
            .inner
            .vault
            .release_lease(&self.app, &self.user, lease_id)
            .await
        {
            // It lapses by itself.
            tracing::warn!(user = %self.user, error = %e, "cannot release the refresh lease");
        }
    }

    /// The `user.reauth_required` event for this user, if the app takes events.
    pub(super) fn reauth_event(&self, reason: &str) -> Option<OutboxRow> {
        self.inner.events.row(
            &self.app,
            &self.user,
            EventType::ReauthRequired,
            serde_json::json!({ "reason": reason }),
            crate::time::now(),
        )
    }

    /// Notes a refresh that failed for a passing reason; once they have failed
    /// for [`REFRESH_FAILING_AFTER`], `token.refresh_failing` goes out (once
    /// per stretch of failures). Best effort: the failure is already reported.
    pub(super) async fn note_failure(&self) {
        let now = crate::time::now();
        let event = self.inner.events.row(
            &self.app,
            &self.user,
            EventType::RefreshFailing,
            serde_json::json!({ "failing_for_secs": REFRESH_FAILING_AFTER.as_secs() }),
            now,
        );
        if let Err(e) = self
            .inner
            .vault
            .note_refresh_failure(
                &self.app,
                &self.user,
                now,
                REFRESH_FAILING_AFTER.as_secs() as i64,
                event.as_ref(),
            )
            .await
        {
            tracing::warn!(user = %self.user, error = %e, "cannot note the failed refresh")
        }
    }

    /// Marks the refused refresh token; a few tries, since a failure means the
    /// next refresher sends the refused token once more (harmless, but noisy).
    pub(super) async fn mark_needs_reauth(&self, lease_id: &str, reason: &str) {
        let event = self.reauth_event(reason);
        for attempt in 1..=5u32 {
            match self
                .inner
                .vault
                .mark_needs_reauth(
                    &self.app,
                    &self.user,
                    lease_id,
                    crate::time::now(),
                    event.as_ref(),
                )
                .await
            {
                Ok(_) => return,
                Err(e) if attempt < 5 => {
                    tracing::warn!(user = %self.user, error = %e, "cannot mark the entry for re-authentication; retrying");
                    tokio::time::sleep(STORE_RETRY_FIRST * attempt).await;
                }
                Err(e) => {
                    tracing::error!(user = %self.user, error = %e, "cannot mark the entry for re-authentication")
                }
            }
        }
    }
}
