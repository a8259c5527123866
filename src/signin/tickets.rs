//! After a popup sign-in, a one-time ticket the widget redeems from the host
//! page (`POST /v1/session`), so chatgate's session also exists in the host
//! site's cookie partition and later silent sign-ins need no IdP round trip,
//! even where the browser blocks third-party cookies.

use super::{FlowError, FlowTarget, SessionSignIn, SignInService};
use crate::domain::{AppId, Origin};
use crate::secret::{random_token, sha256_hex};

/// How long a session ticket may wait to be redeemed.
const TICKET_TTL: i64 = 60;

impl SignInService {
    /// After a popup sign-in, a one-time ticket the widget redeems from the host
    /// page (`POST /v1/session`), so chatgate's session also exists in the host
    /// site's cookie partition and later silent sign-ins need no IdP round trip,
    /// even where the browser blocks third-party cookies.
    pub(super) async fn issue_ticket(
        &self,
        target: &FlowTarget,
        signin: &SessionSignIn,
        now: i64,
    ) -> Result<String, FlowError> {
        let ticket = random_token::<32>();
        let json = serde_json::to_vec(signin).map_err(|_| FlowError::server_error())?;
        self.inner
            .store
            .insert_session_ticket(
                &sha256_hex(ticket.as_bytes()),
                target.app.as_str(),
                target.origin.as_str(),
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

    /// Redeems a ticket for `(app, origin)`; `None` when unknown, used or expired.
    pub async fn redeem_ticket(
        &self,
        app: &AppId,
        origin: &Origin,
        ticket: &str,
        now: i64,
    ) -> Result<Option<SessionSignIn>, crate::store::StoreError> {
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
        Ok(json.and_then(|j| serde_json::from_slice(&j).ok()))
    }
}
