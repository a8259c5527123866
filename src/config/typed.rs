//! The typed configuration and the checks that turn `RawConfig` into it.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::DecodingKey;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use url::Url;

use super::raw::{Overrides, RawApp, RawConfig, RawHostKey, RawProvider};
use super::sources::Sources;
use super::{Problems, key_path};
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
    /// Whose `X-Forwarded-For` / `Forwarded` is believed.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// `[rate_limit]`: per client address; `per_second = 0` turns it off.
    pub rate_limit_per_second: u32,
    pub rate_limit_burst: u32,
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

    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
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
    pub host_keys: Vec<HostKeyConfig>,
}

impl AppConfig {
    pub fn allows_origin(&self, origin: &Origin) -> bool {
        self.origins.iter().any(|o| o == origin)
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
    fn parse(value: &str) -> Option<Self> {
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

const DEFAULT_SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// Claims that are not stable user ids (DESIGN.md: "never an email address").
const UNSTABLE_CLAIMS: [&str; 5] = ["email", "upn", "preferred_username", "name", "unique_name"];

/// Collects problems while checking one value at a time.
struct Check<'a> {
    problems: &'a mut Problems,
    overrides: &'a Overrides,
}

impl Check<'_> {
    fn error(&mut self, key: &str, message: impl Into<String>) {
        let mut message = message.into();
        if let Some(var) = self.overrides.by_key.get(key) {
            message.push_str(&format!(" (set by {var})"));
        }
        self.problems.error(key, message);
    }

    fn required<'v>(&mut self, key: &str, value: &'v Option<String>) -> Option<&'v str> {
        match value.as_deref().map(str::trim) {
            Some(v) if !v.is_empty() => Some(v),
            Some(_) => {
                self.error(key, "must not be empty");
                None
            }
            None => {
                self.error(key, "is required");
                None
            }
        }
    }

    fn duration(
        &mut self,
        key: &str,
        value: &Option<String>,
        default: &str,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let text = value.as_deref().unwrap_or(default);
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d < min => {
                self.error(
                    key,
                    format!(
                        "{text:?} is shorter than the minimum {}",
                        humantime::format_duration(min)
                    ),
                );
                d
            }
            Ok(d) if d > max => {
                self.error(
                    key,
                    format!(
                        "{text:?} is longer than the maximum {}",
                        humantime::format_duration(max)
                    ),
                );
                d
            }
            Ok(d) => d,
            Err(e) => {
                self.error(
                    key,
                    format!("{text:?} is not a duration such as \"30s\", \"15m\" or \"12h\" ({e})"),
                );
                humantime::parse_duration(default).unwrap_or_default()
            }
        }
    }

    fn parse<T, E: fmt::Display>(&mut self, key: &str, result: Result<T, E>) -> Option<T> {
        result.map_err(|e| self.error(key, e.to_string())).ok()
    }
}

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

