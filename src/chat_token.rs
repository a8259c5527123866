//! Chat tokens: short-lived JWS (EdDSA or ES256) bound to a verified user id,
//! and the key set that publishes their public keys.
//!
//! JWS encoding and verification are done by `jsonwebtoken`; this module decides
//! the claims, which key signs, and which keys verify.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::domain::{AppId, UserId};
use crate::secret::{SecretString, random_bytes, random_token};
use crate::store::{Store, StoreError};
use crate::vault::VaultKeyRing;
use crate::vault::mac::MacKeys;

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
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
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
        SecretString::new(pem.as_str())
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

/// The claims of a chat token (DESIGN.md, "Chat tokens").
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
}

/// Who a new chat token is for.
#[derive(Debug, Clone)]
pub struct ChatSubject<'a> {
    pub app: &'a AppId,
    pub audience: &'a str,
    pub user: &'a ChatUser<'a>,
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

    /// Mints the chat token of `user_id` signed in to `app`.
    pub fn mint_for(
        &self,
        app: &crate::config::AppConfig,
        user: &ChatUser<'_>,
        now: i64,
    ) -> Result<(String, ChatClaims), ChatTokenError> {
        self.mint(
            &ChatSubject {
                app: &app.id,
                audience: &app.chat_audience,
                user,
            },
            now,
        )
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
        };
        let mut header = Header::new(self.key.alg);
        header.kid = Some(self.key.kid.clone());
        header.typ = Some("JWT".into());
        let token = jsonwebtoken::encode(&header, &claims, &self.key.encoding)
            .map_err(|e| ChatTokenError::Signing(e.to_string()))?;
        Ok((token, claims))
    }
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

/// How often each replica records that its signing key is in use.
pub const KEY_HEARTBEAT: Duration = Duration::from_secs(60);

/// The published key set, shared by every request and refreshed from the
/// database by a heartbeat, so every replica publishes the same keys: its own,
/// the other replicas' (during a rolling key change) and every earlier key whose
/// tokens may still be valid.
pub struct KeyDirectory {
    issuer: Arc<ChatTokenIssuer>,
    retention: Duration,
    current: RwLock<Arc<VerificationKeys>>,
    /// Tags the rows of `signing_keys`: one planted by someone with database
    /// access but no vault key is not published.
    macs: MacKeys,
}

/// The parts of a `signing_keys` row its tag covers.
fn signing_key_parts<'a>(kid: &'a str, alg: &'a str, jwk: &'a str) -> [&'a [u8]; 3] {
    [kid.as_bytes(), alg.as_bytes(), jwk.as_bytes()]
}

impl fmt::Debug for KeyDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyDirectory")
            .field("kid", &self.issuer.key().kid())
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

impl KeyDirectory {
    /// A key stays published for `retention` after the last heartbeat that used
    /// it: the longest a token it signed can live, plus clock skew and a
    /// heartbeat period of slack.
    pub fn new(issuer: Arc<ChatTokenIssuer>, clock_skew: Duration, vault: &VaultKeyRing) -> Self {
        let retention = issuer.ttl() + clock_skew + 2 * KEY_HEARTBEAT;
        let only_current = VerificationKeys::new([issuer.key().public_jwk().clone()]);
        Self {
            issuer,
            retention,
            current: RwLock::new(Arc::new(only_current)),
            macs: Self::mac_keys(vault),
        }
    }

    fn mac_keys(vault: &VaultKeyRing) -> MacKeys {
        vault.mac_keys("signing-keys")
    }

    /// Tags the rows present when migration 0004 ran. Called exactly once,
    /// right after it.
    pub async fn adopt_rows_from_before_tags(
        store: &Store,
        vault: &VaultKeyRing,
    ) -> Result<u64, StoreError> {
        let macs = Self::mac_keys(vault);
        store
            .tag_untagged_signing_keys(macs.current().as_str(), |row| {
                macs.tag(&signing_key_parts(&row.kid, &row.alg, &row.public_jwk))
            })
            .await
    }

    pub fn issuer(&self) -> &ChatTokenIssuer {
        &self.issuer
    }

    /// The keys as of the last refresh.
    pub fn keys(&self) -> Arc<VerificationKeys> {
        self.current
            .read()
            .expect("key directory lock poisoned")
            .clone()
    }

    /// Records (tagged) that `key` signs chat tokens at `now`: the heartbeat
    /// of a replica's key.
    pub async fn record_key(
        &self,
        store: &Store,
        key: &SigningKey,
        now: i64,
    ) -> Result<(), StoreError> {
        let jwk = serde_json::to_string(key.public_jwk()).expect("a JWK serializes");
        let mac = self
            .macs
            .tag(&signing_key_parts(key.kid(), key.alg_name(), &jwk));
        store
            .touch_signing_key(
                key.kid(),
                key.alg_name(),
                &jwk,
                self.macs.current().as_str(),
                &mac,
                now,
            )
            .await
    }

