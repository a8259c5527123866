//! A user's fresh access token for a bot: served from the vault while it is
//! valid for longer than `refresh_skew`, else refreshed first — once.
//!
//! One refresh per user at a time, across every replica sharing the database:
//! an in-process lock per `(app, user)` makes the callers of one process queue
//! behind one refresher, and a lease in the vault row (owner + expiry) makes the
//! replicas do the same. Whoever waits re-reads the row and gets the refresher's
//! result. A crashed refresher's lease simply expires. Tokens are written only
//! if the row is still at the version whose refresh token was used, and a
//! rotated refresh token is stored together with the new access token before
//! anybody is handed that access token.

use std::time::{Duration, Instant};

use crate::app::AppState;
use crate::config::AppConfig;
use crate::domain::UserId;
use crate::oidc::{IdTokenCheck, OidcError};
use crate::secret::SecretString;
use crate::store::AuditEvent;
use crate::vault::{TokenSet, VaultEntry, VaultError};

/// How long a refresher may hold the lease. Longer than the IdP HTTP timeout,
/// so a live refresher never loses it mid-request.
pub const LEASE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(50);
/// `Retry-After` when the IdP is unavailable.
pub const RETRY_AFTER_SECS: u64 = 5;

/// A token a bot may use now.
#[derive(Debug, Clone)]
pub struct FreshToken {
    pub access_token: SecretString,
    pub token_type: String,
    pub expires_at: Option<i64>,
    pub scope: String,
    /// Whether this lookup refreshed it.
    pub refreshed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    ReauthRequired(String),
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl From<crate::store::StoreError> for LookupError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Vault(e.into())
    }
}

fn view(entry: &VaultEntry, refreshed: bool) -> FreshToken {
    FreshToken {
        access_token: entry.tokens.access_token.clone(),
        token_type: entry.tokens.token_type.clone(),
        expires_at: entry.tokens.expires_at,
        scope: entry.tokens.scope.clone(),
        refreshed,
    }
}

/// Valid for longer than the skew (or of unknown lifetime, which only the IdP
/// could judge).
fn fresh_enough(entry: &VaultEntry, now: i64, skew: i64) -> bool {
    entry.tokens.expires_at.is_none_or(|exp| exp > now + skew)
}

fn still_valid(entry: &VaultEntry, now: i64) -> bool {
    entry.tokens.expires_at.is_some_and(|exp| exp > now)
}

/// The fresh access token of `user_id` in `app`.
pub async fn fresh_access_token(
    state: &AppState,
    app: &AppConfig,
    user_id: &UserId,
    actor: &str,
) -> Result<FreshToken, LookupError> {
    if user_id.namespace() == "host" {
        return Err(LookupError::NotFound(
            "host-signed users have no identity-provider tokens; only a chat token exists for them"
                .into(),
        ));
    }
    let skew = state.config.refresh_skew.as_secs() as i64;
    // The hot path may use a row read within `read_cache_ttl`; a token that is
    // due for refresh is always re-read from the database below.
    let cached = state.vault.load_for_read(&app.id, user_id).await?;
    state
        .metrics
        .vault_op("read", if cached.is_some() { "ok" } else { "absent" });
    let entry = cached.ok_or_else(|| not_found(app, user_id))?;
    if entry.needs_reauth {
        return Err(reauth());
    }
    let margin = state.config.read_cache_ttl.as_secs() as i64;
    if fresh_enough(&entry, crate::time::now(), skew + margin) {
        return Ok(view(&entry, false));
    }
    // In-process single flight: one task per user goes on; the others wait here
    // and then find the refreshed row.
    let lock = state
        .refresh_locks
        .get(&(app.id.to_string(), user_id.to_string()));
    let _guard = lock.lock().await;
    refresh_under_lease(state, app, user_id, actor).await
}

fn reauth() -> LookupError {
    LookupError::ReauthRequired(
        "the identity provider refused the stored refresh token; the user must sign in again"
            .into(),
    )
}

async fn load(
    state: &AppState,
    app: &AppConfig,
    user_id: &UserId,
) -> Result<VaultEntry, LookupError> {
    let entry = state.vault.load(&app.id, user_id).await;
    state.metrics.vault_op(
        "read",
        if matches!(entry, Ok(Some(_))) {
            "ok"
        } else {
            "absent"
        },
    );
    entry?.ok_or_else(|| not_found(app, user_id))
}

fn not_found(app: &AppConfig, user_id: &UserId) -> LookupError {
    LookupError::NotFound(format!("no token for {user_id} in app {}", app.id))
}

