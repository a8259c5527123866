//! ID-token validation.

use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use openidconnect::core::CoreJwsSigningAlgorithm;
use openidconnect::{ClaimsVerificationError, Nonce, SignatureVerificationError};

use crate::config::ProviderConfig;
use crate::oidc::types::{IdTokenClaimsT, IdTokenT, ProviderMetadata};

use super::*;

impl Provider {
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
        // A symmetric (or no) signature is refused below anyway; say plainly
        // which setting to change, the most common misconfiguration of a new
        // client (LemonLDAP::NG's default is HS512).
        if let Ok(alg) = token.signing_alg()
            && matches!(
                alg,
                CoreJwsSigningAlgorithm::HmacSha256
                    | CoreJwsSigningAlgorithm::HmacSha384
                    | CoreJwsSigningAlgorithm::HmacSha512
                    | CoreJwsSigningAlgorithm::None
            )
        {
            let name = serde_json::to_value(alg)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            return Err(VerifyError::Invalid(format!(
                "the ID token is signed with {name}: symmetric algorithms (and none) are not accepted; \
                 set this client's ID token signature algorithm to RS256 or ES256 at the identity provider \
                 (provider {})",
                self.config.id
            )));
        }
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
        email_verified_stated: claims.email_verified().is_some(),
        preferred_username: claims.preferred_username().map(|u| u.as_str().to_string()),
        auth_time: claims.auth_time().map(|t| t.timestamp()),
        expires_at: claims.expiration().timestamp(),
        sid: string_claim(extra, "sid"),
    })
}