    /// Records the heartbeat of the current key and reloads the published set.
    pub async fn refresh(&self, store: &Store, now: i64) -> Result<(), StoreError> {
        let key = self.issuer.key();
        self.record_key(store, key, now).await?;
        let since = now - self.retention.as_secs() as i64;
        let rows = store.signing_keys_used_since(since).await?;
        let mut jwks = vec![key.public_jwk().clone()];
        for row in rows {
            let authentic = match (&row.key_id, &row.mac) {
                (Some(key_id), Some(mac)) => self.macs.verify(
                    key_id,
                    &signing_key_parts(&row.kid, &row.alg, &row.public_jwk),
                    mac,
                ),
                _ => false,
            };
            if !authentic {
                tracing::warn!(kid = %row.kid, "a stored signing key does not authenticate (written without the vault key?); not published");
                continue;
            }
            match serde_json::from_str::<Jwk>(&row.public_jwk) {
                Ok(jwk) => jwks.push(jwk),
                Err(e) => {
                    tracing::warn!(kid = %row.kid, error = %e, "stored signing key does not parse; not published")
                }
            }
        }
        let keys = Arc::new(VerificationKeys::new(jwks));
        *self.current.write().expect("key directory lock poisoned") = keys;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issuer(alg: SigningAlg) -> ChatTokenIssuer {
        let key = SigningKey::from_pem(&SigningKey::generate_pem(alg)).unwrap();
        ChatTokenIssuer::new(
            "https://auth.example.com".into(),
            Arc::new(key),
            Duration::from_secs(900),
        )
    }

    fn keys_of(issuers: &[&ChatTokenIssuer]) -> VerificationKeys {
        VerificationKeys::new(issuers.iter().map(|i| i.key().public_jwk().clone()))
    }

    fn mint(i: &ChatTokenIssuer, now: i64) -> (String, ChatClaims) {
        let app = AppId::parse("support").unwrap();
        let user = UserId::parse("entra:0000-1111").unwrap();
        i.mint(
            &ChatSubject {
                app: &app,
                audience: "https://bot.contoso.com",
                user: &ChatUser {
                    user_id: &user,
                    via: Via::Oidc,
                    auth_time: now - 5,
                    name: Some("Alice"),
                    email: None,
                    email_verified: false,
                },
            },
            now,
        )
        .unwrap()
    }

    #[test]
    fn via_and_email_verified_are_in_the_claims() {
        use base64::Engine as _;
        let i = issuer(SigningAlg::EdDsa);
        let (app, user) = (
            AppId::parse("support").unwrap(),
            UserId::parse("host:support:42").unwrap(),
        );
        let mint = |email: Option<&str>, verified: bool| {
            let (token, _) = i
                .mint(
                    &ChatSubject {
                        app: &app,
                        audience: "https://bot.contoso.com",
                        user: &ChatUser {
                            user_id: &user,
                            via: Via::Host,
                            auth_time: now(),
                            name: None,
                            email,
                            email_verified: verified,
                        },
                    },
                    now(),
                )
                .unwrap();
            let payload = token.split('.').nth(1).unwrap();
            let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(payload)
                .unwrap();
            serde_json::from_slice::<serde_json::Value>(&json).unwrap()
        };
        let claims = mint(Some("bob@example.com"), false);
        assert_eq!(claims["via"], "host");
        assert_eq!(claims["email_verified"], false, "stated, not omitted");
        assert_eq!(mint(Some("bob@example.com"), true)["email_verified"], true);
        assert!(mint(None, true).get("email_verified").is_none());
    }

    fn now() -> i64 {
        crate::time::now()
    }

    const SKEW: Duration = Duration::from_secs(30);

    #[test]
    fn mint_then_verify_for_both_algorithms() {
        for alg in [SigningAlg::EdDsa, SigningAlg::Es256] {
            let i = issuer(alg);
            let (token, claims) = mint(&i, now());
            let verified = keys_of(&[&i])
                .verify(
                    &token,
                    "https://auth.example.com",
                    &["https://bot.contoso.com"],
                    SKEW,
                )
                .unwrap();
            assert_eq!(verified, claims);
            assert_eq!(verified.sub, "entra:0000-1111");
            assert_eq!(verified.app, "support");
            assert_eq!(verified.exp - verified.iat, 900);
            assert_eq!(verified.name.as_deref(), Some("Alice"));
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.kid.as_deref(), Some(i.key().kid()));
        }
    }

    #[test]
    fn expired_tokens_are_refused() {
        let i = issuer(SigningAlg::EdDsa);
        let (token, _) = mint(&i, now() - 900 - 31);
        let err = keys_of(&[&i])
            .verify(
                &token,
                "https://auth.example.com",
                &["https://bot.contoso.com"],
                SKEW,
            )
            .unwrap_err();
        assert_eq!(err, ChatTokenError::Expired);
        // within the clock-skew allowance it is still accepted
        let (token, _) = mint(&i, now() - 900 - 10);
        assert!(
            keys_of(&[&i])
                .verify(
                    &token,
                    "https://auth.example.com",
                    &["https://bot.contoso.com"],
                    SKEW
                )
                .is_ok()
        );
    }

