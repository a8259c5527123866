//! A renewal the host page asks for by fetch (`POST /v1/session/token`):
//! from chatgate's cookie session, from the browser key a DPoP proof shows
//! (confirming a pending binding when the page presents the token that names
//! it), or by redeeming the ticket of a flow the browser finished without the
//! cookie. One call, [`SignInService::renew_for_page`]; the handler reads and
//! writes the cookie session and turns the answer into JSON.

use super::waiters::Answering;
use super::{FlowError, Minted, Renewal, SessionSignIn, SignInService, Ticket};
use crate::config::AppConfig;
use crate::domain::Origin;
use crate::dpop::{Jkt, Proof};
use crate::store::StoreError;

/// What the page's fetch presents.
#[derive(Debug)]
pub struct PageRenewal<'a> {
    pub app: &'a AppConfig,
    pub origin: &'a Origin,
    /// The sign-in chatgate's cookie session names for this app and origin.
    pub from_cookie: Option<SessionSignIn>,
    /// A checked (not yet spent) DPoP proof of the page's browser key.
    pub proof: Option<&'a Proof>,
    /// The chat token an iframe sign-in just delivered (confirms its key).
    pub chat_token: Option<&'a str>,
    /// The ticket of a `chatgate:ticket` message, or the one the page
    /// picked for a silent flow's outcome.
    pub ticket: Option<&'a str>,
    /// Wait (up to 10 s) for the outcome of the flow the ticket was picked for.
    pub wait: bool,
    /// The flow-binding cookie values the request carries (a waited-for
    /// flow's ticket goes only to the browser holding its cookie).
    pub bindings: &'a [String],
    /// The page asks for a Direct Line token (it holds none that is fresh);
    /// a redeemed ticket is a sign-in and always gets one.
    pub direct_line: bool,
    pub now: i64,
}

/// A renewed sign-in.
#[derive(Debug)]
pub struct PageRenewed {
    pub signin: SessionSignIn,
    pub minted: Minted,
    /// What chatgate's cookie session should do now.
    pub session: SessionUpdate,
    /// A waited flow's outcome handed over in memory: held until the
    /// answer is made (the callback answers its frame only after it).
    pub answering: Option<Answering>,
}

/// The cookie session after a renewal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionUpdate {
    /// Nothing (the key renewed, no cookie session was involved).
    Keep,
    /// It slides: idle time counts from now.
    Touch,
    /// It records the sign-in (a redeemed ticket).
    Put,
}

/// Why a page's renewal is refused or cannot be told now.
#[derive(Debug, thiserror::Error)]
pub enum PageRenewalError {
    /// Neither cookie nor key can stand in for the IdP.
    #[error("chatgate's session cannot renew this sign-in; sign in through the identity provider")]
    LoginRequired,
    /// A ticket came without a proof of the key its flow was started with.
    #[error("a ticket is redeemed with a DPoP proof of the key its sign-in was started with")]
    ProofRequired,
    /// The proof was used before.
    #[error("the DPoP proof was used before")]
    ProofReplayed,
    #[error("the ticket is unknown, used or expired")]
    UnknownTicket,
    /// The flow the page waited for ended with this error.
    #[error("{}", .0.description)]
    Flow(FlowError),
    /// The IdP or the database cannot be reached now.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SignInService {
    /// The page's renewal; see the module documentation.
    pub async fn renew_for_page(
        &self,
        req: PageRenewal<'_>,
    ) -> Result<PageRenewed, PageRenewalError> {
        let PageRenewal {
            app, origin, now, ..
        } = req;
        let jkt = req.proof.map(|p| &p.jkt);
        if let Some(ticket) = req.ticket {
            let proof = req.proof.ok_or(PageRenewalError::ProofRequired)?;
            self.spend(proof).await?;
            let Some(taken) = self
                .take_redeemed(app, origin, ticket, req.bindings, req.wait)
                .await?
            else {
                return Err(PageRenewalError::UnknownTicket);
            };
            let redeemed = match taken.ticket {
                Ticket::SignIn(r) if r.jkt.as_ref() == Some(&proof.jkt) => r,
                Ticket::Failed(error) => return Err(PageRenewalError::Flow(error)),
                Ticket::SignIn(_) => return Err(PageRenewalError::UnknownTicket),
            };
            let now = crate::time::now();
            // The proven key renews the sign-in from now on (see
            // `redeem_ticket`). Its binding is written while the vault is
            // asked whether the sign-in may be renewed: a write beside a
            // read, which neither database makes wait for the other.
            let (bound, minted) = tokio::join!(
                self.bind_confirmed(app, origin, &proof.jkt, &redeemed.signin, now),
                self.minted(app, &redeemed.signin, jkt, now),
            );
            bound?;
            let minted = minted?;
            let minted = self
                .with_direct_line(app, &redeemed.signin.user_id, minted, now)
                .await;
            return Ok(PageRenewed {
                signin: redeemed.signin,
                minted,
                session: SessionUpdate::Put,
                answering: taken.answering,
            });
        }
        let (signin, by_key) = match (req.from_cookie, jkt) {
            (Some(signin), _) => (signin, false),
            (None, Some(jkt)) => {
                let signin = self
                    .bound_signin(app, origin, jkt, req.chat_token, now)
                    .await?
                    .ok_or(PageRenewalError::LoginRequired)?;
                (signin, true)
            }
            (None, None) => return Err(PageRenewalError::LoginRequired),
        };
        // Only now, the request authorized, is the proof's jti recorded: random
        // keys and proofs store nothing.
        if let Some(proof) = req.proof {
            self.spend(proof).await?;
        }
        let minted = self.minted(app, &signin, jkt, now).await?;
        // The session (or the key's binding) slides: idle time counts from
        // this renewal. A cookie renewal with a proof binds the key.
        let (slid, session) = match jkt {
            Some(jkt) if by_key => (self.touch_binding(app, jkt, now).await, SessionUpdate::Keep),
            Some(jkt) => (
                self.bind_confirmed(app, origin, jkt, &signin, now).await,
                SessionUpdate::Touch,
            ),
            None => (Ok(()), SessionUpdate::Touch),
        };
        if let Err(e) = slid {
            tracing::warn!(error = %e, "cannot record the use of a browser key");
        }
        let minted = if req.direct_line {
            self.with_direct_line(app, &signin.user_id, minted, now)
                .await
        } else {
            minted
        };
        Ok(PageRenewed {
            signin,
            minted,
            session,
            answering: None,
        })
    }

    /// A chat token for `signin`, if the vault still allows renewing it.
    async fn minted(
        &self,
        app: &AppConfig,
        signin: &SessionSignIn,
        jkt: Option<&Jkt>,
        now: i64,
    ) -> Result<Minted, PageRenewalError> {
        match self.renew(app, signin, None, jkt, now).await {
            Renewal::Minted(minted) => Ok(minted),
            Renewal::AskTheIdp => Err(PageRenewalError::LoginRequired),
            Renewal::Failed(error) if error.is_unavailable() => {
                Err(PageRenewalError::Unavailable(error.description))
            }
            Renewal::Failed(error) => Err(PageRenewalError::Failed(error.description)),
        }
    }

    /// Records a proof's `jti` as used; a second use is refused.
    async fn spend(&self, proof: &Proof) -> Result<(), PageRenewalError> {
        if self.spend_proof(proof).await? {
            Ok(())
        } else {
            Err(PageRenewalError::ProofReplayed)
        }
    }
}
