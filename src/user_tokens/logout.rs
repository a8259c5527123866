//! Logout from the IdP: Back-Channel Logout 1.0 (the IdP POSTs a signed
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

use super::TokenService;
use crate::config::FrontchannelLogoutId;
use crate::domain::{AppId, AuditAction, AuditOutcome, UserId};
use crate::events::SignOutReason;
use crate::oidc::{LogoutTokenError, unverified_issuer};
use crate::store::{AuditEvent, Jti, LogoutScope};

/// What a logout ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdpLogout {
    /// Vault entries deleted (one per app the user had signed in to).
    pub entries: usize,
    /// Browser sessions ended.
    pub sessions: u64,
}

/// Why a logout token was refused or could not be acted on.
#[derive(Debug, thiserror::Error)]
pub enum LogoutError {
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
    pub async fn backchannel_logout(&self, logout_token: &str) -> Result<IdpLogout, LogoutError> {
        let result = self.end_idp_session(logout_token).await;
        self.inner.metrics.backchannel_logout(match &result {
            Ok(_) => "ok",
            Err(LogoutError::Invalid(_)) => "invalid",
            Err(LogoutError::Replayed) => "replayed",
            Err(LogoutError::Unavailable(_)) => "unavailable",
        });
        result
    }

    async fn end_idp_session(&self, logout_token: &str) -> Result<IdpLogout, LogoutError> {
        let inner = &self.inner;
        let claimed = unverified_issuer(logout_token).ok_or_else(|| {
            LogoutError::Invalid("the logout token is not a JWT with an iss".into())
        })?;
        let Some(provider) = inner.providers.for_token(&claimed) else {
            return Err(if inner.providers.all_loaded() {
                LogoutError::Invalid(
                    "the logout token's iss and aud name no configured provider".into(),
                )
            } else {
                LogoutError::Unavailable("an identity provider is not loaded yet; retry".into())
            });
        };
        let now = crate::time::now();
        let token = provider
            .verify_logout_token(logout_token, now, inner.settings.clock_skew)
            .await
            .map_err(|e| match e {
                LogoutTokenError::Invalid(why) => LogoutError::Invalid(why),
                e @ LogoutTokenError::UnknownKey => LogoutError::Invalid(e.to_string()),
            })?;
        let provider_id = provider.config().id.clone();
        let replay_scope = format!("logout:{provider_id}");
        let scope = LogoutScope {
            provider: provider_id.as_str(),
            sub: token.sub.as_deref(),
            sid: token.sid.as_deref(),
        };
        let jti = Jti {
            scope: &replay_scope,
            id: &token.jti,
            expires_at: token.remember_until,
        };
        let events = &inner.events;
        let event = |app: &str, user_id: &str| {
            let app = AppId::parse(app).ok()?;
            let user_id = UserId::parse(user_id).ok()?;
            events.signed_out(&app, &user_id, SignOutReason::IdpLogout, now)
        };
        let done = inner
            .vault
            .end_idp_sessions(scope, Some(&jti), event)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot carry out a back-channel logout");
                LogoutError::Unavailable("the database is unavailable; retry".into())
            })?
            .ok_or(LogoutError::Replayed)?;
        if !done.entries.is_empty() && !events.is_empty() {
            inner.wake_deliverer();
        }
        tracing::info!(
            provider = %provider_id,
            by_sub = token.sub.is_some(),
            by_sid = token.sid.is_some(),
            entries = done.entries.len(),
            sessions = done.sessions,
            "back-channel logout"
        );
        for (app, user_id) in &done.entries {
            let (Ok(app), Ok(user_id)) = (AppId::parse(app), UserId::parse(user_id)) else {
                continue;
            };
            inner
                .store
                .audit(AuditEvent {
                    actor: "idp",
                    app: Some(&app),
                    user_id: Some(&user_id),
                    action: AuditAction::IdpLogout,
                    outcome: AuditOutcome::Ok,
                    detail: Some("back-channel logout"),
                })
                .await;
        }
        // Other replicas may hold a deleted entry in their read caches for
        // this long; the IdP hears "done" only when none can serve it.
        tokio::time::sleep(inner.settings.read_cache_ttl).await;
        Ok(IdpLogout {
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
    ) -> Result<IdpLogout, LogoutError> {
        let inner = &self.inner;
        let providers = inner.providers.by_iss_parameter(iss);
        if providers.is_empty() {
            return Err(if inner.providers.all_loaded() {
                LogoutError::Invalid("iss names no configured provider".into())
            } else {
                LogoutError::Unavailable("an identity provider is not loaded yet; retry".into())
            });
        }
        let now = crate::time::now();
        let events = &inner.events;
        let event = |app: &str, user_id: &str| {
            let app = AppId::parse(app).ok()?;
            let user_id = UserId::parse(user_id).ok()?;
            events.signed_out(&app, &user_id, SignOutReason::IdpLogout, now)
        };
        let mut total = IdpLogout {
            entries: 0,
            sessions: 0,
        };
        for provider in providers {
            let provider_id = provider.config().id.clone();
            let scope = match provider.config().frontchannel_logout_id {
                FrontchannelLogoutId::Sid => LogoutScope {
                    provider: provider_id.as_str(),
                    sub: None,
                    sid: Some(sid),
                },
                FrontchannelLogoutId::Sub => LogoutScope {
                    provider: provider_id.as_str(),
                    sub: Some(sid),
                    sid: None,
                },
            };
            let done = inner
                .vault
                .end_idp_sessions(scope, None, event)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %e, "cannot carry out a front-channel logout");
                    LogoutError::Unavailable("the database is unavailable; retry".into())
                })?
                .unwrap_or_default();
            tracing::info!(
                provider = %provider_id,
                entries = done.entries.len(),
                sessions = done.sessions,
                "front-channel logout"
            );
            for (app, user_id) in &done.entries {
                let (Ok(app), Ok(user_id)) = (AppId::parse(app), UserId::parse(user_id)) else {
                    continue;
                };
                inner
                    .store
                    .audit(AuditEvent {
                        actor: "idp",
                        app: Some(&app),
                        user_id: Some(&user_id),
                        action: AuditAction::IdpLogout,
                        outcome: AuditOutcome::Ok,
                        detail: Some("front-channel logout"),
                    })
                    .await;
            }
            total.entries += done.entries.len();
            total.sessions += done.sessions;
        }
        if total.entries > 0 && !events.is_empty() {
            inner.wake_deliverer();
        }
        Ok(total)
    }
}