async fn refresh_under_lease(
    state: &AppState,
    app: &AppConfig,
    user_id: &UserId,
    actor: &str,
) -> Result<FreshToken, LookupError> {
    let skew = state.config.refresh_skew.as_secs() as i64;
    let deadline = Instant::now() + LEASE + Duration::from_secs(5);
    loop {
        let now = crate::time::now();
        let entry = load(state, app, user_id).await?;
        if entry.needs_reauth {
            return Err(reauth());
        }
        if fresh_enough(&entry, now, skew) {
            return Ok(view(&entry, false)); // refreshed by someone else meanwhile
        }
        let Some(refresh_token) = entry.tokens.refresh_token.clone() else {
            if still_valid(&entry, now) {
                return Ok(view(&entry, false));
            }
            return Err(LookupError::ReauthRequired(
                "the access token expired and the identity provider issued no refresh token \
                 (offline_access); the user must sign in again"
                    .into(),
            ));
        };
        let until = now + LEASE.as_secs() as i64;
        if state
            .store
            .try_take_refresh_lease(
                app.id.as_str(),
                user_id.as_str(),
                entry.row_version,
                &state.replica_id,
                until,
                now,
            )
            .await?
        {
            return refresh(state, app, user_id, entry, refresh_token, actor).await;
        }
        // Another replica is refreshing: wait for its result.
        if Instant::now() > deadline {
            return Err(LookupError::Unavailable(
                "another replica's refresh did not finish in time".into(),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn audit(
    state: &AppState,
    actor: &str,
    app: &AppConfig,
    user_id: &UserId,
    outcome: &str,
    detail: Option<&str>,
) {
    state
        .store
        .audit(AuditEvent {
            actor,
            app: Some(app.id.as_str()),
            user_id: Some(user_id.as_str()),
            action: "token.refresh",
            outcome,
            detail,
        })
        .await;
}

/// Refreshes while holding the lease of `entry.row_version`.
async fn refresh(
    state: &AppState,
    app: &AppConfig,
    user_id: &UserId,
    entry: VaultEntry,
    refresh_token: SecretString,
    actor: &str,
) -> Result<FreshToken, LookupError> {
    let release = || async {
        let _ = state
            .store
            .release_refresh_lease(app.id.as_str(), user_id.as_str(), &state.replica_id)
            .await;
    };
    // A failure that does not condemn the refresh token: serve the stored access
    // token while it is still valid, else tell the bot to retry.
    let transient = |why: String| {
        let now = crate::time::now();
        if still_valid(&entry, now) {
            tracing::warn!(user = %user_id, error = %why, "refresh failed; serving the still-valid access token");
            Ok(view(&entry, false))
        } else {
            Err(LookupError::Unavailable(why))
        }
    };
    let Some(provider) = state.providers.get(&entry.provider) else {
        release().await;
        state.metrics.refresh("unavailable");
        audit(
            state,
            actor,
            app,
            user_id,
            "failed",
            Some("provider not loaded"),
        )
        .await;
        return transient(format!("provider {} is not loaded", entry.provider));
    };
    let redirect = state.config.public_url.join("/v1/callback");
    let tokens = match provider.refresh(&refresh_token, &redirect).await {
        Ok(tokens) => tokens,
        Err(OidcError::Idp { code, .. }) if code == "invalid_grant" => {
            let now = crate::time::now();
            state
                .vault
                .mark_needs_reauth(&app.id, user_id, entry.row_version, now)
                .await?;
            state.metrics.refresh("invalid_grant");
            audit(state, actor, app, user_id, "failed", Some("invalid_grant")).await;
            return Err(reauth());
        }
        Err(e) => {
            release().await;
            state.metrics.refresh("unavailable");
            let detail = match &e {
                OidcError::Idp { code, .. } => code.clone(),
                _ => "unavailable".to_string(),
            };
            tracing::warn!(provider = %entry.provider, error = %e, "refresh failed");
            audit(state, actor, app, user_id, "failed", Some(&detail)).await;
            return transient(e.to_string());
        }
    };
    let now = crate::time::now();
    // A refreshed ID token must still be about the same user at the same issuer.
    if let Some(id_token) = &tokens.id_token {
        let same = match provider
            .verify_id_token(
                id_token,
                &IdTokenCheck::ours(None),
                now,
                state.config.clock_skew,
            )
            .await
        {
            Ok(identity) => {
                UserId::new(&provider.config().id, &identity.subject).is_ok_and(|u| &u == user_id)
            }
            Err(e) => {
                tracing::warn!(provider = %entry.provider, error = %e, "refreshed ID token rejected");
                false
            }
        };
        if !same {
            state
                .vault
                .mark_needs_reauth(&app.id, user_id, entry.row_version, now)
                .await?;
            state.metrics.refresh("identity_changed");
            audit(
                state,
                actor,
                app,
                user_id,
                "failed",
                Some("refreshed ID token rejected"),
            )
            .await;
            return Err(LookupError::ReauthRequired(
                "the identity provider's refreshed ID token does not match this user; the user must sign in again"
                    .into(),
            ));
        }
    }
    let set = TokenSet {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        token_type: tokens.token_type,
        scope: tokens.scope.unwrap_or_else(|| entry.tokens.scope.clone()),
        expires_at: tokens.expires_in.map(|d| now + d.as_secs() as i64),
    };
    // The IdP may have rotated the refresh token: losing this write would lose
    // the user's grant, so a failing database gets a few more tries.
    let mut attempt = 0;
    let written = loop {
        match state
            .vault
            .save_refreshed(&app.id, user_id, entry.row_version, &set, now)
            .await
        {
            Ok(written) => break written,
            Err(e) if attempt < 3 => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "cannot store refreshed tokens; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(e) => {
                tracing::error!(user = %user_id, error = %e, "refreshed tokens could not be stored");
                state.metrics.refresh("store_failed");
                return Err(e.into());
            }
        }
    };
    if !written {
        // Only possible when our lease expired mid-refresh and the row moved on.
        tracing::error!(user = %user_id, "the vault row changed during a refresh; the refreshed tokens were not stored");
        state.metrics.refresh("conflict");
        return Err(LookupError::Unavailable(
            "the refresh raced with another change; retry".into(),
        ));
    }
    state.metrics.refresh("ok");
    state.metrics.vault_op("write", "ok");
    audit(state, actor, app, user_id, "ok", None).await;
    Ok(FreshToken {
        access_token: set.access_token,
        token_type: set.token_type,
        expires_at: set.expires_at,
        scope: set.scope,
        refreshed: true,
    })
}
