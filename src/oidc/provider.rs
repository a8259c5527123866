//! One discovered identity provider: its metadata and keys, and the calls
//! chatgate makes to it (authorization URL, code exchange, refresh, revocation)
//! and the validation of the ID tokens it issues.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone as _, Utc};
use openidconnect::core::{
    CoreAuthPrompt, CoreGenderClaim, CoreJwsSigningAlgorithm, CoreResponseType,
};
use openidconnect::{
    AccessToken, AuthType, AuthenticationFlow, AuthorizationCode, ClaimsVerificationError,
    ClientId, ClientSecret, CsrfToken, JsonWebKeySet, LoginHint, Nonce, OAuth2TokenResponse as _,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError, Scope,
    SignatureVerificationError, SubjectIdentifier, TokenResponse as _,
};
use url::Url;

use super::http::{HttpError, IdpHttp};
use super::types::{
    ExtraClaims, IdTokenClaimsT, IdTokenT, OidcClient, ProviderMetadata, TokenResponse,
};
use crate::config::{ClientAuth, ProviderConfig};
use crate::secret::SecretString;

/// Refetches of the JWKS triggered by an unknown `kid` happen at most this often,
/// so a flood of tokens with random `kid`s cannot make chatgate hammer the IdP.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(60);
/// After a refetch that failed (IdP unreachable), the next may come this soon:
/// a refreshed ID token waiting to be verified should not wait a minute.
pub const JWKS_RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);
/// Fetched keys are fetched again after the IdP's `Cache-Control: max-age`,
/// bounded to this range (1 h when the IdP does not say).
pub const JWKS_MIN_TTL: Duration = Duration::from_secs(5 * 60);
pub const JWKS_MAX_TTL: Duration = Duration::from_secs(24 * 3600);
const JWKS_DEFAULT_TTL: Duration = Duration::from_secs(3600);
/// An ID token's `iat` may be at most this old (plus clock skew).
const ID_TOKEN_MAX_AGE: Duration = Duration::from_secs(600);
const TENANT_PLACEHOLDER: &str = "{tenantid}";

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The IdP could not be reached or answered with a server error.
    #[error("identity provider unavailable: {0}")]
    Unavailable(String),
    /// Discovery produced something chatgate will not use.
    #[error("discovery failed: {0}")]
    Discovery(String),
    /// The IdP answered with an OAuth error (`invalid_grant`, ...).
    #[error("identity provider error {code}")]
    Idp {
        code: String,
        description: Option<String>,
    },
    /// The ID token failed validation.
    #[error("invalid ID token: {0}")]
    InvalidIdToken(String),
    /// The ID token names a signing key the provider's JWKS does not hold,
    /// even after a refetch (or a refetch was not allowed yet): it may be
    /// verifiable later, once the IdP publishes the key.
    #[error("invalid ID token: signed with a key the provider does not publish")]
    UnknownKey,
    /// The ID token expired, or was issued longer ago than accepted.
    #[error("expired ID token: {0}")]
    ExpiredIdToken(String),
}

impl OidcError {
    fn from_token_error(e: RequestTokenError<HttpError, super::types::TokenErrorResponse>) -> Self {
        match e {
            RequestTokenError::ServerResponse(r) => Self::Idp {
                code: r.error().as_ref().to_string(),
                description: r.error_description().cloned(),
            },
            RequestTokenError::Request(e) => Self::Unavailable(e.to_string()),
            RequestTokenError::Parse(e, _) => {
                Self::Unavailable(format!("unreadable token response: {e}"))
            }
            RequestTokenError::Other(e) => Self::Unavailable(e),
        }
    }
}

/// Parameters of one authorization request.
#[derive(Debug)]
pub struct AuthorizationRequest<'a> {
    pub redirect_uri: &'a str,
    pub scopes: &'a [String],
    pub state: &'a str,
    pub nonce: &'a str,
    pub pkce_verifier: &'a str,
    pub prompt: Option<&'a str>,
    pub login_hint: Option<&'a str>,
    pub domain_hint: Option<&'a str>,
}

/// What an ID token must satisfy beyond signature, issuer and expiry.
#[derive(Debug, Clone, Copy)]
pub struct IdTokenCheck<'a> {
    /// The nonce of our authorization request, when there was one.
    pub nonce: Option<&'a str>,
    /// Accepted audiences; `None` means exactly our `client_id`.
    pub audiences: Option<&'a [String]>,
    /// The oldest `iat` accepted (plus clock skew).
    pub max_age: Duration,
}

