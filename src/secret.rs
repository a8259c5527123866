//! Values that must never be printed: tokens, keys, client secrets.
//!
//! Every secret chatgate holds in memory lives in one of these newtypes. Their
//! `Debug` and `Display` print `[redacted]`, they have no `Serialize`, and the
//! inner value is only reachable through an explicit `expose_secret()` call, so a
//! stray `{:?}` in a log line or a panic message cannot leak it. The bytes are
//! zeroed when the value is dropped.

use std::fmt;

use zeroize::Zeroize;

const REDACTED: &str = "[redacted]";

/// A secret string (token, client secret, PEM text).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself. Call this only where the value is used, never to log it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretString({REDACTED})")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Drop for SecretString {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Secret bytes (a symmetric key, a decrypted vault column).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretBytes(Vec<u8>);

impl SecretBytes {
    pub fn new(value: Vec<u8>) -> Self {
        Self(value)
    }

    /// The secret itself. Call this only where the value is used, never to log it.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Interprets the bytes as UTF-8 text, keeping them secret.
    pub fn into_secret_string(mut self) -> Result<SecretString, std::string::FromUtf8Error> {
        let bytes = std::mem::take(&mut self.0);
        String::from_utf8(bytes).map(SecretString)
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({REDACTED})")
    }
}

impl fmt::Display for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Drop for SecretBytes {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Fills a fresh buffer from the operating system's CSPRNG.
///
/// Failure of the OS RNG is not recoverable for a security service, so it panics
/// (with a message that contains no secret).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the operating system's random number generator failed");
    buf
}

/// A URL-safe, unpadded base64 string of `N` random bytes (state, nonce, ids).
pub fn random_token<const N: usize>() -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<N>())
}

/// Lower-case hex SHA-256, for storing lookup keys of bearer values (state,
/// session ids, tickets, bot secrets) instead of the values themselves.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_are_redacted() {
        let s = SecretString::new("hunter2-access-token");
        assert_eq!(format!("{s:?}"), "SecretString([redacted])");
        assert_eq!(format!("{s}"), "[redacted]");
        let b = SecretBytes::new(b"raw-key-material".to_vec());
        assert!(!format!("{b:?}").contains("raw-key"));
        assert!(!format!("{b}").contains("raw-key"));
        // inside a derived Debug of a containing struct, too
        #[derive(Debug)]
        #[allow(dead_code)]
        struct Holder {
            token: SecretString,
        }
        let h = Holder { token: s.clone() };
        assert!(!format!("{h:?}").contains("hunter2"));
        assert_eq!(s.expose_secret(), "hunter2-access-token");
    }

    #[test]
    fn random_tokens_differ_and_have_expected_length() {
        let a = random_token::<32>();
        let b = random_token::<32>();
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
    }
}
