//! Chat tokens: short-lived JWS (EdDSA or ES256) bound to a verified user id,
//! and the key set that publishes their public keys.
//!
//! JWS encoding and verification are done by `jsonwebtoken`; this module decides
//! the claims (here), which key signs ([`issuer`]), which keys verify
//! ([`verify`]), and which keys are published across replicas ([`directory`]).
//! Key material is in [`key`].

mod directory;
mod issuer;
mod key;
mod verify;

use jsonwebtoken::errors::ErrorKind;
use serde::{Deserialize, Serialize};

use crate::domain::{AppId, UserId};

pub use directory::{KEY_HEARTBEAT, KeyDirectory};
pub use issuer::ChatTokenIssuer;
pub use key::{SigningAlg, SigningKey};
pub use verify::VerificationKeys;

/// How the user came in (the `via` claim), so a bot can refuse the weaker ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// chatgate's own sign-in at the IdP (authorization code flow), or a
    /// renewal from the session it started.
    Oidc,
    /// A host-signed userinfo token (`POST /v1/host-session`).
    Host,
    /// An ID token the host page exchanged (`POST /v1/token-exchange`).
    IdToken,
}

/// The claims of a chat token (docs/reference.md, "Chat tokens").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ChatClaims {
    pub iss: String,
    pub aud: String,
    pub sub: String,
    pub app: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub auth_time: i64,
    /// How the user came in.
    pub via: Via,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// With `email`: exactly as the IdP (or host) stated it, `false` when it
    /// did not. Key users on `sub`, never on the email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_verified: Option<bool>,
    /// The browser key the token is bound to (apps with
    /// `bind_chat_tokens = "dpop"`): presenting it takes a DPoP proof of
    /// that key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
}

/// The `cnf` claim (RFC 7800, RFC 9449): the JWK SHA-256 thumbprint of the
/// key that must sign a DPoP proof for the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Confirmation {
    pub jkt: String,
}

/// Who a new chat token is for.
#[derive(Debug, Clone)]
pub struct ChatSubject<'a> {
    pub app: &'a AppId,
    pub audience: &'a str,
    pub user: &'a ChatUser<'a>,
    /// The DPoP key the token is bound to, if any.
    pub jkt: Option<&'a crate::dpop::Jkt>,
}

/// The user a chat token is about.
#[derive(Debug, Clone)]
pub struct ChatUser<'a> {
    pub user_id: &'a UserId,
    pub via: Via,
    /// When the user last authenticated (Unix seconds).
    pub auth_time: i64,
    pub name: Option<&'a str>,
    pub email: Option<&'a str>,
    /// Whether the IdP said the email is verified (absent = `false`).
    pub email_verified: bool,
}

/// Why a chat token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatTokenError {
    #[error("the token is not a well-formed JWS")]
    Malformed,
    #[error("the token's kid is not a key of this issuer")]
    UnknownKey,
    #[error("the token's signature or algorithm does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token was issued for another audience")]
    WrongAudience,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token lacks a required claim or has an invalid one: {0}")]
    InvalidClaims(String),
    #[error("signing failed: {0}")]
    Signing(String),
    #[error("the chat token is for another app")]
    OtherApp,
    #[error("this app's chat tokens are bound to a browser key (cnf), and this one is not")]
    Unbound,
}

impl From<jsonwebtoken::errors::Error> for ChatTokenError {
    fn from(e: jsonwebtoken::errors::Error) -> Self {
        match e.kind() {
            ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => Self::BadSignature,
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => {
                Self::InvalidClaims(c.clone())
            }
            ErrorKind::Json(e) => Self::InvalidClaims(e.to_string()),
            _ => Self::Malformed,
        }
    }
}

#[cfg(test)]
mod tests;
