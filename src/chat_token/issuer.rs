//! Minting chat tokens with the current key.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::Header;

use super::{ChatClaims, ChatSubject, ChatTokenError, SigningKey};
use crate::secret::random_token;

/// Signs chat tokens with the current key.
#[derive(Debug)]
pub struct ChatTokenIssuer {
    issuer: String,
    key: Arc<SigningKey>,
    ttl: Duration,
}

impl ChatTokenIssuer {
    pub fn new(issuer: String, key: Arc<SigningKey>, ttl: Duration) -> Self {
        Self { issuer, key, ttl }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Mints a token valid from `now` for the configured lifetime.
    pub fn mint(
        &self,
        subject: &ChatSubject<'_>,
        now: i64,
    ) -> Result<(String, ChatClaims), ChatTokenError> {
        let claims = ChatClaims {
            iss: self.issuer.clone(),
            aud: subject.audience.to_string(),
            sub: subject.user.user_id.to_string(),
            app: subject.app.to_string(),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
            jti: random_token::<16>(),
            auth_time: subject.user.auth_time,
            via: subject.user.via,
            name: subject.user.name.map(str::to_string),
            email: subject.user.email.map(str::to_string),
            email_verified: subject.user.email.map(|_| subject.user.email_verified),
            cnf: subject.jkt.map(|jkt| super::Confirmation {
                jkt: jkt.to_string(),
            }),
        };
        let mut header = Header::new(self.key.alg);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.key.encoding)
            .map_err(|e| ChatTokenError::Signing(e.to_string()))?;
        Ok((token, claims))
    }
}
