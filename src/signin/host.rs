//! The ways in for hosts that already know who their user is: a host-signed
//! userinfo token (`POST /v1/host-session`, checked by
//! [`crate::host_session`]) and an ID token the host page already holds
//! (`POST /v1/token-exchange`, checked by [`crate::token_exchange`]). Here
//! the check is made, counted and audited, the DPoP proof spent and the chat
//! token minted: one call, [`SignInService::host_sign_in`]. Neither stores
//! IdP tokens.

use super::{FlowError, Minted, SignInService};
use crate::audit::QueuedEvent;
use crate::chat_token::{ChatUser, Via};
use crate::config::AppConfig;
use crate::domain::{AuditAction, AuditOutcome, UserId};
use crate::dpop::Proof;
use crate::host_session::{self, HostTokenError, Limits};
use crate::metrics::FlowEvent;
use crate::store::{AuditEvent, StoreError};
use crate::token_exchange::{self, ExchangeError};

/// What the host presents.
#[derive(Debug, Clone, Copy)]
pub enum HostSignIn<'a> {
    /// A userinfo JWT the host's backend signed.
    UserinfoToken(&'a str),
    /// An ID token of the app's provider, issued to the app's client.
    IdToken(&'a str),
}

/// A user the host vouched for, with their chat token.
#[derive(Debug)]
pub struct HostSignedIn {
    pub user_id: UserId,
    pub name: Option<String>,
    pub email: Option<String>,
    pub minted: Minted,
}

/// Why a host's sign-in is refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum HostSignInError {
    #[error(transparent)]
    UserinfoToken(#[from] HostTokenError),
    #[error(transparent)]
    IdToken(#[from] ExchangeError),
    /// The DPoP proof was used before.
    #[error("the DPoP proof was used before")]
    ProofReplayed,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{}", .0.description)]
    Failed(FlowError),
}

/// Who the host vouched for, however it did.
struct Vouched {
    user_id: UserId,
    name: Option<String>,
    email: Option<String>,
    email_verified: bool,
    via: Via,
    auth_time: i64,
    action: AuditAction,
}

impl SignInService {
    /// Checks what the host presents, and mints the chat token (for a DPoP
    /// app bound to `proof`'s key, whose `jti` is spent only once the request
    /// was accepted).
    pub async fn host_sign_in(
        &self,
        app: &AppConfig,
        way: HostSignIn<'_>,
        proof: Option<&Proof>,
        now: i64,
    ) -> Result<HostSignedIn, HostSignInError> {
        let vouched = match way {
            HostSignIn::UserinfoToken(token) => self.userinfo_token(app, token, now).await?,
            HostSignIn::IdToken(id_token) => self.id_token(app, id_token, now).await?,
        };
        self.inner
            .store
            .audit(AuditEvent {
                actor: "user",
                app: Some(&app.id),
                user_id: Some(&vouched.user_id),
                action: vouched.action,
                outcome: AuditOutcome::Ok,
                detail: None,
            })
            .await;
        if let Some(proof) = proof
            && !self.spend_proof(proof).await?
        {
            return Err(HostSignInError::ProofReplayed);
        }
        let user = ChatUser {
            user_id: &vouched.user_id,
            via: vouched.via,
            auth_time: vouched.auth_time,
            name: vouched.name.as_deref(),
            email: vouched.email.as_deref(),
            email_verified: vouched.email_verified,
        };
        let minted = self
            .mint_user(app, &user, proof.map(|p| &p.jkt), now)
            .map_err(HostSignInError::Failed)?;
        let minted = self
            .with_direct_line(app, &vouched.user_id, minted, now)
            .await;
        Ok(HostSignedIn {
            user_id: vouched.user_id,
            name: vouched.name,
            email: vouched.email,
            minted,
        })
    }

    async fn userinfo_token(
        &self,
        app: &AppConfig,
        token: &str,
        now: i64,
    ) -> Result<Vouched, HostSignInError> {
        let config = &self.inner.config;
        let limits = Limits {
            clock_skew: config.clock_skew,
            max_ttl: config.max_host_token_ttl,
        };
        match host_session::verify(&self.inner.store, app, token, limits, now).await? {
            Ok(user) => {
                self.inner.metrics.host_token("ok");
                Ok(Vouched {
                    user_id: user.user_id,
                    name: user.name,
                    email: user.email,
                    email_verified: user.email_verified,
                    via: Via::Host,
                    auth_time: user.issued_at,
                    action: AuditAction::HostSession,
                })
            }
            Err(e) => {
                self.inner.metrics.host_token(e.code());
                self.audit_failed(app, AuditAction::HostSession, e.code())
                    .await;
                Err(e.into())
            }
        }
    }

    async fn id_token(
        &self,
        app: &AppConfig,
        id_token: &str,
        now: i64,
    ) -> Result<Vouched, HostSignInError> {
        let config = &self.inner.config;
        let exchanged = token_exchange::exchange(
            &self.inner.store,
            &self.inner.providers,
            app,
            id_token,
            config.max_id_token_age,
            config.clock_skew,
            now,
        )
        .await;
        match exchanged {
            Ok(user) => {
                self.inner
                    .metrics
                    .flow(FlowEvent::Completed, "token_exchange");
                Ok(Vouched {
                    user_id: user.user_id,
                    name: user.name,
                    email: user.email,
                    email_verified: user.email_verified,
                    via: Via::IdToken,
                    auth_time: user.auth_time.unwrap_or(now),
                    action: AuditAction::TokenExchange,
                })
            }
            Err(e) => {
                // A request the app's configuration refuses is nobody's attempt.
                if !matches!(e, ExchangeError::NotEnabled | ExchangeError::NoProvider) {
                    self.inner.metrics.flow(FlowEvent::Failed, "token_exchange");
                    self.audit_failed(app, AuditAction::TokenExchange, e.audit_detail())
                        .await;
                }
                Err(e.into())
            }
        }
    }

    /// A failed attempt, which anyone can cause: through the batched writer.
    async fn audit_failed(&self, app: &AppConfig, action: AuditAction, detail: &'static str) {
        self.inner
            .audit
            .record(QueuedEvent {
                at: crate::time::now(),
                actor: "user".into(),
                app: Some(app.id.clone()),
                user_id: None,
                action,
                outcome: AuditOutcome::Failed,
                detail: Some(detail.to_string()),
            })
            .await;
    }
}