pub(super) fn build(
    raw: RawConfig,
    overrides: &Overrides,
    src: Sources<'_>,
    problems: &mut Problems,
) -> Option<Config> {
    let mut c = Check {
        problems,
        overrides,
    };

    let public_url = c
        .required("public_url", &raw.public_url)
        .and_then(|v| c.parse("public_url", PublicUrl::parse(v)));
    let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
    let listen = c.parse(
        "listen",
        listen_text
            .parse::<SocketAddr>()
            .map_err(|_| format!("{listen_text:?} is not an address such as 0.0.0.0:8443")),
    );

    let max_connections = raw.database_max_connections.unwrap_or(10);
    if !(1..=1000).contains(&max_connections) {
        c.error("database_max_connections", "must be between 1 and 1000");
    }
    let db_url = raw
        .database_url
        .as_deref()
        .unwrap_or("sqlite://chatgate.db?mode=rwc");
    if DatabaseOptions::has_password(db_url) && !overrides.by_key.contains_key("database_url") {
        c.error(
            "database_url",
            "contains a password; secrets are never written in the config file: set the whole URL \
             in CHATGATE_DATABASE_URL, or the password in PGPASSWORD",
        );
    }
    let database = c.parse(
        "database_url",
        DatabaseOptions::parse(db_url, src.dir, max_connections.max(1)),
    );

    let chat_token_ttl = c.duration(
        "chat_token_ttl",
        &raw.chat_token_ttl,
        "15m",
        MINUTE,
        24 * HOUR,
    );
    let refresh_skew = c.duration(
        "refresh_skew",
        &raw.refresh_skew,
        "60s",
        Duration::ZERO,
        HOUR,
    );
    let refresh_lease = c.duration(
        "refresh_lease",
        &raw.refresh_lease,
        "30s",
        Duration::from_secs(2),
        10 * MINUTE,
    );
    let session_idle = c.duration(
        "session_idle",
        &raw.session_idle,
        "1h",
        MINUTE,
        30 * 24 * HOUR,
    );
    let session_max = c.duration(
        "session_max",
        &raw.session_max,
        "12h",
        MINUTE,
        90 * 24 * HOUR,
    );
    if session_idle > session_max {
        c.error("session_idle", "must not be longer than session_max");
    }
    let max_host_token_ttl = c.duration(
        "max_host_token_ttl",
        &raw.max_host_token_ttl,
        "5m",
        Duration::from_secs(10),
        HOUR,
    );
    let max_id_token_age = c.duration(
        "max_id_token_age",
        &raw.max_id_token_age,
        "5m",
        MINUTE,
        24 * HOUR,
    );
    let clock_skew = c.duration(
        "clock_skew",
        &raw.clock_skew,
        "30s",
        Duration::ZERO,
        5 * MINUTE,
    );
    let flow_ttl = c.duration("flow_ttl", &raw.flow_ttl, "10m", MINUTE, HOUR);
    let request_timeout = c.duration(
        "request_timeout",
        &raw.request_timeout,
        "30s",
        Duration::from_secs(1),
        10 * MINUTE,
    );
    let shutdown_timeout = c.duration(
        "shutdown_timeout",
        &raw.shutdown_timeout,
        "30s",
        Duration::ZERO,
        10 * MINUTE,
    );
    let read_cache_ttl = c.duration(
        "read_cache_ttl",
        &raw.read_cache_ttl,
        "1s",
        Duration::ZERO,
        MINUTE,
    );
    let audit_retention = c.duration(
        "audit_retention",
        &raw.audit_retention,
        "90d",
        24 * HOUR,
        3650 * 24 * HOUR,
    );
    let header_read_timeout = c.duration(
        "header_read_timeout",
        &raw.header_read_timeout,
        "10s",
        Duration::from_secs(1),
        5 * MINUTE,
    );
    let idle_timeout = c.duration(
        "idle_timeout",
        &raw.idle_timeout,
        "60s",
        Duration::from_secs(1),
        HOUR,
    );
    let max_connections = raw.max_connections.unwrap_or(4096);
    if !(1..=1_000_000).contains(&max_connections) {
        c.error("max_connections", "must be between 1 and 1000000");
    }
    let mut trusted_proxies = Vec::new();
    for entry in &raw.trusted_proxies {
        let parsed = entry
            .parse::<ipnet::IpNet>()
            .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(net) => trusted_proxies.push(net),
            Err(_) => c.error(
                "trusted_proxies",
                format!("{entry:?} is not an address or CIDR such as 10.0.0.0/8"),
            ),
        }
    }
    let rate = raw.rate_limit.as_ref();
    let rate_limit_per_second = rate.and_then(|r| r.per_second).unwrap_or(10);
    let rate_limit_burst = rate.and_then(|r| r.burst).unwrap_or(50);
    if rate_limit_per_second > 0 && rate_limit_burst == 0 {
        c.error("rate_limit.burst", "must be at least 1");
    }
    let max_body_bytes = raw.max_body_bytes.unwrap_or(64 * 1024);
    if !(1024..=16 * 1024 * 1024).contains(&max_body_bytes) {
        c.error("max_body_bytes", "must be between 1024 and 16777216");
    }

    let format = match raw.log_format.as_deref().unwrap_or("text") {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            c.error(
                "log_format",
                format!("{other:?} is not \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    let level = raw.log_level.clone().unwrap_or_else(|| "info".into());
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&level) {
        c.error(
            "log_level",
            format!("{level:?} is not a tracing filter: {e}"),
        );
    }

    let idp_ca_certs = match &raw.idp_ca_file {
        Some(file) => load_certs(&mut c, "idp_ca_file", src, file),
        None => Vec::new(),
    };

    let tls = raw.tls.as_ref().and_then(|tls| {
        let cert = c.required("tls.cert_file", &tls.cert_file);
        let key = c.required("tls.key_file", &tls.key_file);
        let (cert, key) = (cert?, key?);
        let certs = load_certs(&mut c, "tls.cert_file", src, cert);
        let key = src
            .read_file(key)
            .and_then(|pem| {
                PrivateKeyDer::from_pem_slice(&pem)
                    .map_err(|e| format!("{key} holds no PEM private key: {e}"))
            })
            .map_err(|e| c.error("tls.key_file", e))
            .ok()?;
        if certs.is_empty() {
            return None;
        }
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| {
            c.error(
                "tls",
                format!("certificate and key do not form a usable pair: {e}"),
            )
        })
        .ok()?;
        Some(Arc::new(server))
    });

    let vault_keys = build_vault_keys(&mut c, &raw, src);
    let signing_key = build_signing_key(&mut c, &raw, src);

    let providers = build_providers(&mut c, &raw.providers, src);
    let apps = build_apps(&mut c, &raw.apps, &providers, src);
    if apps.is_empty() {
        c.problems.warn(
            "apps",
            "no [[apps]] are configured: no widget can sign anyone in",
        );
    }

    Some(Config {
        public_url: public_url?,
        listen: listen?,
        database: database?,
        chat_token_ttl,
        refresh_skew,
        refresh_lease,
        session_idle,
        session_max,
        max_host_token_ttl,
        max_id_token_age,
        clock_skew,
        flow_ttl,
        request_timeout,
        shutdown_timeout,
        read_cache_ttl,
        audit_retention,
        max_body_bytes: max_body_bytes as usize,
        header_read_timeout,
        idle_timeout,
        max_connections: max_connections as usize,
        trusted_proxies,
        rate_limit_per_second,
        rate_limit_burst,
        log: LogConfig { format, level },
        idp_ca_certs,
        tls,
        vault_keys: vault_keys?,
        signing_key: signing_key?,
        providers,
        apps,
    })
}

