//! Standard Webhooks signatures: `v1,` + base64 HMAC-SHA256 of
//! `"{webhook-id}.{webhook-timestamp}.{body}"` under the secret's bytes, the
//! secret written `whsec_` + base64 (what `chatgate keys generate events`
//! prints, and what every `standardwebhooks` library takes).

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::{ExposeSecret, SecretBytes, SecretString};

const PREFIX: &str = "whsec_";
/// Bytes of a generated secret.
const GENERATED_LEN: usize = 32;

/// A webhook signing secret. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct WebhookSecret(SecretBytes);

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

impl WebhookSecret {
    /// Reads `whsec_<base64>` (at least 24 bytes).
    pub fn parse(text: &SecretString) -> Result<Self, String> {
        let encoded = text.expose_secret().trim();
        let encoded = encoded
            .strip_prefix(PREFIX)
            .ok_or("must start with whsec_ (generate one with `chatgate keys generate events`)")?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .map_err(|_| "is not whsec_ followed by base64".to_string())?;
        if bytes.len() < 24 {
            return Err(format!("must hold at least 24 bytes, not {}", bytes.len()));
        }
        Ok(Self(SecretBytes::from(bytes)))
    }

    /// A new secret, for `chatgate keys generate events`.
    pub fn generate() -> SecretString {
        let bytes = crate::secret::random_bytes::<GENERATED_LEN>();
        SecretString::from(format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ))
    }

    fn bytes(&self) -> &[u8] {
        self.0.expose_secret()
    }
}

/// The `webhook-signature` header value of one delivery.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification's test vectors.
    #[test]
    fn signs_like_the_standard_webhooks_reference() {
        let secret = WebhookSecret::parse(&SecretString::from(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        ))
        .unwrap();
        let signature = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_are_checked_and_generated_ones_parse() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_not base64!",
            "whsec_c2hvcnQ=",
        ] {
            assert!(
                WebhookSecret::parse(&SecretString::from(bad)).is_err(),
                "{bad}"
            );
        }
        let generated = WebhookSecret::generate();
        assert!(WebhookSecret::parse(&generated).is_ok());
        assert!(!format!("{:?}", WebhookSecret::parse(&generated).unwrap()).contains("whsec"));
    }
}
