//! One-time tickets the widget redeems from the host page with a fetch
//! (`POST /v1/session/token`, `POST /v1/session`):
//!
//! - after a popup sign-in, so chatgate's session also exists in the host
//!   site's cookie partition and later silent sign-ins need no IdP round trip;
//! - after a flow the browser finished without chatgate's cookie but with a
//!   browser key, which only a proof of that key redeems;
//! - for a silent flow whose page waits for its outcome by fetch: the page
//!   picked the ticket and named its hash ([`TicketHash`]) when it started the
//!   flow; the callback stores the outcome, a sign-in or the flow's error,
//!   under that hash (or hands it over in memory to the fetch waiting for it
//!   in this process: [`super::waiters`]) and the hidden frame loads no page
//!   at all. Such a ticket
//!   goes only to a fetch that presents the flow's browser-binding cookie
//!   (in the host site's cookie partition) as well as a proof of its key: no
//!   page of chatgate's, framed only by the app's origins, guards it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::waiters::{Answered, Answering, Handed};
use super::{FlowError, FlowTarget, SessionSignIn, SignInService};
use crate::config::AppConfig;
use crate::domain::{AppId, Origin};
use crate::dpop::Jkt;
use crate::secret::{random_token, sha256_hex};
use crate::store::NewTicket;

/// How long a session ticket may wait to be redeemed.
const TICKET_TTL: i64 = 60;

/// How long a page's fetch waits for a flow's outcome (`"wait": true`) before
/// it answers that the ticket is unknown; the widget's own silent timeout is
/// as long.
const TICKET_WAIT: Duration = Duration::from_secs(10);

/// How often a waiting fetch looks for its ticket in the database, for an
/// outcome stored by another replica (this process's own wake it at once).
const TICKET_POLL: Duration = Duration::from_millis(100);

/// The SHA-256, in 64 lowercase hex digits, of a ticket the page picked for
/// the outcome of its silent flow (`ticket_hash` of `GET /v1/authorize`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TicketHash(String);

