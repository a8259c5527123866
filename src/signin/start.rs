//! Starting a flow: a pending flow (state, nonce and PKCE verifier, sealed)
//! and the IdP's authorization URL.

use url::Url;

use super::{DB_RETRY_BUDGET, FlowError, Mode, SignInService, TicketHash, flow_aad};
use crate::config::AppConfig;
use crate::domain::Origin;
use crate::dpop::Jkt;
use crate::metrics::FlowEvent;
use crate::oidc::AuthorizationRequest;
use crate::secret::{random_token, sha256_hex};
use crate::store::{NewFlow, retry_transient};

/// A validated request to start a flow.
#[derive(Debug)]
pub struct StartRequest<'a> {
    pub app: &'a AppConfig,
    pub origin: &'a Origin,
    pub mode: Mode,
    pub login_hint: Option<&'a str>,
    pub domain_hint: Option<&'a str>,
    /// `login`, `consent` or `select_account` (popup only).
    pub prompt: Option<&'a str>,
    /// The browser key to bind the chat token to (`dpop_jkt`).
    pub dpop_jkt: Option<&'a Jkt>,
    /// The ticket the page waits for the flow's outcome by (`ticket_hash`;
    /// silent flows with a browser key only).
    pub ticket_hash: Option<&'a TicketHash>,
}

impl SignInService {
    /// Creates the pending flow and returns the IdP authorization URL.
    /// `binding` is the browser-binding cookie value.
    pub async fn start(
        &self,
        req: StartRequest<'_>,
        binding: &str,
        now: i64,
    ) -> Result<Url, FlowError> {
        let inner = &self.inner;
        let Some(provider_id) = &req.app.provider else {
            return Err(FlowError::invalid_request(
                "this app has no identity provider; use a host-signed token (POST /v1/host-session)",
            ));
        };
        let provider = inner.providers.get(provider_id.as_str()).ok_or_else(|| {
            FlowError::unavailable(
                "the identity provider is still being contacted; try again shortly",
            )
        })?;

        let flow_state = random_token::<32>();
        let nonce = random_token::<32>();
        let verifier = random_token::<32>(); // 43 characters: a valid PKCE verifier
        let state_hash = sha256_hex(flow_state.as_bytes());
        let row = [state_hash.as_str()];
        let keys = inner.vault.keys();
        let prompt = match req.mode {
            Mode::Silent => Some("none"),
            Mode::Popup => req.prompt,
        };
        let url = provider
            .authorization_url(&AuthorizationRequest {
                redirect_uri: &self.redirect_uri(),
                scopes: &req.app.scopes,
                state: &flow_state,
                nonce: &nonce,
                pkce_verifier: &verifier,
                prompt,
                login_hint: req.login_hint,
                domain_hint: req.domain_hint,
            })
            .map_err(FlowError::from)?;
        let binding_hash = sha256_hex(binding.as_bytes());
        let sealed_nonce = keys.seal(&flow_aad(&row, "nonce"), nonce.as_bytes());
        let sealed_verifier = keys.seal(&flow_aad(&row, "pkce_verifier"), verifier.as_bytes());
        retry_transient(DB_RETRY_BUDGET, || {
            inner.store.insert_flow(NewFlow {
                state_hash: &state_hash,
                binding_hash: &binding_hash,
                app: req.app.id.as_str(),
                provider: provider_id.as_str(),
                origin: req.origin.as_str(),
                mode: req.mode.as_str(),
                dpop_jkt: req.dpop_jkt.map(Jkt::as_str),
                ticket_hash: req.ticket_hash.map(TicketHash::as_str),
                nonce: sealed_nonce.clone(),
                pkce_verifier: sealed_verifier.clone(),
                created_at: now,
                expires_at: now + inner.config.flow_ttl.as_secs() as i64,
            })
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "cannot store a pending flow");
            FlowError::database(e.is_transient())
        })?;
        inner.metrics.flow(FlowEvent::Started, req.mode.as_str());
        Ok(url)
    }
}
