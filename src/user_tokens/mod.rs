//! A user's stored IdP tokens as bots and sign-out see them: fresh access
//! tokens (with the single-flight refresh), status, and sign-out with
//! revocation at the IdP.

mod fresh;
mod keyed_lock;

pub use fresh::{FreshToken, LEASE, LookupError, RETRY_AFTER_SECS, fresh_access_token};
pub use keyed_lock::KeyedLocks;

use crate::app::AppState;
use crate::config::AppConfig;
use crate::domain::UserId;
use crate::oidc::TokenKind;
use crate::store::AuditEvent;
use crate::vault::VaultError;

/// What a sign-out did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SignOut {
    /// There was a vault entry and it is gone.
    pub deleted: bool,
    /// The IdP confirmed the revocation of the refresh token.
    pub revoked_at_idp: bool,
}

/// Revokes the user's refresh token at the IdP (RFC 7009, when the IdP has a
/// revocation endpoint) and deletes the vault entry. A failed revocation is
/// logged and does not keep the entry: the user asked to be signed out.
pub async fn sign_out(
    state: &AppState,
    app: &AppConfig,
    user_id: &UserId,
    actor: &str,
) -> Result<SignOut, VaultError> {
    let entry = state.vault.load(&app.id, user_id).await?;
    let mut revoked_at_idp = false;
    if let Some(entry) = &entry {
        match state.providers.get(&entry.provider) {
            Some(provider) => {
                // The refresh token first: revoking it ends the grant at most IdPs.
                let tokens = entry
                    .tokens
                    .refresh_token
                    .iter()
                    .map(|t| (t, TokenKind::Refresh))
                    .chain(std::iter::once((
                        &entry.tokens.access_token,
                        TokenKind::Access,
                    )));
                for (token, kind) in tokens {
                    match provider.revoke(token, kind).await {
                        Ok(done) => revoked_at_idp |= done && kind == TokenKind::Refresh,
                        Err(e) => {
                            tracing::warn!(provider = %entry.provider, ?kind, error = %e, "revocation failed")
                        }
                    }
                }
            }
            None => {
                tracing::warn!(provider = %entry.provider, "provider not loaded; cannot revoke at the IdP")
            }
        }
    }
    let deleted = state.vault.delete(&app.id, user_id).await?;
    state
        .metrics
        .vault_op("delete", if deleted { "ok" } else { "absent" });
    state
        .store
        .audit(AuditEvent {
            actor,
            app: Some(app.id.as_str()),
            user_id: Some(user_id.as_str()),
            action: "signout",
            outcome: if deleted { "ok" } else { "absent" },
            detail: Some(if revoked_at_idp {
                "revoked at idp"
            } else {
                "not revoked at idp"
            }),
        })
        .await;
    Ok(SignOut {
        deleted,
        revoked_at_idp,
    })
}
