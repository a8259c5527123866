//! Token exchange (`POST /v1/token-exchange`): an ID token the host page
//! already holds, from one of the app's provider's accepted clients, for a
//! chat token. Opt-in per app (`token_exchange = true`); each ID token once,
//! across replicas; at most `max_id_token_age` old. Nothing is stored in the
//! vault: chatgate holds no refresh token in this mode.

use std::time::Duration;

use crate::config::AppConfig;
use crate::domain::UserId;
use crate::oidc::{IdTokenCheck, IdTokenT, OidcError, Providers};
use crate::secret::sha256_hex;
use crate::store::{Store, StoreError};

/// The replay-cache scope of exchanged ID tokens: one for all apps, so an ID
/// token is exchanged once, whatever the app.
const REPLAY_SCOPE: &str = "*";
/// Larger "ID tokens" are refused before parsing.
const MAX_ID_TOKEN_LEN: usize = 16 * 1024;

/// What the exchanged ID token says about the user.
#[derive(Debug, Clone)]
pub struct ExchangedUser {
    pub user_id: UserId,
    pub name: Option<String>,
    pub email: Option<String>,
    pub email_verified: bool,
    pub auth_time: Option<i64>,
}

/// Why an exchange was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// The app does not allow token exchange.
    #[error("token exchange is not enabled for this app (token_exchange)")]
    NotEnabled,
    #[error("this app has no identity provider")]
    NoProvider,
    /// The provider's metadata is not loaded yet, or the IdP is unreachable.
    #[error("{0}")]
    Unavailable(&'static str),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Expired(String),
    #[error("this ID token was already exchanged")]
    Replayed,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ExchangeError {
    /// The detail the audit log records (a fixed set).
    pub fn audit_detail(&self) -> &'static str {
        match self {
            Self::Replayed => "token_replayed",
            Self::Expired(_) => "token_expired",
            Self::Unavailable(_) | Self::Store(_) => "unavailable",
            _ => "invalid_token",
        }
    }
}

/// Verifies `id_token` for `app` and consumes it.
pub async fn exchange(
    store: &Store,
    providers: &Providers,
    app: &AppConfig,
    id_token: &str,
    max_age: Duration,
    clock_skew: Duration,
    now: i64,
) -> Result<ExchangedUser, ExchangeError> {
    if !app.token_exchange {
        return Err(ExchangeError::NotEnabled);
    }
    let provider_id = app.provider.as_ref().ok_or(ExchangeError::NoProvider)?;
    let provider = providers
        .get(provider_id.as_str())
        .ok_or(ExchangeError::Unavailable(
            "the identity provider is still being contacted",
        ))?;
    if id_token.len() > MAX_ID_TOKEN_LEN {
        return Err(ExchangeError::Invalid("the ID token is too large".into()));
    }
    let parsed: IdTokenT = id_token
        .parse()
        .map_err(|_| ExchangeError::Invalid("the ID token is not a JWT".into()))?;
    let check = IdTokenCheck {
        nonce: None,
        audiences: Some(&provider.config().accepted_audiences),
        max_age,
    };
    let identity = provider
        .verify_id_token(&parsed, &check, now, clock_skew)
        .await
        .map_err(|e| match e {
            OidcError::ExpiredIdToken(m) => ExchangeError::Expired(m),
            OidcError::Unavailable(m) => {
                // The IdP's own words stay in the log.
                tracing::warn!(provider = %provider_id, error = %m, "token exchange: the IdP is unavailable");
                ExchangeError::Unavailable("the identity provider is unavailable; retry")
            }
            other => ExchangeError::Invalid(other.to_string()),
        })?;
    let user_id = UserId::new(provider_id, &identity.subject)
        .map_err(|e| ExchangeError::Invalid(format!("subject: {e}")))?;
    // Each ID token once: its hash stays in the replay cache until it expires.
    // Last, so a refused token consumes nothing.
    let keep_until = identity.expires_at + clock_skew.as_secs() as i64;
    let fingerprint = replay_fingerprint(id_token);
    if !store
        .remember_jti(REPLAY_SCOPE, &fingerprint, keep_until)
        .await?
    {
        return Err(ExchangeError::Replayed);
    }
    Ok(ExchangedUser {
        user_id,
        name: identity.name.or(identity.preferred_username),
        email: identity.email,
        email_verified: identity.email_verified,
        auth_time: identity.auth_time,
    })
}

/// What makes an ID token the same one: its signed content (header and
/// claims), not its signature. ECDSA signatures are malleable — `(r, s)` and
/// `(r, n - s)` both verify — so a hash of the whole JWS would let one ID
/// token through twice.
fn replay_fingerprint(id_token: &str) -> String {
    let signed = id_token
        .rsplit_once('.')
        .map_or(id_token, |(signed, _)| signed);
    format!("id_token:{}", sha256_hex(signed.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::replay_fingerprint;

    #[test]
    fn another_signature_of_the_same_token_is_the_same_token() {
        let a = replay_fingerprint("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLTE");
        let b = replay_fingerprint("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLTI");
        let other = replay_fingerprint("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiIn0.c2lnbmF0dXJlLTE");
        assert_eq!(a, b);
        assert_ne!(a, other);
    }
}
