//! Logout tokens (OpenID Connect Back-Channel Logout 1.0, section 2.6):
//! a JWT the IdP POSTs when a user's session ends there.
//!
//! The JWS is verified by `jsonwebtoken` with a key of the provider's JWKS
//! (an asymmetric algorithm only: a logout token signed with an HMAC or
//! `none` is refused); the claims are then checked as the specification
//! requires.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::*;

/// The `events` member a logout token must carry.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// A logout token's `iat` may be at most this old (plus clock skew); its `jti`
/// is remembered at least this long.
pub const LOGOUT_TOKEN_MAX_AGE: Duration = Duration::from_secs(300);

/// Algorithms a logout token may be signed with.
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What a valid logout token says: whose session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutToken {
    /// The user (`sub`), when named.
    pub sub: Option<String>,
    /// The IdP session (`sid`), when named.
    pub sid: Option<String>,
    /// The token's id, single-use.
    pub jti: String,
    /// Until when the `jti` must be remembered (Unix seconds): after that the
    /// token is too old to be accepted again anyway.
    pub remember_until: i64,
}

/// Why a logout token was refused. The message is safe to return to the
/// sender (it names no key material and no claim value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogoutTokenError {
    /// Not a JWT, a bad signature, a wrong issuer or audience, expired, ...
    #[error("{0}")]
    Invalid(String),
    /// Signed with a key the provider does not publish, even after a refetch.
    #[error("the logout token is signed with a key the provider does not publish")]
    UnknownKey,
}

#[derive(Debug, Deserialize)]
struct Claims {
    iat: Option<i64>,
    jti: Option<String>,
    sub: Option<String>,
    sid: Option<String>,
    events: Option<serde_json::Map<String, serde_json::Value>>,
    nonce: Option<serde_json::Value>,
}

/// The unverified `iss` and `aud` of a JWT, to pick the provider whose keys
/// verify it (and whose budget of back-channel logouts it spends).
pub fn unverified_issuer(token: &str) -> Option<UnverifiedIssuer> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Audience {
        One(String),
        Many(Vec<String>),
    }
    #[derive(Deserialize)]
    struct Claims {
        iss: String,
        aud: Option<Audience>,
    }
    let claims = jsonwebtoken::dangerous::insecure_decode_claims::<Claims>(token).ok()?;
    Some(UnverifiedIssuer {
        iss: claims.iss,
        aud: match claims.aud {
            None => Vec::new(),
            Some(Audience::One(a)) => vec![a],
            Some(Audience::Many(a)) => a,
        },
    })
}

/// Who a JWT says it is from and for, before anything is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedIssuer {
    pub iss: String,
    pub aud: Vec<String>,
}

impl Provider {
    /// Verifies a logout token from this provider. On an unknown `kid` the
    /// JWKS is fetched again (rate-limited) and the check repeated once.
    pub async fn verify_logout_token(
        &self,
        token: &str,
        now: i64,
        skew: Duration,
    ) -> Result<LogoutToken, LogoutTokenError> {
        self.refetch_stale_jwks().await;
        match self.verify_logout_with_current_keys(token, now, skew) {
            Err(LogoutTokenError::UnknownKey) => match self.refetch_jwks().await {
                Ok(true) => self.verify_logout_with_current_keys(token, now, skew),
                _ => Err(LogoutTokenError::UnknownKey),
            },
            other => other,
        }
    }

