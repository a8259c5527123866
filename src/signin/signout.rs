//! The page's sign-out (`POST /v1/signout`: [`SignInService::sign_out_page`]),
//! and signing out at the IdP from the widget (OpenID Connect RP-Initiated
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

use super::{SessionSignIn, SignInService};
use crate::config::AppConfig;
use crate::domain::{AppId, Origin, UserId};
use crate::dpop::Jkt;
use crate::events::SignOutReason;
use crate::secret::ExposeSecret as _;
use crate::secret::{SecretString, random_token, sha256_hex};
use crate::store::{IdpSignoutRow, StoreError};
use crate::user_tokens::Revocation;
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

/// What the page asked for at `POST /v1/signout`.
#[derive(Debug)]
pub struct PageSignOut<'a> {
    pub app: &'a AppConfig,
    pub origin: &'a Origin,
    /// The sign-in chatgate's cookie named (already removed from the session).
    pub from_cookie: Option<SessionSignIn>,
    /// The browser key a checked DPoP proof showed.
    pub key: Option<&'a Jkt>,
    /// Also sign the user out of the app everywhere, revoking at the IdP.
    pub revoke: bool,
    /// Also start the sign-out at the IdP (the popup's URL).
    pub idp: bool,
    pub now: i64,
}

/// What a page's sign-out came to.
#[derive(Debug)]
pub struct PageSignedOut {
    /// A sign-in (by cookie or key) ended.
    pub signed_out: bool,
    /// With `revoke`: what the IdP said of the grant.
    pub revocation: Option<Revocation>,
    /// With `idp`: the popup's next stop, or why there is none.
    pub idp_signout: Option<Result<String, IdpSignoutError>>,
}

impl SignInService {
    /// `POST /v1/signout`: forgets the page's browser key, starts the IdP
    /// sign-out when asked (before the vault entry goes: it needs the ID
    /// token), and with `revoke` signs the user out of the app everywhere.
    pub async fn sign_out_page(
        &self,
        req: PageSignOut<'_>,
    ) -> Result<PageSignedOut, crate::vault::VaultError> {
        let mut ended = req.from_cookie;
        if let Some(jkt) = req.key {
            let bound = self
                .bound_signin(req.app, req.origin, jkt, None, req.now)
                .await?;
            let forgotten = self.forget_key(req.app, jkt).await?;
            if ended.is_none() && forgotten {
                ended = bound;
            }
        }
        let idp_signout = match req.idp {
            true => Some(
                self.start_idp_signout(
                    req.app,
                    req.origin,
                    ended.as_ref().map(|s| &s.user_id),
                    req.now,
                )
                .await,
            ),
            false => None,
        };
        let revocation = match (&ended, req.revoke) {
            (Some(signin), true) => Some(
                self.inner
                    .tokens
                    .sign_out(&req.app.id, &signin.user_id, "user", SignOutReason::Widget)
                    .await?
                    .revocation,
            ),
            _ => None,
        };
        Ok(PageSignedOut {
            signed_out: ended.is_some(),
            revocation,
            idp_signout,
        })
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
    /// The code of `idp_signout_error`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unsupported => "idp_signout_unsupported",
            _ => "temporarily_unavailable",
        }
    }

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
