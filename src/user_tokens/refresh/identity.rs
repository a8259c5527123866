//! Judging a refreshed ID token: is it still this user? Verified now, or
//! kept (sealed) until the IdP's keys can be had, then settled.

use crate::secret::ExposeSecret as _;

use super::Task;
use crate::domain::{AuditOutcome, UserId};
use crate::oidc::{IdTokenCheck, IdTokenT, IdpTokens, OidcError, Provider};
use crate::user_tokens::{LookupError, reauth};
use crate::vault::{PendingIdToken, VaultEntry};

/// How the refreshed ID token compares with the user.
pub(super) enum Identity {
    /// The same user (with the ID token's `sub`), or the IdP sent no ID
    /// token (`None`).
    Same(Option<String>),
    /// Verified, and about somebody else (or another issuer).
    Other,
    /// Not verifiable now (JWKS unreachable, key not published yet).
    Unverifiable(String),
    /// Verifiably wrong (signature, audience, expiry...).
    Invalid(String),
}

impl Task {
    /// Compares a refreshed ID token with the user, as of `received_at`.
    pub(super) async fn check_identity(
        &self,
        provider: &Provider,
        tokens: &IdpTokens,
        received_at: i64,
    ) -> Identity {
        match &tokens.id_token {
            Some(id_token) => self.compare(provider, id_token, received_at).await,
            None => Identity::Same(None),
        }
    }

    pub(super) async fn compare(
        &self,
        provider: &Provider,
        id_token: &IdTokenT,
        at: i64,
    ) -> Identity {
        let verified = provider
            .verify_id_token(
                id_token,
                &IdTokenCheck::ours(None),
                at,
                self.inner.settings.clock_skew,
            )
            .await;
        match verified {
            Ok(identity) => {
                let same = UserId::new(&provider.config().id, &identity.subject)
                    .is_ok_and(|u| u == self.user);
                if same {
                    Identity::Same(Some(identity.sub))
                } else {
                    Identity::Other
                }
            }
            Err(e @ (OidcError::Unavailable(_) | OidcError::UnknownKey)) => {
                Identity::Unverifiable(e.to_string())
            }
            Err(e) => Identity::Invalid(e.to_string()),
        }
    }

    /// Verifies a refreshed ID token kept for later, and settles it.
    pub(super) async fn settle_pending(
        &self,
        entry: &VaultEntry,
        pending: &PendingIdToken,
    ) -> Result<(), LookupError> {
        let unavailable = || {
            LookupError::Unavailable(
                "the identity provider's last refresh answer is not verified yet; retry shortly"
                    .into(),
            )
        };
        let Some(provider) = self.inner.providers.get(entry.provider.as_str()) else {
            return Err(unavailable());
        };
        let identity = match pending.token.expose_secret().parse::<IdTokenT>() {
            Ok(id_token) => {
                self.compare(&provider, &id_token, pending.received_at)
                    .await
            }
            Err(e) => Identity::Invalid(format!("unreadable: {e}")),
        };
        let needs_reauth = match identity {
            Identity::Same(_) => false,
            Identity::Unverifiable(why) => {
                tracing::debug!(user = %self.user, reason = %why, "the pending ID token still cannot be verified");
                return Err(unavailable());
            }
            Identity::Other | Identity::Invalid(_) => true,
        };
        let reauth_event = needs_reauth
            .then(|| self.reauth_event("id_token_invalid"))
            .flatten();
        self.inner
            .vault
            .settle_pending_id_token(
                &self.app,
                &self.user,
                entry.row_version,
                needs_reauth,
                crate::time::now(),
                reauth_event.as_ref(),
            )
            .await?;
        if needs_reauth {
            tracing::warn!(user = %self.user, "the refreshed ID token, verified later, does not match this user; the user must sign in again");
            self.audit(
                AuditOutcome::Failed,
                Some("refreshed ID token rejected on a later check"),
            )
            .await;
            return Err(reauth());
        }
        Ok(())
    }
}
