//! Verifying chat tokens against a set of published keys.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use super::{ChatClaims, ChatTokenError};

/// The public keys that verify chat tokens: the current key and every earlier
/// key whose tokens may still be valid. This is what `/.well-known/jwks.json`
/// serves.
#[derive(Clone)]
pub struct VerificationKeys {
    jwks: JwkSet,
    by_kid: HashMap<String, (DecodingKey, Algorithm)>,
}

impl fmt::Debug for VerificationKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&String> = self.by_kid.keys().collect();
        f.debug_struct("VerificationKeys")
            .field("kids", &kids)
            .finish()
    }
}

impl VerificationKeys {
    /// Builds the set from public JWKs; keys without `kid`, with an algorithm
    /// other than EdDSA/ES256, or that do not parse are left out.
    pub fn new(jwks: impl IntoIterator<Item = Jwk>) -> Self {
        let mut keys = Vec::new();
        let mut by_kid = HashMap::new();
        for jwk in jwks {
            let alg = match jwk.common.key_algorithm {
                Some(KeyAlgorithm::EdDSA) => Algorithm::EdDSA,
                Some(KeyAlgorithm::ES256) => Algorithm::ES256,
                _ => continue,
            };
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            if by_kid.contains_key(&kid) {
                continue;
            }
            let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
                continue;
            };
            by_kid.insert(kid, (decoding, alg));
            keys.push(jwk);
        }
        Self {
            jwks: JwkSet { keys },
            by_kid,
        }
    }

    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    pub fn contains(&self, kid: &str) -> bool {
        self.by_kid.contains_key(kid)
    }

    /// Verifies signature (with the algorithm bound to the `kid`, never the one the
    /// header claims), `iss`, `aud` (one of `audiences`), `exp` and the presence of
    /// every claim, allowing `leeway` of clock skew.
    pub fn verify(
        &self,
        token: &str,
        issuer: &str,
        audiences: &[&str],
        leeway: Duration,
    ) -> Result<ChatClaims, ChatTokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| ChatTokenError::Malformed)?;
        let kid = header.kid.as_deref().ok_or(ChatTokenError::UnknownKey)?;
        let (key, alg) = self.by_kid.get(kid).ok_or(ChatTokenError::UnknownKey)?;
        if header.alg != *alg {
            return Err(ChatTokenError::BadSignature);
        }
        let mut validation = Validation::new(*alg);
        validation.leeway = leeway.as_secs();
        validation.set_issuer(&[issuer]);
        validation.set_audience(audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<ChatClaims>(token, key, &validation)?;
        Ok(data.claims)
    }
}
