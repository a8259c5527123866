//! Sign-out: a user signed out of an app everywhere ([`TokenService::sign_out`]:
//! the widget with `revoke`, the bot API, Bot Framework `SignOut`, the CLI),
//! and logout from the IdP: Back-Channel Logout 1.0 (the IdP POSTs a signed
//! logout token) and Front-Channel Logout 1.0 (the IdP's logout page frames
//! `GET /v1/frontchannel-logout?iss=&sid=` in the user's browser — the only
//! kind LemonLDAP::NG 2.16 and Microsoft Entra ID offer). Either way the IdP
//! says a user's session ended; chatgate ends what it holds for that user
//! (`sub`) or that IdP session (`sid`) in every app using the provider.
//!
//! One transaction deletes the vault entries and the browser sessions,
//! records the logout token's `jti` (a replay changes nothing) and the
//! `user.signed_out` events. The answer waits out `read_cache_ttl`, so no
//! replica serves a deleted entry from its read cache after the IdP was told
//! the logout is done.

use super::{Inner, TokenService};
use crate::config::FrontchannelLogoutId;
use crate::domain::{AppId, AuditAction, AuditOutcome, UserId};
use crate::events::SignOutReason;
use crate::oidc::TokenKind;
use crate::oidc::{LogoutTokenError, unverified_issuer};
use crate::store::{AuditEvent, Jti, SignOutScope, SignedOutAtIdp};
use crate::vault::VaultError;

/// What a logout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdpSignOut {
    /// Vault entries deleted (one per app the user had signed in to).
    pub entries: usize,
    /// Browser sessions ended.
    pub sessions: u64,
}

/// Why a logout token was refused or could not be acted on.
#[derive(Debug, thiserror::Error)]
pub enum LogoutRequestError {
    /// The token is not a valid logout token (400 `invalid_request`).
    #[error("{0}")]
    Invalid(String),
    /// The token was used before (400 `invalid_request`).
    #[error("the logout token was used before")]
    Replayed,
    /// The provider is not loaded yet, or the database is unavailable: the
    /// IdP may send it again (503).
    #[error("{0}")]
    Unavailable(String),
}

impl TokenService {
    /// Verifies `logout_token` and ends the sessions it names.
    pub async fn backchannel_logout(
        &self,
        logout_token: &str,
    ) -> Result<IdpSignOut, LogoutRequestError> {
        let result = self.end_idp_session(logout_token).await;
        self.inner.metrics.backchannel_logout(match &result {
            Ok(_) => "ok",
            Err(LogoutRequestError::Invalid(_)) => "invalid",
            Err(LogoutRequestError::Replayed) => "replayed",
            Err(LogoutRequestError::Unavailable(_)) => "unavailable",
        });
        result
    }

    async fn end_idp_session(&self, logout_token: &str) -> Result<IdpSignOut, LogoutRequestError> {
        let inner = &self.inner;
        let claimed = unverified_issuer(logout_token).ok_or_else(|| {
            LogoutRequestError::Invalid("the logout token is not a JWT with an iss".into())
        })?;
        let Some(provider) = inner.providers.for_token(&claimed) else {
            return Err(if inner.providers.all_loaded() {
                LogoutRequestError::Invalid(
                    "the logout token's iss and aud name no configured provider".into(),
                )
            } else {
                LogoutRequestError::Unavailable(
                    "an identity provider is not loaded yet; retry".into(),
                )
            });
        };
        let now = crate::time::now();
        let token = provider
            .verify_logout_token(logout_token, now, inner.settings.clock_skew)
            .await
            .map_err(|e| match e {
                LogoutTokenError::Invalid(why) => LogoutRequestError::Invalid(why),
                e @ LogoutTokenError::UnknownKey => LogoutRequestError::Invalid(e.to_string()),
            })?;
        let provider_id = provider.config().id.clone();
        let replay_scope = format!("logout:{provider_id}");
        let scope = SignOutScope {
            provider: provider_id.as_str(),
            sub: token.sub.as_deref(),
            sid: token.sid.as_deref(),
        };
        let jti = Jti {
            scope: &replay_scope,
            id: &token.jti,
            expires_at: token.remember_until,
        };
        let done = inner
            .end_idp_sessions(scope, Some(&jti), now, "back-channel logout")
            .await?
            .ok_or(LogoutRequestError::Replayed)?;
        tracing::info!(
            provider = %provider_id,
            by_sub = token.sub.is_some(),
            by_sid = token.sid.is_some(),
            entries = done.entries.len(),
            sessions = done.sessions,
            "back-channel logout"
        );
        // Other replicas may hold a deleted entry in their read caches for
        // this long; the IdP hears "done" only when none can serve it.
        tokio::time::sleep(inner.settings.read_cache_ttl).await;
        Ok(IdpSignOut {
            entries: done.entries.len(),
            sessions: done.sessions,
        })
    }
}