fn load_certs(
    c: &mut Check<'_>,
    key: &str,
    src: Sources<'_>,
    file: &str,
) -> Vec<CertificateDer<'static>> {
    let pem = match src.read_file(file) {
        Ok(pem) => pem,
        Err(e) => {
            c.error(key, e);
            return Vec::new();
        }
    };
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
    match certs {
        Ok(certs) if !certs.is_empty() => certs,
        Ok(_) => {
            c.error(key, format!("{file} holds no PEM certificate"));
            Vec::new()
        }
        Err(e) => {
            c.error(key, format!("{file} is not valid PEM: {e}"));
            Vec::new()
        }
    }
}

fn build_vault_keys(
    c: &mut Check<'_>,
    raw: &RawConfig,
    src: Sources<'_>,
) -> Option<Arc<VaultKeyRing>> {
    let Some(vault) = &raw.vault else {
        c.error(
            "vault.keys",
            "is required: at least one key, e.g. keys = [{ id = \"2026-11\", key_env = \"CHATGATE_VAULT_KEY\" }] \
             (make one with `chatgate keys generate vault`)",
        );
        return None;
    };
    if vault.keys.is_empty() {
        c.error(
            "vault.keys",
            "must list at least one key (make one with `chatgate keys generate vault`)",
        );
        return None;
    }
    let mut keys = Vec::new();
    let mut seen = HashSet::new();
    let mut ok = true;
    for (i, k) in vault.keys.iter().enumerate() {
        let idx = i.to_string();
        let name = k.id.clone().unwrap_or(idx);
        let base = key_path(&["vault", "keys", &name]);
        let id = match c.required(&format!("{base}.id"), &k.id).map(KeyId::parse) {
            Some(Ok(id)) => id,
            Some(Err(e)) => {
                c.error(&format!("{base}.id"), e.to_string());
                ok = false;
                continue;
            }
            None => {
                ok = false;
                continue;
            }
        };
        if !seen.insert(id.clone()) {
            c.error(&format!("{base}.id"), "appears twice");
            ok = false;
        }
        match src.secret(
            (&format!("{base}.key_env"), k.key_env.as_ref()),
            (&format!("{base}.key_file"), k.key_file.as_ref()),
        ) {
            Ok(Some(text)) => match VaultKeyRing::decode_key(&text) {
                Ok(bytes) => keys.push((id, bytes)),
                Err(e) => {
                    c.error(&base, format!("the key {e}"));
                    ok = false;
                }
            },
            Ok(None) => {
                c.error(&base, "needs key_env or key_file");
                ok = false;
            }
            Err(e) => {
                c.error(&base, e);
                ok = false;
            }
        }
    }
    if !ok {
        return None;
    }
    VaultKeyRing::new(keys)
        .map(Arc::new)
        .map_err(|e| c.error("vault.keys", e))
        .ok()
}

