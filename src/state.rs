//! The state every request handler can reach, built once at start: the
//! database, the vault, keys, providers, the refresh service, bots, limits and
//! metrics. Nothing here knows about HTTP; `crate::server` serves it.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::audit::AuditLog;
use crate::bots::BotDirectory;
use crate::chat_token::{ChatTokenIssuer, KeyDirectory};
use crate::config::Config;
use crate::events::Events;
use crate::events::deliver::Deliverer;
use crate::metrics::Metrics;
use crate::oidc::Providers;
use crate::oidc::http::IdpHttp;
use crate::rate_limits::{RateLimitConfig, RateLimits};
use crate::signin::SignInService;
use crate::store::{Store, StoreError};
use crate::user_tokens::{RefreshSettings, TokenService};
use crate::vault::Vault;

/// Everything a request handler can reach: one `Arc`, so the clone axum makes
/// for every request and every middleware layer is one reference count (a
/// clone of the fields was 6 % of a bot lookup's CPU time under load).
#[derive(Debug, Clone)]
pub struct AppState(Arc<AppStateInner>);

impl std::ops::Deref for AppState {
    type Target = AppStateInner;

    fn deref(&self) -> &AppStateInner {
        &self.0
    }
}

/// What [`AppState`] holds.
#[derive(Debug)]
pub struct AppStateInner {
    pub config: Arc<Config>,
    pub store: Store,
    pub vault: Vault,
    pub keys: Arc<KeyDirectory>,
    pub providers: Arc<Providers>,
    pub(crate) metrics: Arc<Metrics>,
    /// Fresh tokens for bots: the refresh machinery.
    pub(crate) tokens: TokenService,
    /// The authorization-code flow.
    pub(crate) signin: SignInService,
    /// Direct Line tokens bound to users, and whose Direct Line user id is whose.
    pub(crate) direct_line: crate::direct_line::DirectLine,
    pub bots: Arc<BotDirectory>,
    /// Per-client-address limits of the endpoints anyone can call.
    pub(crate) rate_limits: Arc<RateLimits>,
    /// Batched writer of high-volume audit events.
    pub audit: AuditLog,
    /// Sends the event outbox; `None` when no app takes events.
    pub(crate) deliverer: Option<Deliverer>,
    /// Serving or draining, and the requests in flight.
    pub lifecycle: Arc<crate::lifecycle::Lifecycle>,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the database {url}: {source}")]
    Database { url: String, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot set up calls to identity providers: {0}")]
    Http(#[from] crate::oidc::http::HttpError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

impl AppState {
    /// Connects to the database, applies migrations, publishes the signing key
    /// and makes a first attempt at discovering every provider (the server
    /// keeps retrying in the background; `/readyz` says when all are loaded).
    pub async fn build(config: Config) -> Result<Self, AppError> {
        let store =
            Store::connect(&config.database)
                .await
                .map_err(|source| AppError::Database {
                    url: config.database.display.clone(),
                    source,
                })?;
        migrate(&store, &config).await?;
        let issuer = Arc::new(ChatTokenIssuer::new(
            config.public_url.issuer(),
            config.signing_key.clone(),
            config.chat_token_ttl,
        ));
        let keys = Arc::new(KeyDirectory::new(
            issuer,
            config.clock_skew,
            &config.vault_keys,
        ));
        keys.refresh(&store, crate::time::now()).await?;
        let bots = Arc::new(BotDirectory::new(
            store.clone(),
            &config.vault_keys,
            config.read_cache_ttl,
        ));
        let (audit, _writer) = AuditLog::start(store.clone());
        let http = IdpHttp::new(&config.idp_ca_certs)?;
        let providers = Arc::new(Providers::new(&config.providers, http.clone()));
        for (id, e) in providers.load_pending().await {
            tracing::warn!(provider = %id, error = %e, "provider discovery failed; retrying in the background");
        }
        let metrics = Arc::new(Metrics::new());
        let events = Events::new(
            config
                .apps
                .iter()
                .filter_map(|app| Some((app.id.clone(), app.events.clone()?))),
        );
        // Replicas without apps that take events do not poll the outbox.
        let deliverer = (!events.is_empty()).then(|| {
            Deliverer::new(
                store.clone(),
                events.clone(),
                http.client().clone(),
                metrics.clone(),
            )
        });
        let vault = Vault::with_read_cache(
            store.clone(),
            config.vault_keys.clone(),
            config.read_cache_ttl,
        )
        .reporting(metrics.clone(), deliverer.clone());
        let tokens = TokenService::new(
            store.clone(),
            vault.clone(),
            providers.clone(),
            metrics.clone(),
            refresh_settings(&config),
            events.clone(),
            audit.clone(),
        );
        let rate_limits = Arc::new(RateLimits::new(RateLimitConfig {
            per_second: config.rate_limit_per_second,
            burst: config.rate_limit_burst,
            backchannel_per_second: config.rate_limit_backchannel_per_second,
            backchannel_burst: config.rate_limit_backchannel_burst,
            trusted_proxies: config.trusted_proxies.clone(),
            forwarded_header: config.forwarded_header,
        }));
        let config = Arc::new(config);
        let direct_line = crate::direct_line::DirectLine::new(store.clone(), http.client().clone());
        let signin = SignInService::new(
            config.clone(),
            store.clone(),
            vault.clone(),
            providers.clone(),
            keys.clone(),
            tokens.clone(),
            metrics.clone(),
            audit.clone(),
            direct_line.clone(),
        );
        Ok(Self(Arc::new(AppStateInner {
            config,
            store,
            vault,
            keys,
            providers,
            metrics,
            tokens,
            signin,
            direct_line,
            bots,
            rate_limits,
            audit,
            deliverer,
            lifecycle: Arc::default(),
        })))
    }
}

/// Applies pending migrations, and the one-time steps that go with them: when
/// migration 4 (row MACs) is applied, the bot credentials and signing keys
/// already in the database are tagged, so they stay valid (rows added later
/// without the vault key are refused).
pub async fn migrate(store: &Store, config: &Config) -> Result<(), StoreError> {
    let vault = &config.vault_keys;
    let applied = store.migrate().await?;
    if applied.contains(&ROW_MACS_MIGRATION) {
        let bots = BotDirectory::adopt_rows_from_before_keyed_hashes(store, vault).await?;
        let keys = KeyDirectory::adopt_rows_from_before_tags(store, vault).await?;
        tracing::info!(
            bots,
            signing_keys = keys,
            "tagged the bot credentials and signing keys from before row MACs"
        );
    }
    if applied.contains(&SIGNIN_GENERATIONS_MIGRATION) {
        // Entries stored before migration 5 never learnt their IdP `sub`, so a
        // back-channel logout by `sub` would not find them. Where the user id
        // is the `sub` itself, it can be read off the user id.
        let vault = Vault::new(store.clone(), config.vault_keys.clone());
        for provider in &config.providers {
            if provider.user_id_claim == "sub" && !provider.multi_tenant {
                let n = vault.backfill_idp_sub(&provider.id).await?;
                if n > 0 {
                    tracing::info!(provider = %provider.id, entries = n, "filled in the IdP sub of entries from before back-channel logout");
                }
            }
        }
    }
    Ok(())
}

/// The migration that added row MACs (`migrations/*/0004_row_macs.sql`).
const ROW_MACS_MIGRATION: i64 = 4;
/// The migration that added sign-in generations (`0007_signin_generations.sql`).
const SIGNIN_GENERATIONS_MIGRATION: i64 = 7;

/// The refresh machinery's part of the configuration.
fn refresh_settings(config: &Config) -> RefreshSettings {
    RefreshSettings {
        refresh_skew: config.refresh_skew,
        read_cache_ttl: config.read_cache_ttl,
        clock_skew: config.clock_skew,
        lease: config.refresh_lease,
        redirect_uri: config.public_url.join("/v1/callback"),
        // Answer a waiting bot before the request timeout would (503 either
        // way, but this one says why and when to retry).
        wait: config.request_timeout.mul_f64(0.8),
    }
}
