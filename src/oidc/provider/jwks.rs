//! The provider's keys: fetched with their cache time, again after it ran
//! out, and again (rate-limited) for an unknown `kid`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::JsonWebKeySet;

use crate::oidc::http::IdpHttp;
use crate::oidc::types::ProviderMetadata;

use super::*;

impl Provider {
    /// Fetches the JWKS again unless that happened within
    /// [`JWKS_REFETCH_INTERVAL`]. Returns whether the keys were refreshed.
    pub(super) async fn refetch_jwks(&self) -> Result<bool, OidcError> {
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
    pub(super) async fn refetch_stale_jwks(&self) {
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

/// `Cache-Control: max-age` of a response (`no-store` / `no-cache` = 0).
pub(super) fn max_age(headers: &openidconnect::http::HeaderMap) -> Option<Duration> {
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
pub(super) fn jwks_ttl(max_age: Option<Duration>) -> Duration {
    max_age
        .unwrap_or(JWKS_DEFAULT_TTL)
        .clamp(JWKS_MIN_TTL, JWKS_MAX_TTL)
}

pub(super) async fn get_json(http: &IdpHttp, url: &str) -> Result<Vec<u8>, OidcError> {
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
pub(super) async fn fetch_jwks(
    http: &IdpHttp,
    metadata: &ProviderMetadata,
) -> Result<(Jwks, Duration), OidcError> {
    let url = metadata.jwks_uri().url().as_str().to_string();
    let (body, age) = get_json_with_age(http, &url).await?;
    let jwks = serde_json::from_slice(&body)
        .map_err(|e| OidcError::Discovery(format!("{url} is not a JWK set: {e}")))?;
    Ok((jwks, jwks_ttl(age)))
}
