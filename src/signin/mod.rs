//! The server-side authorization-code flow (the main way in): start a flow,
//! complete it at the callback, renew from chatgate's session, and hand a
//! popup sign-in over to the embedding page's cookie partition.
//!
//! HTTP (query parsing, cookies, pages) lives in `web::signin`; this module
//! decides what is valid and what is stored. Every handler makes one call:
//! [`SignInService::start`], [`SignInService::complete_callback`],
//! [`SignInService::renew`], [`SignInService::redeem_ticket`], and for the
//! host page's fetch [`SignInService::renew_for_page`].

mod callback;
mod host;
mod key_binding;
mod page;
mod signout;
mod start;
mod tickets;
mod types;
mod waiters;

use std::sync::Arc;
use std::time::Duration;

pub use callback::{CallbackFailure, CallbackResult};
pub use host::{HostSignIn, HostSignInError};
pub use page::{PageRenewal, PageRenewalError, SessionUpdate};
pub use signout::{IdpSignoutError, PageSignOut, PageSignedOut};
pub use start::StartRequest;
pub use tickets::{Ticket, TicketHash};
pub use types::{CallbackParams, FlowError, FlowTarget, Minted, Mode, SessionSignIn};

use crate::audit::AuditLog;
use crate::chat_token::{ChatSubject, ChatUser, KeyDirectory, Via};
use crate::config::{AppConfig, Config};
use crate::direct_line::DirectLine;
use crate::dpop::Jkt;
use crate::metrics::{FlowEvent, Metrics};
use crate::oidc::Providers;
use crate::store::Store;
use crate::user_tokens::TokenService;
use crate::vault::{Aad, Vault};

/// How long one sign-in request rides a database blip out before it answers
/// `temporarily_unavailable` (well within the widget's 10 s timeout).
const DB_RETRY_BUDGET: Duration = Duration::from_secs(3);

/// The sign-in flow, with what it needs.
#[derive(Debug, Clone)]
pub struct SignInService {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<Config>,
    store: Store,
    vault: Vault,
    providers: Arc<Providers>,
    keys: Arc<KeyDirectory>,
    tokens: TokenService,
    metrics: Arc<Metrics>,
    audit: AuditLog,
    direct_line: DirectLine,
    /// Woken whenever this process stores a ticket: fetches waiting for a
    /// flow's outcome look again.
    tickets_stored: tokio::sync::Notify,
    /// This process's fetches waiting for a flow's outcome, which a callback
    /// here hands over in memory.
    waiters: waiters::Waiters<tickets::Stored>,
}

/// What a silent renewal from chatgate's session came to.
#[derive(Debug)]
pub enum Renewal {
    /// The session may stand in for the IdP: here is the chat token.
    Minted(Minted),
    /// It may not (refused by the IdP, signed out, a hint for someone else):
    /// ask the IdP.
    AskTheIdp,
    /// It cannot be told now (IdP or database unavailable).
    Failed(FlowError),
}