impl<'a> IdTokenCheck<'a> {
    /// A token from our own code exchange or refresh.
    pub fn ours(nonce: Option<&'a str>) -> Self {
        Self {
            nonce,
            audiences: None,
            max_age: ID_TOKEN_MAX_AGE,
        }
    }
}

/// How an authorization response's `iss` parameter compares with a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssParameter {
    Matches,
    /// A tenant's issuer under a multi-tenant template: it must equal the ID
    /// token's issuer.
    IfIdTokenIssuer,
    Mismatch,
}

/// Which token a revocation is about (RFC 7009 `token_type_hint`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Refresh,
    Access,
}

/// Who an ID token says the user is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id's subject part: the `user_id_claim` (and `tid:` for multi-tenant).
    pub subject: String,
    /// The `sub` claim.
    pub sub: String,
    pub issuer: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// `email_verified` exactly as stated, absent = `false`.
    pub email_verified: bool,
    pub preferred_username: Option<String>,
    pub auth_time: Option<i64>,
    /// The ID token's `exp` (Unix seconds).
    pub expires_at: i64,
}

/// Tokens from a code exchange or a refresh. `Debug` shows no token.
pub struct IdpTokens {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    pub token_type: String,
    pub scope: Option<String>,
    pub expires_in: Option<Duration>,
    pub id_token: Option<IdTokenT>,
}

impl std::fmt::Debug for IdpTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdpTokens")
            .field("access_token", &self.access_token)
            .field("refresh_token", &self.refresh_token)
            .field("token_type", &self.token_type)
            .field("scope", &self.scope)
            .field("expires_in", &self.expires_in)
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl From<TokenResponse> for IdpTokens {
    fn from(r: TokenResponse) -> Self {
        Self {
            access_token: SecretString::new(r.access_token().secret().as_str()),
            refresh_token: r
                .refresh_token()
                .map(|t| SecretString::new(t.secret().as_str())),
            token_type: r.token_type().as_ref().to_string(),
            scope: r
                .scopes()
                .map(|s| s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")),
            expires_in: r.expires_in(),
            id_token: r.id_token().cloned(),
        }
    }
}

pub struct Provider {
    config: ProviderConfig,
    http: IdpHttp,
    metadata: RwLock<Arc<ProviderMetadata>>,
    /// When the next unknown-`kid` refetch may run; held across the fetch so
    /// that concurrent requests wait for one fetch instead of each starting one.
    jwks_refetch: tokio::sync::Mutex<Option<Instant>>,
    /// Until when the loaded keys are trusted without fetching them again.
    jwks_fresh_until: std::sync::Mutex<Instant>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("id", &self.config.id)
            .field("issuer", &self.config.issuer)
            .finish_non_exhaustive()
    }
}

