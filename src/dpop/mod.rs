//! DPoP proofs (RFC 9449): a short JWS the browser signs with its own
//! non-extractable P-256 key for one request. chatgate checks them where chat
//! tokens are bound to that key (`bind_chat_tokens = "dpop"`).
//!
//! [`verify`] is the whole check of one proof except single use of its `jti`,
//! which needs the database (the caller records [`Proof::replay_id`]).
//! Signature checking is `jsonwebtoken`'s; this module decides the rules.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// How old a proof's `iat` may be (plus the configured clock skew).
pub const PROOF_MAX_AGE: Duration = Duration::from_secs(60);
/// The header that carries a proof.
pub const HEADER: &str = "dpop";
/// Longest proof accepted, in bytes (a P-256 proof is about 600).
const MAX_PROOF_LEN: usize = 2048;
const MAX_JTI_LEN: usize = 128;

/// The JWK SHA-256 thumbprint of a key (RFC 7638): what `cnf.jkt` and
/// `dpop_jkt` carry. 43 base64url characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Jkt(String);

impl Jkt {
    /// Accepts only the shape of a SHA-256 thumbprint (43 base64url characters).
    pub fn parse(value: &str) -> Option<Self> {
        (value.len() == 43
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Self(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Jkt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a proof must match.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// The request's method (`POST`).
    pub htm: &'a str,
    /// The request's URL; query and fragment are ignored on both sides.
    pub htu: &'a str,
    /// The access token the proof is presented with, whose hash `ath` must be.
    pub access_token: Option<&'a str>,
    pub now: i64,
    pub clock_skew: Duration,
}

/// A proof that passed every check but single use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    pub jkt: Jkt,
    pub jti: String,
    pub iat: i64,
}

impl Proof {
    /// The id to record in the replay cache, scoped to the key.
    pub fn replay_scope(&self) -> String {
        format!("dpop:{}", self.jkt)
    }

    /// Until when the replay cache must remember the `jti`: after that the
    /// proof is too old anyway.
    pub fn remember_until(&self, clock_skew: Duration) -> i64 {
        self.iat + (PROOF_MAX_AGE + clock_skew).as_secs() as i64 + 1
    }

    /// Records the proof's `jti` as used, in the database (so across
    /// replicas); `false` when it was used before. Call it once the request
    /// is otherwise authorized: random keys and proofs then store nothing.
    pub async fn spend(
        &self,
        store: &crate::store::Store,
        clock_skew: Duration,
    ) -> Result<bool, crate::store::StoreError> {
        store
            .remember_jti(
                &self.replay_scope(),
                &self.jti,
                self.remember_until(clock_skew),
            )
            .await
    }
}

/// Why a proof was refused (the `error_description` of `invalid_dpop_proof`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    #[error("the DPoP proof is not a well-formed JWS")]
    Malformed,
    #[error("the DPoP proof's typ must be dpop+jwt")]
    WrongType,
    #[error("the DPoP proof must be signed with ES256 by the P-256 public key in its header")]
    UnsupportedKey,
    #[error("the DPoP proof's signature does not verify")]
    BadSignature,
    #[error("the DPoP proof lacks a required claim or has an invalid one: {0}")]
    InvalidClaims(&'static str),
    #[error("the DPoP proof is for another method (htm)")]
    WrongMethod,
    #[error("the DPoP proof is for another URL (htu)")]
    WrongUrl,
    #[error("the DPoP proof is too old or from the future (iat)")]
    Stale,
    #[error("the DPoP proof does not carry the hash of the presented token (ath)")]
    WrongTokenHash,
    #[error("the DPoP proof was used before")]
    Replayed,
    #[error("the DPoP proof is signed by another key than the token is bound to")]
    WrongKey,
}

#[derive(Deserialize)]
struct Claims {
    jti: Option<String>,
    htm: Option<String>,
    htu: Option<String>,
    iat: Option<i64>,
    ath: Option<String>,
}

/// `base64url(SHA-256(token))`: a proof's `ath` for `token`.
pub fn token_hash(token: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// A URL without query and fragment, normalized by the URL parser; `None`
/// when it is not an absolute http(s) URL.
fn htu_base(value: &str) -> Option<String> {
    let mut url = url::Url::parse(value).ok()?;
    if !matches!(url.scheme(), "https" | "http") {
        return None;
    }
    url.set_query(None);
    url.set_fragment(None);
    Some(url.to_string())
}

/// The public key in the proof's header, if it is a public P-256 key: a
/// header whose `jwk` carries a private part (`d`) is refused.
fn header_key(proof: &str) -> Result<Jwk, DpopError> {
    let raw_header = proof.split('.').next().ok_or(DpopError::Malformed)?;
    let bytes = URL_SAFE_NO_PAD
        .decode(raw_header)
        .map_err(|_| DpopError::Malformed)?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| DpopError::Malformed)?;
    let jwk = value.get("jwk").ok_or(DpopError::UnsupportedKey)?;
    if jwk.get("d").is_some() {
        return Err(DpopError::UnsupportedKey);
    }
    let jwk: Jwk = serde_json::from_value(jwk.clone()).map_err(|_| DpopError::UnsupportedKey)?;
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Ok(jwk),
        _ => Err(DpopError::UnsupportedKey),
    }
}

/// Checks one proof: shape, `typ`, ES256 signature by the header's key,
/// `htm`, `htu`, `iat` within [`PROOF_MAX_AGE`] (and not ahead by more than
/// the clock skew), a `jti`, and `ath` when a token is presented.
pub fn verify(proof: &str, expected: &Expected<'_>) -> Result<Proof, DpopError> {
    if proof.len() > MAX_PROOF_LEN || proof.split('.').count() != 3 {
        return Err(DpopError::Malformed);
    }
    let header = jsonwebtoken::decode_header(proof).map_err(|_| DpopError::Malformed)?;
    if !header
        .typ
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("dpop+jwt"))
    {
        return Err(DpopError::WrongType);
    }
    if header.alg != Algorithm::ES256 {
        return Err(DpopError::UnsupportedKey);
    }
    let jwk = header_key(proof)?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| DpopError::UnsupportedKey)?;
    let jkt = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .ok()
        .and_then(|t| Jkt::parse(&t))
        .ok_or(DpopError::UnsupportedKey)?;

    let mut validation = Validation::new(Algorithm::ES256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.set_required_spec_claims::<&str>(&[]);
    let claims = jsonwebtoken::decode::<Claims>(proof, &key, &validation)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::InvalidSignature => DpopError::BadSignature,
            _ => DpopError::Malformed,
        })?
        .claims;

    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= MAX_JTI_LEN)
        .ok_or(DpopError::InvalidClaims("jti"))?;
    let htm = claims.htm.ok_or(DpopError::InvalidClaims("htm"))?;
    let htu = claims.htu.ok_or(DpopError::InvalidClaims("htu"))?;
    let iat = claims.iat.ok_or(DpopError::InvalidClaims("iat"))?;
    if htm != expected.htm {
        return Err(DpopError::WrongMethod);
    }
    match (htu_base(&htu), htu_base(expected.htu)) {
        (Some(got), Some(want)) if got == want => {}
        _ => return Err(DpopError::WrongUrl),
    }
    let skew = expected.clock_skew.as_secs() as i64;
    let max_age = PROOF_MAX_AGE.as_secs() as i64;
    if iat > expected.now + skew || iat < expected.now - max_age - skew {
        return Err(DpopError::Stale);
    }
    if let Some(token) = expected.access_token {
        let want = token_hash(token);
        if claims.ath.as_deref() != Some(want.as_str()) {
            return Err(DpopError::WrongTokenHash);
        }
    }
    Ok(Proof { jkt, jti, iat })
}

mod signer;
pub use signer::ProofSigner;

#[cfg(test)]
mod tests;
