//! One discovered identity provider: its metadata and keys, and the calls
//! chatgate makes to it (authorization URL, code exchange, refresh, revocation)
//! and the validation of the ID tokens it issues.
//!
//! The calls are in `calls`, ID-token validation in `verify`, keys in `jwks`.

use crate::secret::ExposeSecret as _;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openidconnect::{
    AuthType, ClientId, ClientSecret, OAuth2TokenResponse as _, RedirectUrl, RequestTokenError,
    TokenResponse as _,
};
use url::Url;

use super::http::{HttpError, IdpHttp};
use super::types::{IdTokenT, OidcClient, ProviderMetadata, TokenResponse};
use crate::config::{ClientAuth, ProviderConfig};
use crate::secret::SecretString;

mod calls;
mod jwks;
mod logout_token;
mod verify;

use jwks::{fetch_jwks, get_json};
pub use logout_token::{
    BACKCHANNEL_LOGOUT_EVENT, LOGOUT_TOKEN_MAX_AGE, LogoutToken, LogoutTokenError,
    UnverifiedIssuer, unverified_issuer,
};

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
            // A 4xx without an OAuth error body (a bare 400): a refusal.
            RequestTokenError::Request(HttpError::Status(status))
                if !HttpError::Status(status).is_transient_status() =>
            {
                Self::Idp {
                    code: format!("http_{status}"),
                    description: None,
                }
            }
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
    /// Whether the ID token stated `email_verified` at all.
    pub email_verified_stated: bool,
    pub preferred_username: Option<String>,
    pub auth_time: Option<i64>,
    /// The ID token's `exp` (Unix seconds).
    pub expires_at: i64,
    /// The IdP's session id (`sid`), which back-channel logout may name.
    pub sid: Option<String>,
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