impl TokenService {
    /// Front-channel logout: ends what chatgate holds of IdP session `sid` at
    /// the provider(s) whose issuer is `iss` (every provider when the IdP
    /// sends no `iss`, as some do). Unsigned by design (the specification's):
    /// the `sid`, a secret of the user's IdP session, is what names it, and
    /// ending a session twice changes nothing.
    pub async fn frontchannel_logout(
        &self,
        iss: Option<&str>,
        sid: &str,
    ) -> Result<IdpSignOut, LogoutRequestError> {
        let inner = &self.inner;
        let providers = inner.providers.by_iss_parameter(iss);
        if providers.is_empty() {
            return Err(if inner.providers.all_loaded() {
                LogoutRequestError::Invalid("iss names no configured provider".into())
            } else {
                LogoutRequestError::Unavailable(
                    "an identity provider is not loaded yet; retry".into(),
                )
            });
        }
        let now = crate::time::now();
        let mut total = IdpSignOut {
            entries: 0,
            sessions: 0,
        };
        for provider in providers {
            let provider_id = provider.config().id.clone();
            let scope = match provider.config().frontchannel_logout_id {
                FrontchannelLogoutId::Sid => SignOutScope {
                    provider: provider_id.as_str(),
                    sub: None,
                    sid: Some(sid),
                },
                FrontchannelLogoutId::Sub => SignOutScope {
                    provider: provider_id.as_str(),
                    sub: Some(sid),
                    sid: None,
                },
            };
            let done = inner
                .end_idp_sessions(scope, None, now, "front-channel logout")
                .await?
                .unwrap_or_default();
            tracing::info!(
                provider = %provider_id,
                entries = done.entries.len(),
                sessions = done.sessions,
                "front-channel logout"
            );
            total.entries += done.entries.len();
            total.sessions += done.sessions;
        }
        Ok(total)
    }
}

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

impl TokenService {
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
}

impl Inner {
    /// Ends what chatgate holds of an IdP session (`scope`), for a back- or
    /// front-channel logout (`channel`): the vault entries and browser
    /// sessions go, with a `user.signed_out` event (reason `idp_signout`)
    /// and an audit record for each entry. `None` when `jti` was used before.
    async fn end_idp_sessions(
        &self,
        scope: SignOutScope<'_>,
        jti: Option<&Jti<'_>>,
        now: i64,
        channel: &'static str,
    ) -> Result<Option<SignedOutAtIdp>, LogoutRequestError> {
        let events = &self.events;
        let event = |app: &str, user_id: &str| {
            let app = AppId::parse(app).ok()?;
            let user_id = UserId::parse(user_id).ok()?;
            events.signed_out(&app, &user_id, SignOutReason::IdpSignOut, now)
        };
        let done = self
            .vault
            .end_idp_sessions(scope, jti, event)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot carry out a {channel}");
                LogoutRequestError::Unavailable("the database is unavailable; retry".into())
            })?;
        for (app, user_id) in done.iter().flat_map(|d| &d.entries) {
            let (Ok(app), Ok(user_id)) = (AppId::parse(app), UserId::parse(user_id)) else {
                continue;
            };
            self.store
                .audit(AuditEvent {
                    actor: "idp",
                    app: Some(&app),
                    user_id: Some(&user_id),
                    action: AuditAction::IdpSignOut,
                    outcome: AuditOutcome::Ok,
                    detail: Some(channel),
                })
                .await;
        }
        Ok(done)
    }

    /// Revokes a token set at its provider, the refresh token first (revoking
    /// it ends the grant at most IdPs). The answer is about the refresh token
    /// (the access token's, when there is none).
    pub(super) async fn revoke(
        &self,
        provider: &str,
        tokens: &crate::vault::TokenSet,
    ) -> Revocation {
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
