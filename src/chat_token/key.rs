//! Chat-token signing keys: Ed25519 or P-256, PKCS#8 PEM, `kid` = the RFC 7638
//! thumbprint of the public key.

use crate::secret::ExposeSecret as _;
use std::fmt;

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};

use crate::secret::{SecretString, random_bytes};

/// The algorithm of a chat-token signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlg {
    EdDsa,
    Es256,
}

impl SigningAlg {
    pub fn parse(value: &str) -> Option<Self> {
        match value.to_ascii_lowercase().as_str() {
            "eddsa" | "ed25519" => Some(Self::EdDsa),
            "es256" | "p-256" | "p256" => Some(Self::Es256),
            _ => None,
        }
    }
}

/// The private key that signs chat tokens. `Debug` shows the `kid` only.
pub struct SigningKey {
    pub(super) kid: String,
    pub(super) alg: Algorithm,
    pub(super) encoding: EncodingKey,
    public_jwk: Jwk,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a PKCS#8 PEM private key (Ed25519 or P-256; SEC1 `EC PRIVATE KEY`
    /// is accepted for P-256), as written by `chatgate keys generate signing`.
    pub fn from_pem(pem: &SecretString) -> Result<Self, String> {
        use ed25519_dalek::pkcs8::DecodePrivateKey as _;
        use p256::pkcs8::EncodePrivateKey as _;
        let text = pem.expose_secret();
        if let Ok(key) = ed25519_dalek::SigningKey::from_pkcs8_pem(text) {
            let der = ed25519_pkcs8_v1(&key)
                .to_pkcs8_der()
                .map_err(|e| format!("cannot encode the key: {e}"))?;
            return Self::from_encoding_key(
                EncodingKey::from_ed_der(der.as_bytes()),
                Algorithm::EdDSA,
            );
        }
        let p256_key = p256::SecretKey::from_pkcs8_pem(text)
            .or_else(|_| p256::SecretKey::from_sec1_pem(text))
            .map_err(|_| {
                "is not a PEM private key of a supported type (Ed25519 or P-256 in PKCS#8; \
                 generate one with `chatgate keys generate signing`)"
                    .to_string()
            })?;
        let der = p256_key
            .to_pkcs8_der()
            .map_err(|e| format!("cannot encode the key: {e}"))?;
        Self::from_encoding_key(EncodingKey::from_ec_der(der.as_bytes()), Algorithm::ES256)
    }

    fn from_encoding_key(encoding: EncodingKey, alg: Algorithm) -> Result<Self, String> {
        let mut public_jwk = Jwk::from_encoding_key(&encoding, alg)
            .map_err(|e| format!("cannot derive the public key: {e}"))?;
        // RFC 7638 thumbprint: stable for the key, needs no configuration.
        let kid = public_jwk
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|e| format!("cannot compute the key id: {e}"))?;
        public_jwk.common.key_id = Some(kid.clone());
        public_jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        public_jwk.common.key_algorithm = Some(match alg {
            Algorithm::ES256 => KeyAlgorithm::ES256,
            _ => KeyAlgorithm::EdDSA,
        });
        Ok(Self {
            kid,
            alg,
            encoding,
            public_jwk,
        })
    }

    /// A new private key as PKCS#8 PEM, for `chatgate keys generate signing`.
    pub fn generate_pem(alg: SigningAlg) -> SecretString {
        use p256::pkcs8::{EncodePrivateKey as _, LineEnding};
        let pem = match alg {
            SigningAlg::EdDsa => {
                let key = ed25519_dalek::SigningKey::from_bytes(&random_bytes::<32>());
                ed25519_pkcs8_v1(&key)
                    .to_pkcs8_pem(LineEnding::LF)
                    .expect("an Ed25519 key encodes as PKCS#8")
            }
            SigningAlg::Es256 => {
                // A random 32-byte string is a valid P-256 scalar with overwhelming
                // probability; loop for the rest.
                let key = loop {
                    if let Ok(key) = p256::SecretKey::from_slice(&random_bytes::<32>()) {
                        break key;
                    }
                };
                key.to_pkcs8_pem(LineEnding::LF)
                    .expect("a P-256 key encodes as PKCS#8")
            }
        };
        SecretString::from(pem.as_str())
    }

    /// A new key in memory (the development IdP's and the tests').
    pub fn generate(alg: SigningAlg) -> Self {
        Self::from_pem(&Self::generate_pem(alg)).expect("a generated key reads back")
    }

    /// The same key under another `kid` (a test IdP naming its keys).
    pub fn with_kid(mut self, kid: &str) -> Self {
        self.kid = kid.to_string();
        self.public_jwk.common.key_id = Some(kid.to_string());
        self
    }

    /// Signs `claims` as a compact JWS with this key's `alg`, `typ: JWT`, and
    /// `kid` (or `header_kid` instead: a test of a lying header).
    pub fn sign_jwt(&self, claims: &impl serde::Serialize, header_kid: Option<&str>) -> String {
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = Some(header_kid.unwrap_or(&self.kid).to_string());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .expect("signing in-memory claims with a valid key cannot fail")
    }

    /// Signs `claims` under a header the caller built (`alg` is this key's).
    pub fn sign_with_header(
        &self,
        mut header: jsonwebtoken::Header,
        claims: &impl serde::Serialize,
    ) -> String {
        header.alg = self.alg;
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .expect("signing in-memory claims with a valid key cannot fail")
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// `EdDSA` or `ES256`.
    pub fn alg_name(&self) -> &'static str {
        match self.alg {
            Algorithm::ES256 => "ES256",
            _ => "EdDSA",
        }
    }

    /// The public key as a JWK with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> &Jwk {
        &self.public_jwk
    }
}

/// An Ed25519 key as PKCS#8 v1 (RFC 8410: private key only), the form OpenSSL
/// writes and `jsonwebtoken` reads.
fn ed25519_pkcs8_v1(key: &ed25519_dalek::SigningKey) -> ed25519_dalek::pkcs8::KeypairBytes {
    ed25519_dalek::pkcs8::KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
}
