//! Identity providers: discovery at start (retried with backoff until it
//! works), JWKS caching, and the OIDC calls of the sign-in flow.

pub mod http;
mod provider;
mod types;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use provider::{
    AuthorizationRequest, BACKCHANNEL_LOGOUT_EVENT, IdTokenCheck, Identity, IdpTokens,
    IssParameter, JWKS_REFETCH_INTERVAL, LOGOUT_TOKEN_MAX_AGE, LogoutToken, LogoutTokenError,
    OidcError, Provider, TokenKind, UnverifiedIssuer, unverified_issuer,
};
pub use types::{ExtraClaims, IdTokenT, ProviderMetadata};

use crate::config::ProviderConfig;
use http::IdpHttp;

const FIRST_RETRY: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// Every configured provider, loaded or still being discovered.
#[derive(Debug)]
pub struct Providers {
    http: IdpHttp,
    slots: BTreeMap<String, Slot>,
}

#[derive(Debug)]
struct Slot {
    config: ProviderConfig,
    loaded: RwLock<Option<Arc<Provider>>>,
    last_error: RwLock<Option<String>>,
}

/// Where a provider stands, for `/readyz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderStatus {
    Ready,
    Loading { last_error: Option<String> },
}

impl Providers {
    pub fn new(configs: &[ProviderConfig], http: IdpHttp) -> Self {
        let slots = configs
            .iter()
            .map(|c| {
                (
                    c.id.to_string(),
                    Slot {
                        config: c.clone(),
                        loaded: RwLock::new(None),
                        last_error: RwLock::new(None),
                    },
                )
            })
            .collect();
        Self { http, slots }
    }

    pub fn http(&self) -> &IdpHttp {
        &self.http
    }

    /// The provider if its discovery has completed.
    pub fn get(&self, id: &str) -> Option<Arc<Provider>> {
        self.slots
            .get(id)
            .and_then(|s| s.loaded.read().expect("provider lock poisoned").clone())
    }

    /// Whether discovery has completed for every provider.
    pub fn all_loaded(&self) -> bool {
        self.slots
            .values()
            .all(|s| s.loaded.read().expect("provider lock poisoned").is_some())
    }

    /// The loaded provider whose issuer is `issuer` (exactly).
    pub fn by_issuer(&self, issuer: &str) -> Option<Arc<Provider>> {
        self.slots
            .keys()
            .filter_map(|id| self.get(id))
            .find(|p| p.issuer() == issuer)
    }

    /// The providers a front-channel logout's `iss` names (any tenant's
    /// issuer of a multi-tenant provider); every loaded provider without one.
    pub fn by_iss_parameter(&self, iss: Option<&str>) -> Vec<Arc<Provider>> {
        self.slots
            .keys()
            .filter_map(|id| self.get(id))
            .filter(|p| iss.is_none_or(|iss| p.check_iss_parameter(iss) != IssParameter::Mismatch))
            .collect()
    }

    /// The provider a logout token is from: its issuer (for a multi-tenant
    /// provider, any tenant's) and its client id among the audiences. Two
    /// providers on one issuer (two client registrations) are told apart by
    /// the audience; `check-config` refuses two with the same pair.
    pub fn for_token(&self, claimed: &UnverifiedIssuer) -> Option<Arc<Provider>> {
        self.slots.keys().filter_map(|id| self.get(id)).find(|p| {
            p.check_iss_parameter(&claimed.iss) != IssParameter::Mismatch
                && claimed.aud.iter().any(|a| a == &p.config().client_id)
        })
    }

    pub fn status(&self) -> BTreeMap<String, ProviderStatus> {
        self.slots
            .iter()
            .map(|(id, s)| {
                let status = if s.loaded.read().expect("provider lock poisoned").is_some() {
                    ProviderStatus::Ready
                } else {
                    ProviderStatus::Loading {
                        last_error: s.last_error.read().expect("provider lock poisoned").clone(),
                    }
                };
                (id.clone(), status)
            })
            .collect()
    }

    /// Tries to discover every provider not yet loaded, once. Returns the errors.
    pub async fn load_pending(&self) -> Vec<(String, OidcError)> {
        let mut errors = Vec::new();
        for (id, slot) in &self.slots {
            if slot
                .loaded
                .read()
                .expect("provider lock poisoned")
                .is_some()
            {
                continue;
            }
            match Provider::discover(slot.config.clone(), self.http.clone()).await {
                Ok(p) => {
                    tracing::info!(
                        provider = %id,
                        issuer = %slot.config.issuer,
                        backchannel_logout = p.backchannel_logout_supported(),
                        end_session = p.end_session_supported(),
                        "provider discovered"
                    );
                    *slot.loaded.write().expect("provider lock poisoned") = Some(Arc::new(p));
                    *slot.last_error.write().expect("provider lock poisoned") = None;
                }
                Err(e) => {
                    *slot.last_error.write().expect("provider lock poisoned") = Some(e.to_string());
                    errors.push((id.clone(), e));
                }
            }
        }
        errors
    }

    /// Retries discovery with exponential backoff (0.5 s doubling to 60 s) until
    /// every provider is loaded. Meant to run in the background.
    pub async fn load_until_ready(self: Arc<Self>) {
        let mut delay = FIRST_RETRY;
        loop {
            let errors = self.load_pending().await;
            if errors.is_empty() {
                return;
            }
            for (id, e) in &errors {
                tracing::warn!(provider = %id, error = %e, retry_in = ?delay, "provider discovery failed; will retry");
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_RETRY);
        }
    }
}