impl Provider {
    /// Fetches `{issuer}/.well-known/openid-configuration` and the JWKS.
    pub async fn discover(config: ProviderConfig, http: IdpHttp) -> Result<Self, OidcError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            config.issuer.trim_end_matches('/')
        );
        let body = get_json(&http, &url).await?;
        let mut metadata: ProviderMetadata = serde_json::from_slice(&body).map_err(|e| {
            OidcError::Discovery(format!("{url} is not OpenID provider metadata: {e}"))
        })?;
        let discovered = metadata.issuer().as_str();
        if !issuer_matches(&config, discovered) {
            return Err(OidcError::Discovery(format!(
                "{url} names issuer {discovered:?}, not the configured {:?}; refusing it (mix-up protection)",
                config.issuer
            )));
        }
        check_endpoints(&config.issuer, &metadata)?;
        let (jwks, ttl) = fetch_jwks(&http, &metadata).await?;
        metadata = metadata.set_jwks(jwks);
        Ok(Self {
            config,
            http,
            metadata: RwLock::new(Arc::new(metadata)),
            jwks_refetch: tokio::sync::Mutex::new(None),
            jwks_fresh_until: std::sync::Mutex::new(Instant::now() + ttl),
        })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    pub fn metadata(&self) -> Arc<ProviderMetadata> {
        self.metadata
            .read()
            .expect("metadata lock poisoned")
            .clone()
    }

    /// The issuer as discovered (may hold `{tenantid}` for Entra multi-tenant).
    pub fn issuer(&self) -> String {
        self.metadata().issuer().as_str().to_string()
    }

    /// RFC 9207: how an authorization response's `iss` compares with this
    /// provider. For an Entra ID multi-tenant provider the metadata names the
    /// `{tenantid}` template, and the response names the user's tenant: it is
    /// accepted for now and must then equal the ID token's (tenant-checked)
    /// issuer.
    pub fn check_iss_parameter(&self, iss: &str) -> IssParameter {
        let template = self.issuer();
        if iss == template {
            return IssParameter::Matches;
        }
        if self.config.multi_tenant
            && let Some((prefix, suffix)) = template.split_once(TENANT_PLACEHOLDER)
            && let Some(tenant) = iss
                .strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(suffix))
            && !tenant.is_empty()
            && tenant
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return IssParameter::IfIdTokenIssuer;
        }
        IssParameter::Mismatch
    }

    /// RFC 9207: whether authorization responses carry `iss`.
    pub fn sends_iss_parameter(&self) -> bool {
        self.metadata()
            .additional_metadata()
            .authorization_response_iss_parameter_supported
            .unwrap_or(false)
    }

    pub fn revocation_endpoint(&self) -> Option<String> {
        self.metadata()
            .additional_metadata()
            .revocation_endpoint
            .clone()
    }

    fn client(&self, redirect_uri: &str) -> Result<OidcClient, OidcError> {
        let metadata = (*self.metadata()).clone();
        let secret = self
            .config
            .client_secret
            .as_ref()
            .map(|s| ClientSecret::new(s.expose_secret().to_string()));
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| OidcError::Discovery(format!("bad redirect URI: {e}")))?;
        let auth_type = match self.config.client_auth {
            ClientAuth::ClientSecretPost | ClientAuth::None => AuthType::RequestBody,
            ClientAuth::ClientSecretBasic => AuthType::BasicAuth,
        };
        Ok(OidcClient::from_provider_metadata(
            metadata,
            ClientId::new(self.config.client_id.clone()),
            secret,
        )
        .set_redirect_uri(redirect)
        .set_auth_type(auth_type))
    }

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
        let response = client
            .exchange_refresh_token(&token)
            .map_err(|e| OidcError::Discovery(format!("no token endpoint: {e}")))?
            .request_async(&self.http)
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

    /// Validates an ID token: signature with an asymmetric algorithm the IdP
    /// advertises (never `none`, never an HMAC), `iss`, `aud`, `azp`, `exp`,
    /// `iat` and, when given, `nonce`. On an unknown `kid` the JWKS is fetched
    /// again (rate-limited) and the check repeated once.
    pub async fn verify_id_token(
        &self,
        token: &IdTokenT,
        check: &IdTokenCheck<'_>,
        now: i64,
        skew: Duration,
    ) -> Result<Identity, OidcError> {
        self.refetch_stale_jwks().await;
        match self.verify_with_current_keys(token, check, now, skew) {
            Err(VerifyError::UnknownKey) => {
                if self.refetch_jwks().await? {
                    self.verify_with_current_keys(token, check, now, skew)
                        .map_err(VerifyError::into_oidc)
                } else {
                    Err(VerifyError::UnknownKey.into_oidc())
                }
            }
            other => other.map_err(VerifyError::into_oidc),
        }
    }

    fn verify_with_current_keys(
        &self,
        token: &IdTokenT,
        check: &IdTokenCheck<'_>,
        now: i64,
        skew: Duration,
    ) -> Result<Identity, VerifyError> {
        let client = self
            .client("https://unused.invalid/")
            .map_err(|e| VerifyError::Other(e.to_string()))?;
        let metadata = self.metadata();
        let template = metadata.issuer().as_str().to_string();
        let multi_tenant = self.config.multi_tenant && template.contains(TENANT_PLACEHOLDER);
        let skew_secs = skew.as_secs() as i64;
        let at = |secs: i64| Utc.timestamp_opt(secs, 0).single().unwrap_or_else(Utc::now);
        let verify_now = at(now - skew_secs);
        let (oldest, newest) = (
            at(now - check.max_age.as_secs() as i64 - skew_secs),
            at(now + skew_secs),
        );
        let verifier = client
            .id_token_verifier()
            .set_allowed_algs(allowed_algs(&metadata))
            .require_issuer_match(!multi_tenant)
            // Audiences other than our client id are checked below.
            .require_audience_match(check.audiences.is_none())
            .set_time_fn(move || verify_now)
            .set_issue_time_verifier_fn(move |iat: DateTime<Utc>| {
                if iat > newest {
                    Err(format!("issued in the future ({iat})"))
                } else if iat < oldest {
                    Err(format!("issued too long ago ({iat})"))
                } else {
                    Ok(())
                }
            });
        let claims = match check.nonce {
            Some(expected) => {
                let expected = Nonce::new(expected.to_string());
                token.claims(&verifier, &expected)
            }
            // A refreshed or exchanged ID token is not tied to a nonce of ours.
            None => token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        }
        .map_err(VerifyError::from)?;

        let accepted: Vec<&str> = match check.audiences {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => vec![self.config.client_id.as_str()],
        };
        if check.audiences.is_some() {
            // Every audience must be one we accept, and there must be one.
            let auds: Vec<&str> = claims.audiences().iter().map(|a| a.as_str()).collect();
            if auds.is_empty() || auds.iter().any(|a| !accepted.contains(a)) {
                return Err(VerifyError::Invalid(format!(
                    "audience {auds:?} is not among the accepted audiences"
                )));
            }
        }
        // OIDC Core 3.1.3.7 step 5: an azp, when present, must be a client we accept.
        if let Some(azp) = claims.authorized_party()
            && !accepted.contains(&azp.as_str())
        {
            return Err(VerifyError::Invalid(format!(
                "azp {:?} is not this client",
                azp.as_str()
            )));
        }
        let extra = &claims.additional_claims().other;
        if multi_tenant {
            let tid = string_claim(extra, "tid")
                .ok_or_else(|| VerifyError::Invalid("no tid claim".into()))?;
            let expected = template.replace(TENANT_PLACEHOLDER, &tid);
            if claims.issuer().as_str() != expected {
                return Err(VerifyError::Invalid(format!(
                    "issuer {:?} is not {expected:?}",
                    claims.issuer().as_str()
                )));
            }
        }
        identity(&self.config, claims).map_err(VerifyError::Invalid)
    }

    /// Fetches the JWKS again unless that happened within
    /// [`JWKS_REFETCH_INTERVAL`]. Returns whether the keys were refreshed.
    async fn refetch_jwks(&self) -> Result<bool, OidcError> {
        let mut next = self.jwks_refetch.lock().await;
        if next.is_some_and(|t| Instant::now() < t) {
            return Ok(false);
        }
        match self.load_jwks().await {
            Ok(()) => {
                *next = Some(Instant::now() + JWKS_REFETCH_INTERVAL);
                tracing::info!(provider = %self.config.id, "reloaded the provider's JWKS after an unknown key id");
                Ok(true)
            }
            Err(e) => {
                *next = Some(Instant::now() + JWKS_RETRY_AFTER_FAILURE);
                Err(e)
            }
        }
    }

    /// Fetches the keys and trusts them for their TTL.
    async fn load_jwks(&self) -> Result<(), OidcError> {
        let metadata = self.metadata();
        let (jwks, ttl) = fetch_jwks(&self.http, &metadata).await?;
        let updated = (*metadata).clone().set_jwks(jwks);
        *self.metadata.write().expect("metadata lock poisoned") = Arc::new(updated);
        *self.jwks_fresh_until.lock().expect("jwks lock poisoned") = Instant::now() + ttl;
        Ok(())
    }

    /// Keys past their TTL are fetched again before they are used, so a key
    /// the IdP withdrew stops being trusted. If the IdP cannot be reached the
    /// loaded keys stay in use (and the fetch is tried again shortly).
    async fn refetch_stale_jwks(&self) {
        let stale = || *self.jwks_fresh_until.lock().expect("jwks lock poisoned") <= Instant::now();
        if !stale() {
            return;
        }
        let _one_at_a_time = self.jwks_refetch.lock().await;
        if !stale() {
            return; // another request just did it
        }
        match self.load_jwks().await {
            Ok(()) => {
                tracing::debug!(provider = %self.config.id, "reloaded the provider's JWKS (its cache time ran out)")
            }
            Err(e) => {
                tracing::warn!(provider = %self.config.id, error = %e, "cannot reload the provider's JWKS; using the keys loaded before");
                *self.jwks_fresh_until.lock().expect("jwks lock poisoned") =
                    Instant::now() + JWKS_RETRY_AFTER_FAILURE;
            }
        }
    }

    /// Treats the loaded keys as expired: the next verification fetches them
    /// again (as after their cache time). For tests and for operators who
    /// know the IdP just withdrew a key.
    #[doc(hidden)]
    pub fn expire_jwks(&self) {
        *self.jwks_fresh_until.lock().expect("jwks lock poisoned") = Instant::now();
    }
}

