//! The validated configuration: what the rest of chatgate reads.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use rustls::pki_types::CertificateDer;
use url::Url;

use crate::chat_token::SigningKey;
use crate::domain::{AppId, KeyId, Origin, ProviderId, origin_is_loopback};
use crate::secret::{SecretBytes, SecretString};
use crate::store::DatabaseOptions;
use crate::vault::VaultKeyRing;

/// The validated configuration. Built once at start by [`Config::load`].
#[derive(Debug, Clone)]
pub struct Config {
    pub public_url: PublicUrl,
    pub listen: SocketAddr,
    pub database: DatabaseOptions,
    pub chat_token_ttl: Duration,
    pub refresh_skew: Duration,
    /// How long a refresh lease lasts without its holder's heartbeat: a
    /// replica that died holding one is replaced after 1.5 times this.
    pub refresh_lease: Duration,
    pub session_idle: Duration,
    pub session_max: Duration,
    pub max_host_token_ttl: Duration,
    /// `POST /v1/token-exchange`: the oldest `iat` of an ID token accepted.
    pub max_id_token_age: Duration,
    pub clock_skew: Duration,
    pub flow_ttl: Duration,
    pub request_timeout: Duration,
    pub shutdown_timeout: Duration,
    /// After SIGTERM, how long `/readyz` answers 503 while everything else
    /// keeps serving (each response saying `Connection: close`), before the
    /// listener closes.
    pub shutdown_drain: Duration,
    /// Bind `listen` with `SO_REUSEPORT`: a replacement process can listen
    /// on the same address before this one stops (an in-place restart).
    pub listen_reuse_port: bool,
    /// How long the bot API may reuse a bot credential or a vault row it read
    /// (0 = never). Changes made on other replicas show up within this time.
    pub read_cache_ttl: Duration,
    /// Audit events older than this are deleted.
    pub audit_retention: Duration,
    pub max_body_bytes: usize,
    /// A request head must arrive within this of its first byte.
    pub header_read_timeout: Duration,
    /// A connection with nothing in flight is closed after this.
    pub idle_timeout: Duration,
    /// Connections beyond this many are closed at once.
    pub max_connections: usize,
    /// Open connections one address may hold (trusted proxies excepted).
    pub max_connections_per_address: usize,
    /// Whose `X-Forwarded-For` / `Forwarded` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Which header of a trusted proxy names the client.
    pub forwarded_header: ForwardedHeader,
    /// `[rate_limit]`: per client address; `per_second = 0` turns it off.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
    /// `[rate_limit]`: back-channel logouts, per identity provider.
    pub rate_limit_backchannel_per_second: u32,
    pub rate_limit_backchannel_burst: u32,
    pub log: LogConfig,
    /// Extra root CAs for calls to IdPs (`idp_ca_file`).
    pub idp_ca_certs: Vec<CertificateDer<'static>>,
    /// Serve HTTPS directly with this certificate (`[tls]`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub vault_keys: Arc<VaultKeyRing>,
    pub signing_key: Arc<SigningKey>,
    pub providers: Vec<ProviderConfig>,
    pub apps: Vec<AppConfig>,
}

impl Config {
    pub fn app(&self, id: &str) -> Option<&AppConfig> {
        self.apps.iter().find(|a| a.id.as_str() == id)
    }

    pub fn provider(&self, id: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.id.as_str() == id)
    }
}

/// `public_url`: where browsers reach chatgate; also the chat-token issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl(Url);

impl PublicUrl {
    pub fn parse(value: &str) -> Result<Self, String> {
        let url = Url::parse(value).map_err(|e| format!("is not a URL: {e}"))?;
        match url.scheme() {
            "https" => {}
            "http" if origin_is_loopback(&url) => {}
            "http" => {
                return Err("must use https (http only for localhost, where browsers \
                            still treat it as secure)"
                    .into());
            }
            other => return Err(format!("scheme {other:?} is not http(s)")),
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(
                "must be scheme://host[:port] without a path (chatgate serves at the root)".into(),
            );
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain user info".into());
        }
        Ok(Self(url))
    }

    /// The `iss` of chat tokens: the URL without a trailing slash.
    pub fn issuer(&self) -> String {
        self.0.as_str().trim_end_matches('/').to_string()
    }

    /// An absolute URL on chatgate, e.g. `join("/v1/callback")`.
    pub fn join(&self, path: &str) -> String {
        format!("{}{}", self.issuer(), path)
    }

    pub fn origin(&self) -> Origin {
        Origin::parse(&self.issuer()).expect("a validated public_url is an origin")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `chatgate=debug,info`; `RUST_LOG` wins.
    pub level: String,
}

/// How chatgate authenticates to a provider's token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with client id and secret (the OAuth default).
    ClientSecretBasic,
    /// Client id and secret in the form body.
    ClientSecretPost,
    /// A public client: PKCE only.
    None,
}