    #[test]
    fn wrong_audience_and_issuer_are_refused() {
        let i = issuer(SigningAlg::EdDsa);
        let (token, _) = mint(&i, now());
        let keys = keys_of(&[&i]);
        assert_eq!(
            keys.verify(
                &token,
                "https://auth.example.com",
                &["https://other-bot"],
                SKEW
            ),
            Err(ChatTokenError::WrongAudience)
        );
        assert_eq!(
            keys.verify(
                &token,
                "https://evil.example.com",
                &["https://bot.contoso.com"],
                SKEW
            ),
            Err(ChatTokenError::WrongIssuer)
        );
    }

    #[test]
    fn unknown_kid_is_refused() {
        let i = issuer(SigningAlg::EdDsa);
        let other = issuer(SigningAlg::EdDsa);
        let (token, _) = mint(&i, now());
        assert_eq!(
            keys_of(&[&other]).verify(
                &token,
                "https://auth.example.com",
                &["https://bot.contoso.com"],
                SKEW
            ),
            Err(ChatTokenError::UnknownKey)
        );
    }

    #[test]
    fn a_token_signed_by_another_key_under_a_known_kid_fails() {
        let i = issuer(SigningAlg::EdDsa);
        let forger = issuer(SigningAlg::EdDsa);
        let (token, claims) = mint(&i, now());
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(i.key().kid().to_string());
        let forged = jsonwebtoken::encode(&header, &claims, &forger.key().encoding).unwrap();
        let keys = keys_of(&[&i]);
        assert_eq!(
            keys.verify(
                &forged,
                "https://auth.example.com",
                &["https://bot.contoso.com"],
                SKEW
            ),
            Err(ChatTokenError::BadSignature)
        );
        // tampering with the payload breaks the signature
        let mut parts: Vec<&str> = token.split('.').collect();
        let evil = claims_b64(&ChatClaims {
            sub: "entra:mallory".into(),
            ..claims
        });
        parts[1] = &evil;
        assert_eq!(
            keys.verify(
                &parts.join("."),
                "https://auth.example.com",
                &["https://bot.contoso.com"],
                SKEW
            ),
            Err(ChatTokenError::BadSignature)
        );
    }

    fn claims_b64(c: &ChatClaims) -> String {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(c).unwrap())
    }

    #[test]
    fn alg_none_and_header_alg_confusion_are_refused() {
        let i = issuer(SigningAlg::EdDsa);
        let (_, claims) = mint(&i, now());
        use base64::Engine as _;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
        };
        let keys = keys_of(&[&i]);
        for alg in ["none", "HS256", "ES256"] {
            let header = serde_json::json!({"alg": alg, "kid": i.key().kid(), "typ": "JWT"});
            let token = format!("{}.{}.", b64(&header), claims_b64(&claims));
            let err = keys
                .verify(
                    &token,
                    "https://auth.example.com",
                    &["https://bot.contoso.com"],
                    SKEW,
                )
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    ChatTokenError::BadSignature | ChatTokenError::Malformed
                ),
                "{alg}: {err:?}"
            );
        }
    }

    #[test]
    fn previous_keys_keep_verifying_while_published() {
        let old = issuer(SigningAlg::EdDsa);
        let new = issuer(SigningAlg::Es256);
        let (old_token, _) = mint(&old, now());
        let keys = keys_of(&[&new, &old]);
        assert_eq!(keys.jwks().keys.len(), 2);
        assert!(
            keys.verify(
                &old_token,
                "https://auth.example.com",
                &["https://bot.contoso.com"],
                SKEW
            )
            .is_ok()
        );
    }

    #[test]
    fn pem_parsing_and_kid_are_stable() {
        let pem = SigningKey::generate_pem(SigningAlg::EdDsa);
        let a = SigningKey::from_pem(&pem).unwrap();
        let b = SigningKey::from_pem(&pem).unwrap();
        assert_eq!(a.kid(), b.kid());
        assert_eq!(a.alg_name(), "EdDSA");
        // PKCS#8 ("PRIVATE KEY"); spelled in two parts so secret scanners do
        // not mistake this test for a committed key.
        let pkcs8_label = format!("-----BEGIN {} KEY-----", "PRIVATE");
        assert_eq!(
            pem.expose_secret().lines().next(),
            Some(pkcs8_label.as_str())
        );
        let ec = SigningKey::from_pem(&SigningKey::generate_pem(SigningAlg::Es256)).unwrap();
        assert_eq!(ec.alg_name(), "ES256");
        assert_ne!(ec.kid(), a.kid());
        assert!(SigningKey::from_pem(&SecretString::new("garbage")).is_err());
        // Debug never shows key material
        assert!(!format!("{a:?}").contains("PRIVATE"));
        let jwk = serde_json::to_value(a.public_jwk()).unwrap();
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["alg"], "EdDSA");
        assert!(jwk.get("d").is_none(), "private part published: {jwk}");
    }
}