/// Why an ID token failed, with the unknown-key case kept apart for the refetch.
#[derive(Debug)]
enum VerifyError {
    UnknownKey,
    Expired(String),
    Invalid(String),
    Other(String),
}

impl VerifyError {
    fn into_oidc(self) -> OidcError {
        match self {
            Self::UnknownKey => OidcError::UnknownKey,
            Self::Expired(m) => OidcError::ExpiredIdToken(m),
            Self::Invalid(m) | Self::Other(m) => OidcError::InvalidIdToken(m),
        }
    }
}

impl From<ClaimsVerificationError> for VerifyError {
    fn from(e: ClaimsVerificationError) -> Self {
        match e {
            ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            ) => Self::UnknownKey,
            ClaimsVerificationError::Expired(m) => Self::Expired(m),
            other => Self::Invalid(other.to_string()),
        }
    }
}

/// The asymmetric algorithms the provider advertises for ID tokens. HMAC and
/// `none` are never accepted, whatever the metadata says.
fn allowed_algs(metadata: &ProviderMetadata) -> Vec<CoreJwsSigningAlgorithm> {
    use CoreJwsSigningAlgorithm as A;
    let asymmetric = [
        A::RsaSsaPkcs1V15Sha256,
        A::RsaSsaPkcs1V15Sha384,
        A::RsaSsaPkcs1V15Sha512,
        A::RsaSsaPssSha256,
        A::RsaSsaPssSha384,
        A::RsaSsaPssSha512,
        A::EcdsaP256Sha256,
        A::EcdsaP384Sha384,
        A::EcdsaP521Sha512,
        A::EdDsa,
    ];
    metadata
        .id_token_signing_alg_values_supported()
        .iter()
        .filter(|a| asymmetric.contains(a))
        .cloned()
        .collect()
}

