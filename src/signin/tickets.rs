//! After a popup sign-in, a one-time ticket the widget redeems from the host
//! page (`POST /v1/session`), so chatgate's session also exists in the host
//! site's cookie partition and later silent sign-ins need no IdP round trip,
//! even where the browser blocks third-party cookies.

use serde::{Deserialize, Serialize};

use super::{FlowError, FlowTarget, SessionSignIn, SignInService};
use crate::config::AppConfig;
use crate::domain::{AppId, Origin};
use crate::dpop::Jkt;
use crate::secret::{random_token, sha256_hex};

/// How long a session ticket may wait to be redeemed.
const TICKET_TTL: i64 = 60;

/// What a ticket stands for: the sign-in, and the browser key the flow was
/// started with (if any), which a proof at redemption binds to it.
#[derive(Serialize, Deserialize)]
struct TicketPayload {
    #[serde(flatten)]
    signin: SessionSignIn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    jkt: Option<String>,
}

/// A redeemed ticket.
#[derive(Debug)]
pub struct TicketSignIn {
    pub signin: SessionSignIn,
    /// The key the flow was started with.
    pub jkt: Option<Jkt>,
}

impl SignInService {
    /// After a popup sign-in, a one-time ticket the widget redeems from the host
    /// page (`POST /v1/session`), so chatgate's session also exists in the host
    /// site's cookie partition and later silent sign-ins need no IdP round trip,
    /// even where the browser blocks third-party cookies.
    /// `jkt`: the browser key the flow was started with.
    pub(super) async fn issue_ticket(
        &self,
        target: &FlowTarget,
        signin: &SessionSignIn,
        jkt: Option<&Jkt>,
        now: i64,
    ) -> Result<String, FlowError> {
        let ticket = random_token::<32>();
        let payload = TicketPayload {
            signin: signin.clone(),
            jkt: jkt.map(ToString::to_string),
        };
        let json = serde_json::to_vec(&payload).map_err(|_| FlowError::server_error())?;
        self.inner
            .store
            .insert_session_ticket(
                &sha256_hex(ticket.as_bytes()),
                target.app.as_str(),
                target.origin.as_str(),
                signin.user_id.as_str(),
                &json,
                now + TICKET_TTL,
            )
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot store a session ticket");
                FlowError::server_error()
            })?;
        Ok(ticket)
    }

    /// Redeems a ticket for `(app, origin)`; `None` when unknown, used or
    /// expired. With `proven` (the key a DPoP proof of the request shows) equal
    /// to the key the flow was started with, that key renews the sign-in from
    /// now on, cookie or not: the ticket went only to the app's page, the
    /// proof shows the page holds the key.
    pub async fn redeem_ticket(
        &self,
        app: &AppConfig,
        origin: &Origin,
        ticket: &str,
        proven: Option<&Jkt>,
        now: i64,
    ) -> Result<Option<TicketSignIn>, crate::store::StoreError> {
        let Some(redeemed) = self.take_ticket(&app.id, origin, ticket, now).await? else {
            return Ok(None);
        };
        if let (Some(jkt), Some(proven)) = (&redeemed.jkt, proven)
            && jkt == proven
        {
            self.bind_confirmed(app, origin, jkt, &redeemed.signin, now)
                .await?;
        }
        Ok(Some(redeemed))
    }

    async fn take_ticket(
        &self,
        app: &AppId,
        origin: &Origin,
        ticket: &str,
        now: i64,
    ) -> Result<Option<TicketSignIn>, crate::store::StoreError> {
        let json = self
            .inner
            .store
            .take_session_ticket(
                &sha256_hex(ticket.as_bytes()),
                app.as_str(),
                origin.as_str(),
                now,
            )
            .await?;
        Ok(json
            .and_then(|j| serde_json::from_slice::<TicketPayload>(&j).ok())
            .map(|p| TicketSignIn {
                signin: p.signin,
                jkt: p.jkt.as_deref().and_then(Jkt::parse),
            }))
    }
}