impl TicketHash {
    pub fn parse(hex: &str) -> Option<Self> {
        (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| Self(hex.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a ticket stands for: the sign-in, and the browser key the flow was
/// started with (if any), which a proof at redemption binds to it.
#[derive(Serialize, Deserialize)]
pub(super) struct TicketPayload {
    #[serde(flatten)]
    signin: SessionSignIn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jkt: Option<String>,
}

/// A flow's error, kept for the page that waits for its outcome.
#[derive(Serialize, Deserialize)]
pub(super) struct FailedFlow {
    error: String,
    error_description: String,
}

/// A ticket as stored (or handed over): a sign-in, or (waited flows only)
/// the flow's error.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub(super) enum Stored {
    Failed { failed: FailedFlow },
    SignIn(TicketPayload),
}

/// A redeemed ticket.
#[derive(Debug)]
pub struct TicketSignIn {
    pub signin: SessionSignIn,
    /// The key the flow was started with.
    pub jkt: Option<Jkt>,
}

/// What a taken ticket held.
#[derive(Debug)]
pub enum Ticket {
    SignIn(TicketSignIn),
    /// The flow the page waited for ended with this error.
    Failed(FlowError),
}

/// A taken ticket; handed over in memory, with what its fetch holds until it
/// has answered (the callback that handed it over waits for that).
#[derive(Debug)]
pub(super) struct RedeemedTicket {
    pub ticket: Ticket,
    pub answering: Option<Answering>,
}

impl SignInService {
    /// A one-time ticket for `signin` (see the module documentation).
    /// `jkt`: the browser key the flow was started with.
    pub(super) async fn issue_ticket(
        &self,
        target: &FlowTarget,
        signin: &SessionSignIn,
        jkt: Option<&Jkt>,
        now: i64,
    ) -> Result<String, FlowError> {
        let ticket = random_token::<32>();
        let hash = TicketHash(sha256_hex(ticket.as_bytes()));
        self.store_outcome(target, &hash, None, Ok((signin, jkt)), now)
            .await?;
        Ok(ticket)
    }

    /// Stores a flow's outcome under the ticket the page waits for (only a
    /// fetch with the binding cookie of `binding_hash`, if given, takes it),
    /// or hands it to the waiting fetch if it waits in this process: then
    /// returns what tells when that fetch has answered.
    pub(super) async fn store_outcome(
        &self,
        target: &FlowTarget,
        hash: &TicketHash,
        binding_hash: Option<&str>,
        outcome: Result<(&SessionSignIn, Option<&Jkt>), &FlowError>,
        now: i64,
    ) -> Result<Option<Answered>, FlowError> {
        let (stored, user_id) = match outcome {
            Ok((signin, jkt)) => (
                Stored::SignIn(TicketPayload {
                    signin: signin.clone(),
                    jkt: jkt.map(ToString::to_string),
                }),
                Some(signin.user_id.as_str()),
            ),
            Err(error) => (
                Stored::Failed {
                    failed: FailedFlow {
                        error: error.code.clone(),
                        error_description: error.description.clone(),
                    },
                },
                None,
            ),
        };
        // The fetch waiting for it in this process takes it at once.
        let handed = Handed {
            binding_hash: binding_hash.map(str::to_string),
            outcome: stored,
        };
        let handed =
            match self
                .inner
                .waiters
                .hand_over(hash.as_str(), &target.app, &target.origin, handed)
            {
                Ok(answered) => return Ok(Some(answered)),
                Err(handed) => handed,
            };
        let json = serde_json::to_vec(&handed.outcome).map_err(|_| FlowError::server_error())?;
        self.inner
            .store
            .insert_session_ticket(NewTicket {
                ticket_hash: hash.as_str(),
                app: target.app.as_str(),
                origin: target.origin.as_str(),
                user_id,
                binding_hash,
                signin: &json,
                expires_at: now + TICKET_TTL,
            })
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot store a session ticket");
                FlowError::server_error()
            })?;
        self.inner.tickets_stored.notify_waiters();
        Ok(None)
    }

    /// Redeems a ticket for `(app, origin)`; `None` when unknown, used,
    /// expired (after waiting up to [`TICKET_WAIT`] for it, with `wait`), or
    /// bound to a flow-binding cookie that is not among `bindings` (the
    /// values the request's cookies hold).
    /// With `proven` (the key a DPoP proof of the request shows) equal
    /// to the key the flow was started with, that key renews the sign-in from
    /// now on, cookie or not: the ticket went only to the app's page, the
    /// proof shows the page holds the key.
    pub async fn redeem_ticket(
        &self,
        app: &AppConfig,
        origin: &Origin,
        ticket: &str,
        proven: Option<&Jkt>,
        bindings: &[String],
        wait: bool,
    ) -> Result<Option<Ticket>, crate::store::StoreError> {
        let taken = self
            .take_redeemed(app, origin, ticket, bindings, wait)
            .await?
            .map(|taken| taken.ticket);
        if let (Some(Ticket::SignIn(redeemed)), Some(proven)) = (&taken, proven)
            && redeemed.jkt.as_ref() == Some(proven)
        {
            self.bind_confirmed(app, origin, proven, &redeemed.signin, crate::time::now())
                .await?;
        }
        Ok(taken)
    }

    /// [`SignInService::redeem_ticket`] without binding a key: the ticket,
    /// taken.
    pub(super) async fn take_redeemed(
        &self,
        app: &AppConfig,
        origin: &Origin,
        ticket: &str,
        bindings: &[String],
        wait: bool,
    ) -> Result<Option<RedeemedTicket>, crate::store::StoreError> {
        let hash = sha256_hex(ticket.as_bytes());
        let deadline =
            tokio::time::Instant::now() + if wait { TICKET_WAIT } else { Duration::ZERO };
        // A callback in this process hands the outcome over; one elsewhere
        // stores it, and the database is looked at again.
        let mut waiter = wait.then(|| self.inner.waiters.wait(&hash, &app.id, origin));
        let taken = loop {
            // Armed before the look, so an outcome stored in between wakes it.
            let stored = self.inner.tickets_stored.notified();
            tokio::pin!(stored);
            stored.as_mut().enable();
            match self.take_ticket(&app.id, origin, &hash, bindings).await? {
                Some(Some(ticket)) => {
                    break RedeemedTicket {
                        ticket,
                        answering: None,
                    };
                }
                Some(None) => return Ok(None),
                None => {}
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let handed = async {
                match waiter.as_mut() {
                    Some(waiter) => waiter.handed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                (handed, answering) = handed => match opened(handed.binding_hash.as_deref(), Some(handed.outcome), bindings) {
                    Some(ticket) => break RedeemedTicket { ticket, answering: Some(answering) },
                    None => return Ok(None),
                },
                _ = tokio::time::timeout(left.min(TICKET_POLL), stored) => {}
            }
        };
        Ok(Some(taken))
    }

    /// The ticket of `hash` from the database. `Some(None)`: taken, but
    /// this browser does not hold its binding cookie.
    async fn take_ticket(
        &self,
        app: &AppId,
        origin: &Origin,
        hash: &str,
        bindings: &[String],
    ) -> Result<Option<Option<Ticket>>, crate::store::StoreError> {
        let taken = self
            .inner
            .store
            .take_session_ticket(hash, app.as_str(), origin.as_str(), crate::time::now())
            .await?;
        Ok(taken.map(|taken| {
            opened(
                taken.binding_hash.as_deref(),
                serde_json::from_slice::<Stored>(&taken.signin).ok(),
                bindings,
            )
        }))
    }
}

/// A taken ticket, for a browser whose cookies hold `bindings`: `None` when
/// it is bound to a cookie (`binding_hash`) the browser does not hold, or
/// unreadable.
fn opened(
    binding_hash: Option<&str>,
    stored: Option<Stored>,
    bindings: &[String],
) -> Option<Ticket> {
    if let Some(required) = binding_hash
        && !bindings
            .iter()
            .any(|b| sha256_hex(b.as_bytes()) == required)
    {
        return None;
    }
    stored.map(|stored| match stored {
        Stored::SignIn(p) => Ticket::SignIn(TicketSignIn {
            signin: p.signin,
            jkt: p.jkt.as_deref().and_then(Jkt::parse),
        }),
        Stored::Failed { failed } => {
            Ticket::Failed(FlowError::new(&failed.error, failed.error_description))
        }
    })
}