/// One `[[providers]]` entry.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub id: ProviderId,
    /// Exactly as configured; the discovered `issuer` must equal it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<SecretString>,
    pub client_auth: ClientAuth,
    /// The ID-token claim that becomes the user id's subject (`sub`, `oid`).
    pub user_id_claim: String,
    /// Entra ID multi-tenant apps: the subject is `{tid}:{user_id_claim}`.
    pub multi_tenant: bool,
    /// ID-token audiences accepted when a host exchanges an ID token; always
    /// includes `client_id`.
    pub accepted_audiences: Vec<String>,
    /// Extra authorization-request parameters (e.g. Google's `access_type=offline`).
    pub extra_auth_params: BTreeMap<String, String>,
    /// What the `sid` of this IdP's front-channel logouts is.
    pub frontchannel_logout_id: FrontchannelLogoutId,
}

/// `frontchannel_logout_id`: what a front-channel logout's `sid` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrontchannelLogoutId {
    /// The IdP session's id, as the ID token's `sid` claim said (the
    /// specification).
    #[default]
    Sid,
    /// The user's `sub` (LemonLDAP::NG 2.16, whose ID tokens carry no `sid`):
    /// every session of that user ends. Whoever knows a user's `sub` can then
    /// sign them out of the chat (never in).
    Sub,
}

/// One `[[apps]]` entry.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub id: AppId,
    pub origins: Vec<Origin>,
    pub provider: Option<ProviderId>,
    pub scopes: Vec<String>,
    pub chat_audience: String,
    /// `POST /v1/token-exchange` is allowed for this app (opt-in).
    pub token_exchange: bool,
    /// What chat tokens are bound to (`bind_chat_tokens`).
    pub bind_chat_tokens: ChatTokenBinding,
    /// The bot's channel binds user ids to the verified user (e.g. Direct
    /// Line tokens bound to the user): `/bf` `GetToken` then trusts `userId`
    /// without the user's chat token (`channel_binds_user_ids`, default off).
    pub channel_binds_user_ids: bool,
    /// Where this app's events go (`events_url`, `events_secret_*`).
    pub events: Option<crate::events::EventTarget>,
    pub host_keys: Vec<HostKeyConfig>,
    /// `[apps.direct_line]`: a Direct Line token bound to the verified user
    /// comes with every sign-in.
    pub direct_line: Option<DirectLineConfig>,
}

/// `[apps.direct_line]`: where and with which secret chatgate asks Direct
/// Line 3.0 for tokens bound to the verified user.
#[derive(Debug, Clone)]
pub struct DirectLineConfig {
    /// The Direct Line channel's secret (`secret_env` / `secret_file`).
    pub secret: crate::secret::SecretString,
    /// `https://directline.botframework.com` by default; a regional
    /// endpoint, or a local stand-in (http only on loopback).
    pub endpoint: Url,
}

/// Azure's public Direct Line endpoint.
pub const DEFAULT_DIRECT_LINE_ENDPOINT: &str = "https://directline.botframework.com";

impl AppConfig {
    pub fn allows_origin(&self, origin: &Origin) -> bool {
        self.origins.iter().any(|o| o == origin)
    }

    /// Chat tokens of this app are bound to the browser's DPoP key.
    pub fn binds_dpop(&self) -> bool {
        self.bind_chat_tokens == ChatTokenBinding::Dpop
    }
}

/// `forwarded_header`: the header a trusted proxy names the client in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx, HAProxy, most cloud load balancers).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=` (RFC 7239).
    Forwarded,
}

/// `bind_chat_tokens`: whether chat tokens are bearer tokens or bound to the
/// browser's DPoP key (`cnf.jkt`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChatTokenBinding {
    #[default]
    None,
    Dpop,
}

impl ChatTokenBinding {
    pub(super) fn parse(value: &str) -> Option<Self> {
        match value {
            "none" => Some(Self::None),
            "dpop" => Some(Self::Dpop),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyAlg {
    Hs256,
    Rs256,
    Es256,
    EdDsa,
}

impl HostKeyAlg {
    pub(super) fn parse(value: &str) -> Option<Self> {
        match value {
            "HS256" => Some(Self::Hs256),
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }

    pub fn jwt_alg(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::Hs256 => jsonwebtoken::Algorithm::HS256,
            Self::Rs256 => jsonwebtoken::Algorithm::RS256,
            Self::Es256 => jsonwebtoken::Algorithm::ES256,
            Self::EdDsa => jsonwebtoken::Algorithm::EdDSA,
        }
    }
}

#[derive(Clone)]
pub enum HostKeyMaterial {
    /// HS256: the shared secret's bytes.
    Secret(SecretBytes),
    /// RS256 / ES256 / EdDSA: the host's public key.
    Public(DecodingKey),
}

impl fmt::Debug for HostKeyMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret([redacted])"),
            Self::Public(_) => f.write_str("Public(..)"),
        }
    }
}

/// One `host_keys` entry: a key a host backend signs userinfo tokens with.
#[derive(Clone)]
pub struct HostKeyConfig {
    pub kid: KeyId,
    pub alg: HostKeyAlg,
    pub key: HostKeyMaterial,
    pub issuer: Option<String>,
}

impl fmt::Debug for HostKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostKeyConfig")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}
