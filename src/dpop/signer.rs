//! The client side of DPoP: a P-256 key that signs proofs, as widget.js does
//! in the browser. For Rust clients and for the tests.

use jsonwebtoken::jwk::{CommonParameters, Jwk, ThumbprintHash};
use serde_json::json;

use super::{Jkt, token_hash};
use crate::chat_token::{SigningAlg, SigningKey};
use crate::secret::random_token;

/// A DPoP key pair that signs proofs.
#[derive(Debug)]
pub struct ProofSigner {
    pub(super) key: SigningKey,
    pub(super) jwk: Jwk,
    jkt: Jkt,
}

impl Default for ProofSigner {
    fn default() -> Self {
        Self::generate()
    }
}

impl ProofSigner {
    /// A new random key.
    pub fn generate() -> Self {
        let key = SigningKey::generate(SigningAlg::Es256);
        let jwk = Jwk {
            common: CommonParameters::default(),
            algorithm: key.public_jwk().algorithm.clone(),
        };
        let jkt = jwk
            .thumbprint(ThumbprintHash::SHA256)
            .ok()
            .and_then(|t| Jkt::parse(&t))
            .expect("a P-256 public key has a SHA-256 thumbprint");
        Self { key, jwk, jkt }
    }

    /// The key's thumbprint (`dpop_jkt`, `cnf.jkt`).
    pub fn jkt(&self) -> &Jkt {
        &self.jkt
    }

    /// A proof for `htm` `htu` issued at `iat`, with `ath` when a token is
    /// presented with it.
    pub fn proof_at(&self, htm: &str, htu: &str, iat: i64, token: Option<&str>) -> String {
        let mut claims = json!({
            "jti": random_token::<16>(),
            "htm": htm,
            "htu": htu,
            "iat": iat,
        });
        if let Some(token) = token {
            claims["ath"] = token_hash(token).into();
        }
        self.sign_claims(&claims)
    }

    /// A proof issued now.
    pub fn proof(&self, htm: &str, htu: &str, token: Option<&str>) -> String {
        self.proof_at(htm, htu, crate::time::now(), token)
    }

    /// Signs arbitrary claims as a proof (tests of malformed proofs).
    pub fn sign_claims(&self, claims: &serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.typ = Some("dpop+jwt".into());
        header.jwk = Some(self.jwk.clone());
        self.key.sign_with_header(header, claims)
    }
}