fn string_claim(extra: &serde_json::Map<String, serde_json::Value>, name: &str) -> Option<String> {
    extra
        .get(name)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The identity an already-verified ID token states.
fn identity(config: &ProviderConfig, claims: &IdTokenClaimsT) -> Result<Identity, String> {
    let extra = &claims.additional_claims().other;
    let value = if config.user_id_claim == "sub" {
        claims.subject().as_str().to_string()
    } else {
        string_claim(extra, &config.user_id_claim).ok_or_else(|| {
            format!(
                "the ID token has no {:?} claim (user_id_claim)",
                config.user_id_claim
            )
        })?
    };
    let subject = if config.multi_tenant {
        let tid = string_claim(extra, "tid")
            .ok_or("multi_tenant is set but the ID token has no tid claim")?;
        format!("{tid}:{value}")
    } else {
        value
    };
    Ok(Identity {
        subject,
        sub: claims.subject().as_str().to_string(),
        issuer: claims.issuer().as_str().to_string(),
        name: claims
            .name()
            .and_then(|n| n.get(None))
            .map(|n| n.as_str().to_string()),
        email: claims.email().map(|e| e.as_str().to_string()),
        email_verified: claims.email_verified().unwrap_or(false),
        preferred_username: claims.preferred_username().map(|u| u.as_str().to_string()),
        auth_time: claims.auth_time().map(|t| t.timestamp()),
        expires_at: claims.expiration().timestamp(),
    })
}

/// An endpoint chatgate sends secrets to (client secret, codes, tokens) must
/// be https; plain http only on loopback, and only when the issuer itself is
/// a loopback http one (a development IdP on this machine) — discovery must
/// not downgrade a real IdP's endpoints.
fn endpoint_allowed(issuer: &str, endpoint: &Url) -> bool {
    match endpoint.scheme() {
        "https" => true,
        "http" => {
            crate::domain::origin_is_loopback(endpoint)
                && Url::parse(issuer)
                    .is_ok_and(|i| i.scheme() == "http" && crate::domain::origin_is_loopback(&i))
        }
        _ => false,
    }
}

/// Refuses metadata whose token, userinfo, JWKS or revocation endpoint is not
/// [`endpoint_allowed`].
fn check_endpoints(issuer: &str, metadata: &ProviderMetadata) -> Result<(), OidcError> {
    let endpoints = [
        (
            "token_endpoint",
            metadata.token_endpoint().map(|u| u.url().clone()),
        ),
        (
            "userinfo_endpoint",
            metadata.userinfo_endpoint().map(|u| u.url().clone()),
        ),
        ("jwks_uri", Some(metadata.jwks_uri().url().clone())),
        (
            "revocation_endpoint",
            metadata
                .additional_metadata()
                .revocation_endpoint
                .as_deref()
                .and_then(|u| Url::parse(u).ok()),
        ),
    ];
    for (name, url) in endpoints {
        if let Some(url) = url
            && !endpoint_allowed(issuer, &url)
        {
            return Err(OidcError::Discovery(format!(
                "the provider's {name} {url} is not https; refusing to send credentials there"
            )));
        }
    }
    Ok(())
}

/// Whether a discovered issuer is the configured one. For Entra ID multi-tenant
/// apps the metadata of `/common`, `/organizations` or `/consumers` names the
/// template `.../{tenantid}/v2.0`; ID tokens are then checked against it with
/// their own `tid`.
fn issuer_matches(config: &ProviderConfig, discovered: &str) -> bool {
    if discovered == config.issuer {
        return true;
    }
    config.multi_tenant
        && discovered.contains(TENANT_PLACEHOLDER)
        && ["common", "organizations", "consumers"]
            .iter()
            .any(|t| discovered.replace(TENANT_PLACEHOLDER, t) == config.issuer)
}

/// `Cache-Control: max-age` of a response (`no-store` / `no-cache` = 0).
fn max_age(headers: &openidconnect::http::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(openidconnect::http::header::CACHE_CONTROL)?
        .to_str()
        .ok()?;
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(secs) = lower.strip_prefix("max-age=") {
            age = secs.trim_matches('"').parse().ok().map(Duration::from_secs);
        }
    }
    age
}

