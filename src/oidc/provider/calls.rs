//! The calls chatgate makes to a provider: the authorization URL, code
//! exchange, refresh, userinfo, revocation.

use openidconnect::core::{CoreAuthPrompt, CoreGenderClaim, CoreResponseType};
use openidconnect::{
    AccessToken, AuthenticationFlow, AuthorizationCode, CsrfToken, LoginHint, Nonce,
    PkceCodeChallenge, PkceCodeVerifier, RefreshToken, Scope, SubjectIdentifier,
};
use url::Url;

use crate::config::ClientAuth;
use crate::oidc::http::TokenEndpoint;
use crate::oidc::types::ExtraClaims;
use crate::secret::SecretString;

use super::*;

impl Provider {
    /// The URL to send the browser to.
    pub fn authorization_url(&self, req: &AuthorizationRequest<'_>) -> Result<Url, OidcError> {
        let client = self.client(req.redirect_uri)?;
        let state = req.state.to_string();
        let nonce = req.nonce.to_string();
        let challenge = PkceCodeChallenge::from_code_verifier_sha256(&PkceCodeVerifier::new(
            req.pkce_verifier.to_string(),
        ));
        let mut builder = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .set_pkce_challenge(challenge)
            .add_scopes(
                req.scopes
                    .iter()
                    .filter(|s| s.as_str() != "openid")
                    .map(|s| Scope::new(s.clone())),
            );
        builder = match req.prompt {
            Some("none") => builder.add_prompt(CoreAuthPrompt::None),
            Some("login") => builder.add_prompt(CoreAuthPrompt::Login),
            Some("consent") => builder.add_prompt(CoreAuthPrompt::Consent),
            Some("select_account") => builder.add_prompt(CoreAuthPrompt::SelectAccount),
            _ => builder,
        };
        if let Some(hint) = req.login_hint {
            builder = builder.set_login_hint(LoginHint::new(hint.to_string()));
        }
        if let Some(hint) = req.domain_hint {
            builder = builder.add_extra_param("domain_hint", hint.to_string());
        }
        for (k, v) in &self.config.extra_auth_params {
            builder = builder.add_extra_param(k.clone(), v.clone());
        }
        let (url, _, _) = builder.url();
        Ok(url)
    }

    /// Redeems an authorization code (with its PKCE verifier) at the token endpoint.
    pub async fn exchange_code(
        &self,
        code: &str,
        pkce_verifier: &str,
        redirect_uri: &str,
    ) -> Result<IdpTokens, OidcError> {
        let client = self.client(redirect_uri)?;
        let response = client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| OidcError::Discovery(format!("no token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&self.http)
            .await
            .map_err(OidcError::from_token_error)?;
        Ok(response.into())
    }

    /// Uses a refresh token at the token endpoint.
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
        redirect_uri: &str,
    ) -> Result<IdpTokens, OidcError> {
        let client = self.client(redirect_uri)?;
        let token = RefreshToken::new(refresh_token.expose_secret().to_string());
        let http = TokenEndpoint(self.http.clone());
        let response = client
            .exchange_refresh_token(&token)
            .map_err(|e| OidcError::Discovery(format!("no token endpoint: {e}")))?
            .request_async(&http)
            .await
            .map_err(OidcError::from_token_error)?;
        Ok(response.into())
    }

    /// Fills in `name` / `email` from the userinfo endpoint when the ID token
    /// left them out (oidc-provider, Okta's org server and others keep profile
    /// claims out of ID tokens that come with an access token). The answer must
    /// be about the same `sub`. Best effort: on any failure `identity` stays as it is.
    pub async fn complete_profile(&self, identity: &mut Identity, access_token: &SecretString) {
        if identity.name.is_some() && identity.email.is_some() {
            return;
        }
        let Ok(client) = self.client("https://unused.invalid/") else {
            return;
        };
        let Ok(request) = client.user_info(
            AccessToken::new(access_token.expose_secret().to_string()),
            Some(SubjectIdentifier::new(identity.sub.clone())),
        ) else {
            return; // no userinfo endpoint
        };
        match request
            .request_async::<ExtraClaims, _, CoreGenderClaim>(&self.http)
            .await
        {
            Ok(claims) => {
                if identity.name.is_none() {
                    identity.name = claims
                        .name()
                        .and_then(|n| n.get(None))
                        .map(|n| n.as_str().to_string());
                }
                if identity.email.is_none() {
                    identity.email = claims.email().map(|e| e.as_str().to_string());
                    identity.email_verified = claims.email_verified().unwrap_or(false);
                }
                if identity.preferred_username.is_none() {
                    identity.preferred_username =
                        claims.preferred_username().map(|u| u.as_str().to_string());
                }
            }
            Err(e) => {
                tracing::info!(provider = %self.config.id, error = %e, "userinfo did not complete the profile")
            }
        }
    }

    /// RFC 7009 revocation. `Ok(false)` when the IdP has no revocation
    /// endpoint. The endpoint must be https, except on a loopback address
    /// (a development IdP on this machine).
    pub async fn revoke(&self, token: &SecretString, kind: TokenKind) -> Result<bool, OidcError> {
        let Some(endpoint) = self.revocation_endpoint() else {
            return Ok(false);
        };
        let url = Url::parse(&endpoint)
            .map_err(|e| OidcError::Discovery(format!("bad revocation_endpoint: {e}")))?;
        if !endpoint_allowed(&self.config.issuer, &url) {
            return Err(OidcError::Discovery(
                "the revocation endpoint is not https".into(),
            ));
        }
        let hint = match kind {
            TokenKind::Refresh => "refresh_token",
            TokenKind::Access => "access_token",
        };
        let mut form = vec![
            ("token", token.expose_secret().to_string()),
            ("token_type_hint", hint.to_string()),
        ];
        let mut request = self.http.client().post(url);
        let secret = self
            .config
            .client_secret
            .as_ref()
            .map(|s| s.expose_secret().to_string());
        match (self.config.client_auth, secret) {
            (ClientAuth::ClientSecretBasic, Some(secret)) => {
                // RFC 6749 2.3.1: both parts form-urlencoded before Basic encoding.
                let enc = |v: &str| {
                    url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                };
                request = request.basic_auth(enc(&self.config.client_id), Some(enc(&secret)));
            }
            (_, secret) => {
                form.push(("client_id", self.config.client_id.clone()));
                if let Some(secret) = secret {
                    form.push(("client_secret", secret));
                }
            }
        }
        let response = request
            .form(&form)
            .send()
            .await
            .map_err(|e| OidcError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(true);
        }
        if status.is_server_error() {
            return Err(OidcError::Unavailable(format!(
                "revocation endpoint answered {status}"
            )));
        }
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        Err(OidcError::Idp {
            code: body["error"]
                .as_str()
                .unwrap_or("invalid_request")
                .to_string(),
            description: body["error_description"].as_str().map(str::to_string),
        })
    }
}