impl IdpTokens {
    /// The ID token as the IdP sent it (the compact JWS), if there is one.
    pub fn id_token_text(&self) -> Option<SecretString> {
        match serde_json::to_value(self.id_token.as_ref()?) {
            Ok(serde_json::Value::String(text)) => Some(SecretString::from(text)),
            _ => None,
        }
    }
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
            access_token: SecretString::from(r.access_token().secret().as_str()),
            refresh_token: r
                .refresh_token()
                .map(|t| SecretString::from(t.secret().as_str())),
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
    /// Misconfigurations already reported (each once per process).
    reported: std::sync::Mutex<std::collections::HashSet<&'static str>>,
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
        if !issuer_matches(&config, discovered)
            && discovered.trim_end_matches('/') == config.issuer.trim_end_matches('/')
        {
            return Err(OidcError::Discovery(format!(
                "{url} names issuer {discovered:?}, which differs from the configured {:?} only \
                 by a trailing slash: set issuer = {discovered:?} for provider {} (ID tokens \
                 carry it exactly; LemonLDAP::NG's ends with a slash)",
                config.issuer, config.id
            )));
        }
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
            reported: std::sync::Mutex::default(),
        })
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    /// Logs `message` (what to change at the IdP) the first time `what` is
    /// noticed for this provider, so a misconfiguration is one clear line,
    /// not one per sign-in.
    pub fn report_once(&self, what: &'static str, message: &str) {
        let first = self
            .reported
            .lock()
            .expect("reported lock poisoned")
            .insert(what);
        if first {
            tracing::warn!(provider = %self.config.id, issue = what, "{message}");
        }
    }

    pub fn metadata(&self) -> Arc<ProviderMetadata> {
        self.metadata
            .read()
            .expect("metadata lock poisoned")
            .clone()
    }

    /// The issuer as discovered (may hold `{tenantid}` for Entra multi-tenant).
    /// Where a browser is sent to end the user's session at the IdP
    /// (RP-Initiated Logout 1.0), with `id_token_hint` when chatgate holds the
    /// user's ID token, `client_id`, the `post_logout_redirect_uri` and
    /// `state`. `None` when the IdP has no `end_session_endpoint`.
    pub fn end_session_url(
        &self,
        id_token_hint: Option<&SecretString>,
        post_logout_redirect_uri: &str,
        state: &str,
    ) -> Option<Url> {
        let metadata = self.metadata();
        let endpoint = metadata
            .additional_metadata()
            .end_session_endpoint
            .as_deref()?;
        let mut url = Url::parse(endpoint).ok()?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(hint) = id_token_hint {
                query.append_pair("id_token_hint", hint.expose_secret());
            }
            query
                .append_pair("client_id", &self.config.client_id)
                .append_pair("post_logout_redirect_uri", post_logout_redirect_uri)
                .append_pair("state", state);
        }
        Some(url)
    }

    /// Whether the IdP has an `end_session_endpoint` (RP-Initiated Logout).
    pub fn end_session_supported(&self) -> bool {
        self.metadata()
            .additional_metadata()
            .end_session_endpoint
            .is_some()
    }

    /// Whether the IdP says it sends back-channel logout tokens.
    pub fn backchannel_logout_supported(&self) -> bool {
        self.metadata()
            .additional_metadata()
            .backchannel_logout_supported
            .unwrap_or(false)
    }

    pub fn issuer(&self) -> String {
        self.metadata().issuer().as_str().to_string()
    }

    /// What an operator needs to know of the discovered provider, one line
    /// each, with what to do about it (`chatgate check-config --probe`).
    pub fn report(&self, public_url: &str, scopes: &[String]) -> Vec<String> {
        let metadata = self.metadata();
        let extra = metadata.additional_metadata();
        let mut lines = vec![format!(
            "issuer      {} (matches the configuration)",
            self.issuer()
        )];
        let algs: Vec<String> = metadata
            .id_token_signing_alg_values_supported()
            .iter()
            .filter_map(|a| serde_json::to_value(a).ok())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let asymmetric: Vec<&String> = algs
            .iter()
            .filter(|a| !a.starts_with("HS") && *a != "none")
            .collect();
        lines.push(if asymmetric.is_empty() {
            format!(
                "ID tokens   {}: none asymmetric — chatgate accepts only RS/PS/ES/EdDSA; configure one at the IdP",
                algs.join(", ")
            )
        } else {
            format!(
                "ID tokens   {} (chatgate accepts {}); make sure this client's algorithm is one of those (a new LemonLDAP::NG client defaults to HS512)",
                algs.join(", "),
                asymmetric.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ")
            )
        });
        let offered: Vec<String> = metadata
            .scopes_supported()
            .map(|s| s.iter().map(|s| s.as_str().to_string()).collect())
            .unwrap_or_default();
        if scopes.iter().any(|s| s == "offline_access")
            && !offered.is_empty()
            && !offered.iter().any(|s| s == "offline_access")
        {
            lines.push("scopes      offline_access is not among scopes_supported: the IdP may issue no refresh token (allow offline access for the client, or ask for its own scope)".into());
        }
        lines.push(match &extra.revocation_endpoint {
            Some(url) => format!("revocation  {url}"),
            None => "revocation  none: sign-out cannot revoke the refresh token at the IdP (it stays valid there until it expires); answers say revocation_error = no_revocation_endpoint".into(),
        });
        lines.push(match &extra.end_session_endpoint {
            Some(url) => format!("sign-out    end_session_endpoint {url}; register {public_url}/v1/signed-out as a post-logout redirect URI"),
            None => "sign-out    no end_session_endpoint: \"sign out everywhere\" cannot sign out at the IdP".into(),
        });
        let back = extra.backchannel_logout_supported.unwrap_or(false);
        let front = extra.frontchannel_logout_supported.unwrap_or(false);
        lines.push(match (back, front) {
            (true, _) => format!("IdP logout  back-channel: register {public_url}/v1/backchannel-logout as the client's back-channel logout URI"),
            (false, true) => format!(
                "IdP logout  front-channel only: register {public_url}/v1/frontchannel-logout as the client's front-channel logout URI{}",
                if extra.frontchannel_logout_session_supported.unwrap_or(false) { ", with the session (sid) required" } else { " (the IdP sends no sid: chatgate cannot tell the session)" }
            ),
            (false, false) => "IdP logout  neither back- nor front-channel logout: a sign-out at the IdP does not reach chatgate".into(),
        });
        lines
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
        (
            "end_session_endpoint",
            metadata
                .additional_metadata()
                .end_session_endpoint
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

#[cfg(test)]
mod tests;