/// How long fetched keys are trusted before they are fetched again: the
/// IdP's `max-age`, bounded, so a key it withdrew is dropped in time.
pub fn jwks_ttl(max_age: Option<Duration>) -> Duration {
    max_age
        .unwrap_or(JWKS_DEFAULT_TTL)
        .clamp(JWKS_MIN_TTL, JWKS_MAX_TTL)
}

async fn get_json(http: &IdpHttp, url: &str) -> Result<Vec<u8>, OidcError> {
    get_json_with_age(http, url).await.map(|(body, _)| body)
}

async fn get_json_with_age(
    http: &IdpHttp,
    url: &str,
) -> Result<(Vec<u8>, Option<Duration>), OidcError> {
    use openidconnect::AsyncHttpClient as _;
    let request = openidconnect::http::Request::get(url)
        .header("accept", "application/json")
        .body(Vec::new())
        .map_err(|e| OidcError::Discovery(format!("bad URL {url}: {e}")))?;
    let response = http
        .call(request)
        .await
        .map_err(|e| OidcError::Unavailable(format!("GET {url}: {e}")))?;
    let status = response.status();
    if status.is_server_error() {
        return Err(OidcError::Unavailable(format!("GET {url}: HTTP {status}")));
    }
    if !status.is_success() {
        return Err(OidcError::Discovery(format!("GET {url}: HTTP {status}")));
    }
    let age = max_age(response.headers());
    Ok((response.into_body(), age))
}

type Jwks = JsonWebKeySet<openidconnect::core::CoreJsonWebKey>;