fn build_signing_key(
    c: &mut Check<'_>,
    raw: &RawConfig,
    src: Sources<'_>,
) -> Option<Arc<SigningKey>> {
    let Some(signing) = &raw.signing else {
        c.error(
            "signing",
            "is required: key_file = \"signing.pem\" or key_env (make one with `chatgate keys generate signing`)",
        );
        return None;
    };
    match src.secret(
        ("signing.key_env", signing.key_env.as_ref()),
        ("signing.key_file", signing.key_file.as_ref()),
    ) {
        Ok(Some(pem)) => SigningKey::from_pem(&pem)
            .map(Arc::new)
            .map_err(|e| c.error("signing", format!("the key {e}")))
            .ok(),
        Ok(None) => {
            c.error(
                "signing",
                "needs key_file or key_env (make one with `chatgate keys generate signing`)",
            );
            None
        }
        Err(e) => {
            c.error("signing", e);
            None
        }
    }
}

fn build_providers(
    c: &mut Check<'_>,
    raw: &[RawProvider],
    src: Sources<'_>,
) -> Vec<ProviderConfig> {
    let mut out: Vec<ProviderConfig> = Vec::new();
    for (i, p) in raw.iter().enumerate() {
        let name = p.id.clone().unwrap_or_else(|| i.to_string());
        let base = key_path(&["providers", &name]);
        let k = |field: &str| format!("{base}.{field}");
        let id = c
            .required(&k("id"), &p.id)
            .and_then(|v| c.parse(&k("id"), ProviderId::parse(v)));
        if let Some(id) = &id {
            if id.as_str() == "host" {
                c.error(
                    &k("id"),
                    "\"host\" is reserved for host-signed users (host:{app}:{sub})",
                );
            }
            if out.iter().any(|o| &o.id == id) {
                c.error(&k("id"), "appears twice");
            }
        }
        let issuer = c.required(&k("issuer"), &p.issuer).and_then(|v| {
            let checked = Url::parse(v)
                .map_err(|e| format!("is not a URL: {e}"))
                .and_then(|u| match u.scheme() {
                    "https" => Ok(()),
                    "http" if origin_is_loopback(&u) => Ok(()),
                    _ => Err("must be an https URL".to_string()),
                });
            c.parse(&k("issuer"), checked).map(|()| v.to_string())
        });
        let client_id = c
            .required(&k("client_id"), &p.client_id)
            .map(str::to_string);
        let client_secret = src
            .secret(
                (&k("client_secret_env"), p.client_secret_env.as_ref()),
                (&k("client_secret_file"), p.client_secret_file.as_ref()),
            )
            .map_err(|e| c.error(&base, e))
            .ok()
            .flatten();
        let client_auth = match (p.client_auth.as_deref(), &client_secret) {
            (None | Some("client_secret_basic"), Some(_)) => ClientAuth::ClientSecretBasic,
            (Some("client_secret_post"), Some(_)) => ClientAuth::ClientSecretPost,
            (None | Some("none"), None) => ClientAuth::None,
            (Some("none"), Some(_)) => {
                c.error(
                    &k("client_auth"),
                    "is \"none\" but a client secret is configured",
                );
                ClientAuth::None
            }
            (Some("client_secret_basic" | "client_secret_post"), None) => {
                c.error(
                    &k("client_auth"),
                    "needs client_secret_env or client_secret_file",
                );
                ClientAuth::None
            }
            (Some(other), _) => {
                c.error(
                    &k("client_auth"),
                    format!("{other:?} is not client_secret_basic, client_secret_post or none"),
                );
                ClientAuth::None
            }
        };
        let user_id_claim = p.user_id_claim.clone().unwrap_or_else(|| "sub".into());
        if user_id_claim.trim().is_empty() {
            c.error(&k("user_id_claim"), "must not be empty");
        } else if UNSTABLE_CLAIMS.contains(&user_id_claim.as_str()) {
            c.error(
                &k("user_id_claim"),
                format!("{user_id_claim:?} is not a stable identifier; use \"sub\" (or \"oid\" for Entra ID)"),
            );
        }
        let mut accepted_audiences = p.accepted_audiences.clone().unwrap_or_default();
        if let Some(cid) = &client_id
            && !accepted_audiences.contains(cid)
        {
            accepted_audiences.insert(0, cid.clone());
        }
        let extra_auth_params = p.extra_auth_params.clone().unwrap_or_default();
        for reserved in [
            "client_id",
            "redirect_uri",
            "response_type",
            "scope",
            "state",
            "nonce",
            "code_challenge",
            "code_challenge_method",
            "prompt",
        ] {
            if extra_auth_params.contains_key(reserved) {
                c.error(
                    &k("extra_auth_params"),
                    format!("must not set {reserved:?}; chatgate sets it"),
                );
            }
        }
        if let (Some(id), Some(issuer), Some(client_id)) = (id, issuer, client_id) {
            out.push(ProviderConfig {
                id,
                issuer,
                client_id,
                client_secret,
                client_auth,
                user_id_claim,
                multi_tenant: p.multi_tenant.unwrap_or(false),
                accepted_audiences,
                extra_auth_params,
            });
        }
    }
    out
}