    fn verify_logout_with_current_keys(
        &self,
        token: &str,
        now: i64,
        skew: Duration,
    ) -> Result<LogoutToken, LogoutTokenError> {
        let invalid = |why: &str| LogoutTokenError::Invalid(why.to_string());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the logout token is not a JWT"))?;
        if !ASYMMETRIC.contains(&header.alg) {
            return Err(invalid(
                "the logout token must be signed with an asymmetric algorithm",
            ));
        }
        // Explicit typing (RFC 8725) when the IdP uses it: an access token or
        // an ID token is not a logout token.
        if let Some(typ) = &header.typ
            && !["logout+jwt", "jwt"].contains(&typ.to_ascii_lowercase().as_str())
        {
            return Err(invalid("the logout token's typ is not logout+jwt"));
        }
        let key = self.logout_key(header.kid.as_deref(), header.alg)?;
        let mut validation = Validation::new(header.alg);
        // A multi-tenant provider's logout tokens name the user's tenant.
        let issuer = match unverified_issuer(token) {
            Some(claimed) if self.check_iss_parameter(&claimed.iss) != IssParameter::Mismatch => {
                claimed.iss
            }
            _ => self.issuer(),
        };
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[self.config.client_id.as_str()]);
        validation.set_required_spec_claims(&["iss", "aud"]);
        validation.leeway = skew.as_secs();
        // `exp` is checked when present (older IdPs omit it; `iat` bounds those).
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .map_err(|e| invalid(&describe(&e)))?
            .claims;
        check_claims(claims, now, skew)
    }

    /// The JWKS key for `kid` (or the only key usable with `alg` when the
    /// token names none).
    fn logout_key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, LogoutTokenError> {
        let metadata = self.metadata();
        let value = serde_json::to_value(metadata.jwks())
            .map_err(|_| LogoutTokenError::Invalid("the provider's keys are unreadable".into()))?;
        let keys: Vec<jsonwebtoken::jwk::Jwk> = value
            .get("keys")
            .and_then(|k| k.as_array())
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| serde_json::from_value(k.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let set = JwkSet { keys };
        let usable = |jwk: &&jsonwebtoken::jwk::Jwk| {
            jwk.common
                .key_algorithm
                .is_none_or(|a| a.to_string() == format!("{alg:?}"))
                && jwk
                    .common
                    .public_key_use
                    .as_ref()
                    .is_none_or(|u| *u == jsonwebtoken::jwk::PublicKeyUse::Signature)
        };
        let jwk = match kid {
            Some(kid) => set.find(kid).filter(|k| usable(k)),
            None => {
                let mut candidates = set
                    .keys
                    .iter()
                    .filter(usable)
                    .filter(|k| DecodingKey::from_jwk(k).is_ok_and(|_| key_fits(k, alg)));
                match (candidates.next(), candidates.next()) {
                    (Some(only), None) => Some(only),
                    _ => None,
                }
            }
        }
        .ok_or(LogoutTokenError::UnknownKey)?;
        if !key_fits(jwk, alg) {
            return Err(LogoutTokenError::Invalid(
                "the logout token's algorithm does not fit the key it names".into(),
            ));
        }
        DecodingKey::from_jwk(jwk)
            .map_err(|_| LogoutTokenError::Invalid("the provider's key is unusable".into()))
    }
}

/// Whether a JWK's type can verify `alg`.
fn key_fits(jwk: &jsonwebtoken::jwk::Jwk, alg: Algorithm) -> bool {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    matches!(
        (&jwk.algorithm, alg),
        (
            P::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (P::EllipticCurve(_), Algorithm::ES256 | Algorithm::ES384)
            | (P::OctetKeyPair(_), Algorithm::EdDSA)
    )
}

/// The claims section 2.6 asks for beyond signature, `iss`, `aud` and `exp`.
fn check_claims(claims: Claims, now: i64, skew: Duration) -> Result<LogoutToken, LogoutTokenError> {
    let invalid = |why: &str| Err(LogoutTokenError::Invalid(why.to_string()));
    let skew = skew.as_secs() as i64;
    let Some(iat) = claims.iat else {
        return invalid("the logout token has no iat");
    };
    if iat > now + skew {
        return invalid("the logout token was issued in the future");
    }
    if iat < now - LOGOUT_TOKEN_MAX_AGE.as_secs() as i64 - skew {
        return invalid("the logout token is too old");
    }
    let Some(jti) = claims.jti.filter(|j| !j.is_empty() && j.len() <= 256) else {
        return invalid("the logout token has no usable jti");
    };
    let is_logout_event = claims
        .events
        .as_ref()
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
        .is_some_and(|member| member.is_object());
    if !is_logout_event {
        return invalid("the logout token's events claim has no back-channel logout event");
    }
    if claims.nonce.is_some() {
        return invalid("a logout token must not carry a nonce");
    }
    let nonempty = |s: Option<String>| s.filter(|s| !s.is_empty() && s.len() <= 1024);
    let (sub, sid) = (nonempty(claims.sub), nonempty(claims.sid));
    if sub.is_none() && sid.is_none() {
        return invalid("the logout token names neither sub nor sid");
    }
    Ok(LogoutToken {
        sub,
        sid,
        jti,
        // After this, the iat bound refuses the token anyway.
        remember_until: iat + LOGOUT_TOKEN_MAX_AGE.as_secs() as i64 + skew,
    })
}

/// A `jsonwebtoken` error in words fit for the sender.
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => "the logout token's signature does not verify".into(),
        K::ExpiredSignature => "the logout token has expired".into(),
        K::ImmatureSignature => "the logout token is not valid yet".into(),
        K::InvalidIssuer => "the logout token's iss is not the provider's issuer".into(),
        K::InvalidAudience => "the logout token's aud is not chatgate's client_id".into(),
        K::MissingRequiredClaim(c) => format!("the logout token has no {c} claim"),
        _ => "the logout token is malformed".into(),
    }
}