impl SignInService {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        store: Store,
        vault: Vault,
        providers: Arc<Providers>,
        keys: Arc<KeyDirectory>,
        tokens: TokenService,
        metrics: Arc<Metrics>,
        audit: AuditLog,
        direct_line: DirectLine,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                store,
                vault,
                providers,
                keys,
                tokens,
                metrics,
                audit,
                direct_line,
                tickets_stored: tokio::sync::Notify::new(),
                waiters: waiters::Waiters::default(),
            }),
        }
    }

    /// Records a DPoP proof's `jti` as used; `false` when it was used before.
    async fn spend_proof(
        &self,
        proof: &crate::dpop::Proof,
    ) -> Result<bool, crate::store::StoreError> {
        proof
            .spend(&self.inner.store, self.inner.config.clock_skew)
            .await
    }

    fn redirect_uri(&self) -> String {
        self.inner.config.public_url.join("/v1/callback")
    }

    /// Mints the chat token of a signed-in user; for an app that binds chat
    /// tokens to the browser's key (`bind_chat_tokens = "dpop"`), bound to
    /// `jkt` (`cnf`). Other apps' browser keys renew sign-ins but leave their
    /// tokens bearer tokens.
    pub fn mint(
        &self,
        app: &AppConfig,
        signin: &SessionSignIn,
        jkt: Option<&Jkt>,
        now: i64,
    ) -> Result<Minted, FlowError> {
        let user = ChatUser {
            user_id: &signin.user_id,
            via: Via::Oidc,
            auth_time: signin.auth_time,
            name: signin.name.as_deref(),
            email: signin.email.as_deref(),
            email_verified: signin.email_verified,
        };
        self.mint_user(app, &user, jkt, now)
    }

    /// The one place a chat token is minted, for any way in.
    fn mint_user(
        &self,
        app: &AppConfig,
        user: &ChatUser<'_>,
        jkt: Option<&Jkt>,
        now: i64,
    ) -> Result<Minted, FlowError> {
        let jkt = jkt.filter(|_| app.binds_dpop());
        let (chat_token, claims) = self
            .inner
            .keys
            .issuer()
            .mint(
                &ChatSubject {
                    app: &app.id,
                    audience: &app.chat_audience,
                    user,
                    jkt,
                },
                now,
            )
            .map_err(|e| {
                tracing::error!(error = %e, "cannot sign a chat token");
                FlowError::server_error()
            })?;
        Ok(Minted {
            chat_token,
            expires_at: claims.exp,
            jti: claims.jti,
            email_verified: claims.email_verified,
            direct_line: None,
        })
    }

    /// `minted` with a Direct Line token bound to the user, for an app with
    /// `[apps.direct_line]`. A Direct Line failure leaves the chat token
    /// usable and says why in `direct_line` (the page shows it).
    pub async fn with_direct_line(
        &self,
        app: &AppConfig,
        user: &crate::domain::UserId,
        mut minted: Minted,
        now: i64,
    ) -> Minted {
        minted.direct_line = self.inner.direct_line.token_for(app, user, now).await;
        minted
    }

    /// A silent renewal in the hidden frame: [`SignInService::renew`], and
    /// the browser key the frame named recorded as pending under the new
    /// token (confirmed when the page presents that token).
    pub async fn renew_in_frame(
        &self,
        app: &AppConfig,
        origin: &crate::domain::Origin,
        signin: &SessionSignIn,
        login_hint: Option<&str>,
        jkt: Option<&Jkt>,
        now: i64,
    ) -> Renewal {
        let renewal = self.renew(app, signin, login_hint, jkt, now).await;
        if let (Renewal::Minted(minted), Some(jkt)) = (&renewal, jkt)
            && let Err(e) = self.bind_pending(app, origin, jkt, signin, minted).await
        {
            tracing::warn!(error = %e, "cannot record the browser key of a renewal");
        }
        match renewal {
            // A page that loads signs in here: Web Chat needs its Direct Line token.
            Renewal::Minted(minted) => Renewal::Minted(
                self.with_direct_line(app, &signin.user_id, minted, now)
                    .await,
            ),
            other => other,
        }
    }

    /// A silent sign-in answered from chatgate's session: when the vault
    /// still holds a usable entry for the user — refreshed first once its
    /// access token has expired, so an account disabled at the IdP is noticed
    /// — and no `login_hint` names somebody else.
    pub async fn renew(
        &self,
        app: &AppConfig,
        signin: &SessionSignIn,
        login_hint: Option<&str>,
        jkt: Option<&Jkt>,
        now: i64,
    ) -> Renewal {
        if let Some(hint) = login_hint
            && !signin
                .email
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(hint))
        {
            return Renewal::AskTheIdp;
        }
        match self
            .inner
            .tokens
            .renewable(&app.id, &signin.user_id, signin.generation.as_deref())
            .await
        {
            Ok(true) => {}
            Ok(false) => return Renewal::AskTheIdp,
            Err(e) => {
                tracing::warn!(error = %e, "cannot tell whether the session may be renewed");
                let error = FlowError::unavailable(
                    "chatgate cannot reach the identity provider or its database; try again shortly",
                );
                self.inner.metrics.flow(FlowEvent::Failed, &error.code);
                return Renewal::Failed(error);
            }
        }
        match self.mint(app, signin, jkt, now) {
            Ok(minted) => {
                self.inner.metrics.flow(FlowEvent::Completed, "session");
                Renewal::Minted(minted)
            }
            Err(e) => Renewal::Failed(e),
        }
    }

    /// The app and origin a flow may post to, if still configured together.
    fn allowed(&self, target: &FlowTarget) -> Option<&AppConfig> {
        self.inner
            .config
            .app(target.app.as_str())
            .filter(|a| a.allows_origin(&target.origin))
    }
}

fn flow_aad<'a>(row: &'a [&'a str; 1], column: &'a str) -> Aad<'a> {
    Aad {
        table: "pending_flows",
        row,
        column,
    }
}