fn build_apps(
    c: &mut Check<'_>,
    raw: &[RawApp],
    providers: &[ProviderConfig],
    src: Sources<'_>,
) -> Vec<AppConfig> {
    let mut out: Vec<AppConfig> = Vec::new();
    for (i, a) in raw.iter().enumerate() {
        let name = a.id.clone().unwrap_or_else(|| i.to_string());
        let base = key_path(&["apps", &name]);
        let k = |field: &str| format!("{base}.{field}");
        let id = c
            .required(&k("id"), &a.id)
            .and_then(|v| c.parse(&k("id"), AppId::parse(v)));
        if let Some(id) = &id
            && out.iter().any(|o| &o.id == id)
        {
            c.error(&k("id"), "appears twice");
        }
        let mut origins: Vec<Origin> = Vec::new();
        if a.origins.is_empty() {
            c.error(
                &k("origins"),
                "must list at least one origin, e.g. [\"https://www.contoso.com\"]",
            );
        }
        for (j, o) in a.origins.iter().enumerate() {
            match Origin::parse(o) {
                Ok(origin) if origins.contains(&origin) => c.error(
                    &format!("{base}.origins[{j}]"),
                    format!("{o:?} appears twice"),
                ),
                Ok(origin) => origins.push(origin),
                Err(e) => c.error(&format!("{base}.origins[{j}]"), format!("{o:?} {e}")),
            }
        }
        let provider = a.provider.as_deref().and_then(|p| {
            match providers.iter().find(|x| x.id.as_str() == p) {
                Some(x) => Some(x.id.clone()),
                None => {
                    c.error(
                        &k("provider"),
                        format!("{p:?} is not the id of a [[providers]] entry"),
                    );
                    None
                }
            }
        });
        let scopes: Vec<String> = a
            .scopes
            .clone()
            .unwrap_or_else(|| DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
        if a.provider.is_some() && !scopes.iter().any(|s| s == "openid") {
            c.error(&k("scopes"), "must include \"openid\"");
        }
        if let Some(bad) = scopes.iter().find(|s| {
            s.is_empty()
                || s.chars()
                    .any(|ch| ch.is_whitespace() || ch == '"' || ch == '\\')
        }) {
            c.error(&k("scopes"), format!("{bad:?} is not a scope token"));
        }
        if a.provider.is_some() && !scopes.iter().any(|s| s == "offline_access") {
            c.problems.warn(
                k("scopes"),
                "has no \"offline_access\": most IdPs then issue no refresh token, and bots lose access when the access token expires",
            );
        }
        let chat_audience = c
            .required(&k("chat_audience"), &a.chat_audience)
            .map(str::to_string);
        let host_keys = build_host_keys(c, &base, &a.host_keys, src);
        let token_exchange = a.token_exchange.unwrap_or(false);
        if token_exchange && a.provider.is_none() {
            c.error(
                &k("token_exchange"),
                "needs the app's provider: exchanged ID tokens are checked against it",
            );
        }
        if a.provider.is_none() && a.host_keys.is_empty() {
            c.error(&base, "needs a provider (sign-in through an IdP) or host_keys (host-signed tokens), or both");
        }
        if let (Some(id), Some(chat_audience)) = (id, chat_audience) {
            out.push(AppConfig {
                id,
                origins,
                provider,
                scopes,
                chat_audience,
                token_exchange,
                host_keys,
            });
        }
    }
    out
}

fn build_host_keys(
    c: &mut Check<'_>,
    app_base: &str,
    raw: &[RawHostKey],
    src: Sources<'_>,
) -> Vec<HostKeyConfig> {
    let mut out: Vec<HostKeyConfig> = Vec::new();
    for (i, h) in raw.iter().enumerate() {
        let name = h.kid.clone().unwrap_or_else(|| i.to_string());
        let base = format!("{app_base}.host_keys.{name}");
        let k = |field: &str| format!("{base}.{field}");
        let kid = c
            .required(&k("kid"), &h.kid)
            .and_then(|v| c.parse(&k("kid"), KeyId::parse(v)));
        if let Some(kid) = &kid
            && out.iter().any(|o| &o.kid == kid)
        {
            c.error(&k("kid"), "appears twice in this app");
        }
        let alg = c
            .required(&k("alg"), &h.alg)
            .and_then(|v| match HostKeyAlg::parse(v) {
                Some(alg) => Some(alg),
                None => {
                    c.error(
                        &k("alg"),
                        format!("{v:?} is not HS256, RS256, ES256 or EdDSA"),
                    );
                    None
                }
            });
        let key = alg.and_then(|alg| host_key_material(c, &base, h, alg, src));
        if let (Some(kid), Some(alg), Some(key)) = (kid, alg, key) {
            out.push(HostKeyConfig {
                kid,
                alg,
                key,
                issuer: h.issuer.clone(),
            });
        }
    }
    out
}

fn host_key_material(
    c: &mut Check<'_>,
    base: &str,
    h: &RawHostKey,
    alg: HostKeyAlg,
    src: Sources<'_>,
) -> Option<HostKeyMaterial> {
    let k = |field: &str| format!("{base}.{field}");
    let has_secret = h.secret_env.is_some() || h.secret_file.is_some();
    if alg == HostKeyAlg::Hs256 {
        if h.public_key_file.is_some() {
            c.error(
                &k("public_key_file"),
                "is for RS256/ES256/EdDSA; HS256 uses secret_env or secret_file",
            );
            return None;
        }
        return match src.secret(
            (&k("secret_env"), h.secret_env.as_ref()),
            (&k("secret_file"), h.secret_file.as_ref()),
        ) {
            Ok(Some(secret)) if secret.expose_secret().len() < 32 => {
                c.error(
                    base,
                    "the HS256 secret must be at least 32 bytes (RFC 7518 §3.2)",
                );
                None
            }
            Ok(Some(secret)) => Some(HostKeyMaterial::Secret(SecretBytes::new(
                secret.expose_secret().as_bytes().to_vec(),
            ))),
            Ok(None) => {
                c.error(base, "HS256 needs secret_env or secret_file");
                None
            }
            Err(e) => {
                c.error(base, e);
                None
            }
        };
    }
    if has_secret {
        c.error(
            base,
            "secret_env/secret_file are for HS256; this algorithm needs public_key_file",
        );
        return None;
    }
    let Some(file) = &h.public_key_file else {
        c.error(
            &k("public_key_file"),
            "is required for RS256, ES256 and EdDSA",
        );
        return None;
    };
    let bytes = src
        .read_file(file)
        .map_err(|e| c.error(&k("public_key_file"), e))
        .ok()?;
    let parsed = if bytes.trim_ascii_start().starts_with(b"{") {
        serde_json::from_slice::<jsonwebtoken::jwk::Jwk>(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|jwk| DecodingKey::from_jwk(&jwk).map_err(|e| e.to_string()))
    } else {
        match alg {
            HostKeyAlg::Rs256 => DecodingKey::from_rsa_pem(&bytes),
            HostKeyAlg::Es256 => DecodingKey::from_ec_pem(&bytes),
            HostKeyAlg::EdDsa => DecodingKey::from_ed_pem(&bytes),
            HostKeyAlg::Hs256 => unreachable!("handled above"),
        }
        .map_err(|e| e.to_string())
    };
    match parsed {
        Ok(key) if key.family() == alg.jwt_alg().family() => Some(HostKeyMaterial::Public(key)),
        Ok(_) => {
            c.error(
                &k("public_key_file"),
                format!("{file} is not a key for {}", alg.as_str()),
            );
            None
        }
        Err(e) => {
            c.error(
                &k("public_key_file"),
                format!(
                    "{file} is not a public key for {} (PEM or JWK): {e}",
                    alg.as_str()
                ),
            );
            None
        }
    }
}
