//! Operations on a user's stored IdP tokens that several entry points share
//! (widget sign-out with revoke, the bot API's DELETE).

use crate::app::AppState;
use crate::config::AppConfig;
use crate::domain::UserId;
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
    let now = crate::time::now();
    let entry = state.vault.load(&app.id, user_id).await?;
    let mut revoked_at_idp = false;
    if let Some(entry) = &entry
        && let Some(refresh) = &entry.tokens.refresh_token
    {
        match state.providers.get(&entry.provider) {
            Some(provider) => {
                let redirect = state.config.public_url.join("/v1/callback");
                match provider.revoke_refresh_token(refresh, &redirect).await {
                    Ok(done) => revoked_at_idp = done,
                    Err(e) => {
                        tracing::warn!(provider = %entry.provider, error = %e, "refresh-token revocation failed")
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
    let _ = state
        .store
        .record_audit(
            AuditEvent {
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
            },
            now,
        )
        .await
        .map_err(|e| tracing::warn!(error = %e, "cannot write an audit event"));
    Ok(SignOut {
        deleted,
        revoked_at_idp,
    })
}
