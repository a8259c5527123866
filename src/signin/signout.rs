//! Signing out at the IdP from the widget (OpenID Connect RP-Initiated
//! Logout 1.0), in three steps:
//!
//! 1. `POST /v1/signout` with `idp: true` (from the host page, before the
//!    local sign-out deletes the vault entry): [`SignInService::start_idp_signout`]
//!    keeps the user's last ID token (sealed) under a one-time ticket and
//!    answers the URL of step 2.
//! 2. `GET /v1/idp-signout?ticket=` (in the popup the widget opened from the
//!    click): [`SignInService::idp_signout_redirect`] uses the ticket and
//!    sends the browser to the IdP's `end_session_endpoint` with
//!    `id_token_hint`, `client_id`, `post_logout_redirect_uri =
//!    {public_url}/v1/signed-out` and a fresh `state`.
//! 3. `GET /v1/signed-out?state=` (the IdP's redirect back):
//!    [`SignInService::finish_idp_signout`] names the app and exact origin the
//!    popup then posts `chatgate:signed_out` to.

use super::SignInService;
use crate::config::AppConfig;
use crate::domain::{AppId, Origin, UserId};
use crate::secret::ExposeSecret as _;
use crate::secret::{SecretString, random_token, sha256_hex};
use crate::store::{IdpSignoutRow, StoreError};
use crate::vault::Aad;

/// How long an IdP sign-out may take, from the widget's request to the IdP's
/// redirect back (the user may have to confirm at the IdP).
const IDP_SIGNOUT_TTL: i64 = 600;
const ID_TOKEN_COLUMN: &str = "id_token";

/// The sealed ID token is bound to its row.
fn aad<'a>(row: &'a [&'a str; 1]) -> Aad<'a> {
    Aad {
        table: "idp_signouts",
        row,
        column: ID_TOKEN_COLUMN,
    }
}

/// Why an IdP sign-out cannot go ahead.
#[derive(Debug, thiserror::Error)]
pub enum IdpSignoutError {
    /// The IdP has no `end_session_endpoint` (`idp_signout_unsupported`).
    #[error("the identity provider does not support signing out from chatgate")]
    Unsupported,
    /// The provider is not loaded yet (`temporarily_unavailable`).
    #[error("the identity provider is not loaded yet; try again")]
    ProviderNotLoaded,
    /// The ticket or the state is unknown, used or expired.
    #[error("this sign-out link is unknown, used or expired")]
    Unknown,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IdpSignoutError {
    /// What a response may say: never the database's own words.
    pub fn public_description(&self) -> String {
        match self {
            Self::Store(_) => "chatgate's database is unavailable; try again shortly".into(),
            other => other.to_string(),
        }
    }
}

/// Where the IdP's redirect back goes.
#[derive(Debug, Clone)]
pub struct SignedOut {
    pub app: AppId,
    pub origin: Origin,
}

impl SignInService {
    /// Step 1: the URL of the popup that signs `user` (the sign-in the local
    /// sign-out just ended, if any) out at the IdP of `app`.
    pub async fn start_idp_signout(
        &self,
        app: &AppConfig,
        origin: &Origin,
        user: Option<&UserId>,
        now: i64,
    ) -> Result<String, IdpSignoutError> {
        let provider_id = match user.filter(|u| u.namespace() != "host") {
            Some(user) => user.namespace().to_string(),
            None => match &app.provider {
                Some(p) => p.to_string(),
                None => self
                    .inner
                    .config
                    .providers
                    .first()
                    .map(|p| p.id.to_string())
                    .ok_or(IdpSignoutError::Unsupported)?,
            },
        };
        let provider = self
            .inner
            .providers
            .get(&provider_id)
            .ok_or(IdpSignoutError::ProviderNotLoaded)?;
        if !provider.end_session_supported() {
            return Err(IdpSignoutError::Unsupported);
        }
        let hint = match user {
            Some(user) => self
                .inner
                .vault
                .id_token_hint(&app.id, user)
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read the ID token for id_token_hint; signing out without it");
                    None
                }),
            None => None,
        };
        let ticket = random_token::<32>();
        let ticket_hash = sha256_hex(ticket.as_bytes());
        let ids = [ticket_hash.as_str()];
        let id_token = hint.map(|h| {
            self.inner
                .vault
                .keys()
                .seal(&aad(&ids), h.expose_secret().as_bytes())
        });
        self.inner
            .store
            .insert_idp_signout(
                &ticket_hash,
                &IdpSignoutRow {
                    app: app.id.to_string(),
                    origin: origin.to_string(),
                    provider: provider_id,
                    id_token,
                },
                now + IDP_SIGNOUT_TTL,
            )
            .await?;
        let mut url = url::Url::parse(&self.inner.config.public_url.join("/v1/idp-signout"))
            .map_err(|_| IdpSignoutError::Unsupported)?;
        url.query_pairs_mut().append_pair("ticket", &ticket);
        Ok(url.to_string())
    }

    /// Step 2: the IdP's `end_session_endpoint` URL for a ticket, once.
    pub async fn idp_signout_redirect(
        &self,
        ticket: &str,
        now: i64,
    ) -> Result<url::Url, IdpSignoutError> {
        let ticket_hash = sha256_hex(ticket.as_bytes());
        let state = random_token::<32>();
        let row = self
            .inner
            .store
            .use_idp_signout_ticket(&ticket_hash, &sha256_hex(state.as_bytes()), now)
            .await?
            .ok_or(IdpSignoutError::Unknown)?;
        let provider = self
            .inner
            .providers
            .get(&row.provider)
            .ok_or(IdpSignoutError::ProviderNotLoaded)?;
        let ids = [ticket_hash.as_str()];
        let hint = row.id_token.as_deref().and_then(|sealed| {
            let aad = aad(&ids);
            let plain = self.inner.vault.keys().open(&aad, sealed).ok()?;
            String::from_utf8(plain.expose_secret().to_vec())
                .ok()
                .map(SecretString::from)
        });
        provider
            .end_session_url(
                hint.as_ref(),
                &self.inner.config.public_url.join("/v1/signed-out"),
                &state,
            )
            .ok_or(IdpSignoutError::Unsupported)
    }

    /// Step 3: the app and origin of the sign-out the IdP returned from, once.
    pub async fn finish_idp_signout(
        &self,
        state: &str,
        now: i64,
    ) -> Result<SignedOut, IdpSignoutError> {
        let (app, origin) = self
            .inner
            .store
            .take_idp_signout_state(&sha256_hex(state.as_bytes()), now)
            .await?
            .ok_or(IdpSignoutError::Unknown)?;
        let app = AppId::parse(app).map_err(|_| IdpSignoutError::Unknown)?;
        let origin = Origin::parse(&origin).map_err(|_| IdpSignoutError::Unknown)?;
        // Only to an origin the app still allows.
        let allowed = self
            .inner
            .config
            .app(app.as_str())
            .is_some_and(|a| a.origins.contains(&origin));
        if !allowed {
            return Err(IdpSignoutError::Unknown);
        }
        Ok(SignedOut { app, origin })
    }
}