/// The provider's keys and how long to trust them.
async fn fetch_jwks(
    http: &IdpHttp,
    metadata: &ProviderMetadata,
) -> Result<(Jwks, Duration), OidcError> {
    let url = metadata.jwks_uri().url().as_str().to_string();
    let (body, age) = get_json_with_age(http, &url).await?;
    let jwks = serde_json::from_slice(&body)
        .map_err(|e| OidcError::Discovery(format!("{url} is not a JWK set: {e}")))?;
    Ok((jwks, jwks_ttl(age)))
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn the_jwks_cache_time_follows_max_age_within_bounds() {
        let h = |v: &str| {
            let mut m = openidconnect::http::HeaderMap::new();
            m.insert(
                openidconnect::http::header::CACHE_CONTROL,
                v.parse().unwrap(),
            );
            jwks_ttl(max_age(&m))
        };
        assert_eq!(h("public, max-age=7200"), Duration::from_secs(7200));
        assert_eq!(h("max-age=10"), JWKS_MIN_TTL, "at least 5 min");
        assert_eq!(h("max-age=999999"), JWKS_MAX_TTL, "at most 24 h");
        assert_eq!(h("no-store"), JWKS_MIN_TTL);
        assert_eq!(jwks_ttl(None), Duration::from_secs(3600));
    }

    #[test]
    fn endpoints_must_be_https_unless_issuer_and_endpoint_are_loopback_http() {
        let url = |u: &str| Url::parse(u).unwrap();
        let real = "https://login.example.com";
        assert!(endpoint_allowed(
            real,
            &url("https://login.example.com/token")
        ));
        assert!(!endpoint_allowed(
            real,
            &url("http://login.example.com/token")
        ));
        assert!(
            !endpoint_allowed(real, &url("http://127.0.0.1:8402/token")),
            "a real IdP's metadata cannot point at plain http, not even on loopback"
        );
        let dev = "http://127.0.0.1:8402";
        assert!(endpoint_allowed(dev, &url("http://127.0.0.1:8402/token")));
        assert!(endpoint_allowed(dev, &url("http://localhost:8402/token")));
        assert!(!endpoint_allowed(dev, &url("http://idp.example.com/token")));
        assert!(!endpoint_allowed(
            real,
            &url("ftp://login.example.com/token")
        ));
    }

    #[test]
    fn the_debug_output_of_idp_tokens_holds_no_token() {
        use base64::Engine as _;
        let b64 = |v: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
        let raw = format!(
            "{}.{}.{}",
            b64(r#"{"alg":"ES256","kid":"k"}"#),
            b64(r#"{"iss":"https://idp.example","aud":"c","sub":"alice","iat":1,"exp":2}"#),
            b64("signature-secret")
        );
        let id_token: IdTokenT = raw.parse().unwrap();
        let tokens = IdpTokens {
            access_token: SecretString::new("at-very-secret"),
            refresh_token: Some(SecretString::new("rt-very-secret")),
            token_type: "Bearer".into(),
            scope: None,
            expires_in: None,
            id_token: Some(id_token),
        };
        let debug = format!("{tokens:?}");
        for secret in [
            "at-very-secret",
            "rt-very-secret",
            "eyJ",
            "alice",
            "c2lnbmF0dXJl",
        ] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(issuer: &str, multi_tenant: bool) -> ProviderConfig {
        ProviderConfig {
            id: crate::domain::ProviderId::parse("entra").unwrap(),
            issuer: issuer.into(),
            client_id: "c".into(),
            client_secret: None,
            client_auth: ClientAuth::None,
            user_id_claim: "oid".into(),
            multi_tenant,
            accepted_audiences: vec![],
            extra_auth_params: Default::default(),
        }
    }

    #[test]
    fn issuers_must_match_exactly_except_for_the_entra_tenant_template() {
        let exact = provider("https://idp.example.com", false);
        assert!(issuer_matches(&exact, "https://idp.example.com"));
        assert!(!issuer_matches(&exact, "https://idp.example.com/"));
        assert!(!issuer_matches(&exact, "https://evil.example.com"));
        let template = "https://login.microsoftonline.com/{tenantid}/v2.0";
        assert!(!issuer_matches(
            &provider(
                "https://login.microsoftonline.com/organizations/v2.0",
                false
            ),
            template
        ));
        assert!(issuer_matches(
            &provider("https://login.microsoftonline.com/organizations/v2.0", true),
            template
        ));
        assert!(issuer_matches(
            &provider("https://login.microsoftonline.com/common/v2.0", true),
            template
        ));
        assert!(!issuer_matches(
            &provider("https://login.microsoftonline.com/evil/v2.0", true),
            template
        ));
    }
}
