//! Host-signed userinfo tokens (docs/signing-in.md, "Hosts that already know
//! their user"): a host that
//! already authenticated its user signs a short-lived JWT with a per-app key;
//! chatgate verifies it and grants a chat token for `host:{app}:{sub}`.
//!
//! Every check works from the configuration alone: the `kid` selects one of the
//! app's configured keys by exact comparison (never a file, URL or database
//! lookup it could steer), the key fixes the algorithm, and `jku`/`x5u`/`jwk`/
//! `x5c`/`crit` headers are refused outright. Only the single-use `jti` touches
//! the database, atomically, after the token has passed every other check.

use crate::secret::ExposeSecret as _;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;

use crate::config::{AppConfig, HostKeyMaterial};
use crate::domain::UserId;
use crate::store::{Store, StoreError};

/// Largest host token accepted (a userinfo JWT is a few hundred bytes).
const MAX_TOKEN_LEN: usize = 8 * 1024;
const MAX_CLAIM_LEN: usize = 256;

/// Why a host token was refused. `code()` is the stable `error` of the API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostTokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("the token has expired")]
    Expired,
    #[error("the token was already used (jti)")]
    Replayed,
}

impl HostTokenError {
    fn invalid(why: impl Into<String>) -> Self {
        Self::Invalid(why.into())
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid_token",
            Self::Expired => "token_expired",
            Self::Replayed => "token_replayed",
        }
    }
}

/// What a verified host token says about the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUser {
    pub user_id: UserId,
    pub name: Option<String>,
    pub email: Option<String>,
    /// The host's `email_verified`, absent = `false`.
    pub email_verified: bool,
    /// `iat`: when the host vouched for the user.
    pub issued_at: i64,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: Option<String>,
    iat: Option<i64>,
    exp: i64,
    jti: Option<String>,
    name: Option<String>,
    email: Option<String>,
    email_verified: Option<bool>,
}

/// Limits that come from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub clock_skew: Duration,
    pub max_ttl: Duration,
}

/// Checks everything but the replay cache. Pure: no I/O.
pub fn check(
    app: &AppConfig,
    token: &str,
    limits: Limits,
    now: i64,
) -> Result<(HostUser, String, i64), HostTokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(HostTokenError::invalid("the token is too large"));
    }
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| HostTokenError::invalid("the token is not a JWS"))?;
    let forbidden = [
        ("jku", header.jku.is_some()),
        ("x5u", header.x5u.is_some()),
        ("jwk", header.jwk.is_some()),
        ("x5c", header.x5c.is_some()),
        ("crit", header.crit.is_some()),
    ];
    if let Some((name, _)) = forbidden.iter().find(|(_, present)| *present) {
        return Err(HostTokenError::invalid(format!(
            "the {name} header is not accepted: keys come from chatgate's configuration only"
        )));
    }
    let kid = header
        .kid
        .as_deref()
        .ok_or_else(|| HostTokenError::invalid("the token has no kid"))?;
    let key = app
        .host_keys
        .iter()
        .find(|k| k.kid.as_str() == kid)
        .ok_or_else(|| HostTokenError::invalid("unknown kid for this app"))?;
    let alg = key.alg.jwt_alg();
    if header.alg != alg {
        // Which algorithm the key is for is not told to an anonymous caller.
        return Err(HostTokenError::invalid(
            "the token's alg is not the one configured for its kid",
        ));
    }
    let decoding = match &key.key {
        HostKeyMaterial::Secret(secret) => DecodingKey::from_secret(secret.expose_secret()),
        HostKeyMaterial::Public(public) => public.clone(),
    };
    let mut validation = Validation::new(alg);
    validation.leeway = limits.clock_skew.as_secs();
    validation.validate_nbf = true;
    validation.set_audience(&[app.id.as_str()]);
    let mut required = vec!["exp", "aud", "sub"];
    if let Some(issuer) = &key.issuer {
        validation.set_issuer(&[issuer]);
        required.push("iss");
    }
    validation.set_required_spec_claims(&required);
    let claims = jsonwebtoken::decode::<Claims>(token, &decoding, &validation)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => HostTokenError::Expired,
            ErrorKind::InvalidSignature => HostTokenError::invalid("the signature does not verify"),
            ErrorKind::InvalidAudience => {
                HostTokenError::invalid(format!("aud must be the app id {:?}", app.id.as_str()))
            }
            ErrorKind::InvalidIssuer => HostTokenError::invalid("iss is not this key's issuer"),
            ErrorKind::ImmatureSignature => {
                HostTokenError::invalid("the token is not valid yet (nbf)")
            }
            ErrorKind::MissingRequiredClaim(c) => {
                HostTokenError::invalid(format!("the {c} claim is required"))
            }
            ErrorKind::InvalidAlgorithm => {
                HostTokenError::invalid("algorithm not allowed for this key")
            }
            _ => HostTokenError::invalid("the token's claims are malformed"),
        })?
        .claims;

    let skew = limits.clock_skew.as_secs() as i64;
    let iat = claims
        .iat
        .ok_or_else(|| HostTokenError::invalid("the iat claim is required"))?;
    if iat > now + skew {
        return Err(HostTokenError::invalid(
            "the token is issued in the future (iat)",
        ));
    }
    if claims.exp - iat > limits.max_ttl.as_secs() as i64 {
        return Err(HostTokenError::invalid(format!(
            "exp - iat may be at most {} s (max_host_token_ttl)",
            limits.max_ttl.as_secs()
        )));
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= MAX_CLAIM_LEN)
        .ok_or_else(|| {
            HostTokenError::invalid("a jti claim (unique, at most 256 characters) is required")
        })?;
    let sub = claims
        .sub
        .filter(|s| !s.is_empty() && s.len() <= MAX_CLAIM_LEN && !s.chars().any(char::is_control))
        .ok_or_else(|| HostTokenError::invalid("sub must be 1 to 256 printable characters"))?;
    let user_id = UserId::parse(format!("host:{}:{sub}", app.id))
        .map_err(|e| HostTokenError::invalid(format!("sub does not make a user id: {e}")))?;
    let short = |v: Option<String>| {
        v.filter(|s| s.len() <= MAX_CLAIM_LEN && !s.chars().any(char::is_control))
    };
    Ok((
        HostUser {
            user_id,
            name: short(claims.name),
            email: short(claims.email),
            email_verified: claims.email_verified.unwrap_or(false),
            issued_at: iat,
        },
        jti,
        claims.exp,
    ))
}

/// Checks the token and consumes its `jti` (atomically, across replicas).
pub async fn verify(
    store: &Store,
    app: &AppConfig,
    token: &str,
    limits: Limits,
    now: i64,
) -> Result<Result<HostUser, HostTokenError>, StoreError> {
    let (user, jti, exp) = match check(app, token, limits, now) {
        Ok(v) => v,
        Err(e) => return Ok(Err(e)),
    };
    let keep_until = exp + limits.clock_skew.as_secs() as i64;
    if !store
        .remember_jti(app.id.as_str(), &jti, keep_until)
        .await?
    {
        return Ok(Err(HostTokenError::Replayed));
    }
    Ok(Ok(user))
}
