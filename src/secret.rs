//! Values that must never be printed: tokens, keys, client secrets — and the
//! randomness and hashing chatgate makes its bearer values with.
//!
//! Secrets are the `secrecy` crate's types: `Debug` prints `[REDACTED]`, there
//! is no `Display` or `Serialize`, the value is reachable only through an
//! explicit `expose_secret()` (trait [`ExposeSecret`]), and the memory is zeroed
//! on drop. A stray `{:?}` in a log line or a panic message cannot leak one.

pub use secrecy::{ExposeSecret, SecretSlice, SecretString};

/// `Debug` for a request type that holds bearer values (tokens, codes,
/// tickets) in plain fields, as serde hands them over: the `show` fields
/// print, the `hide` fields print `[REDACTED]`.
///
/// ```ignore
/// redacted_debug!(LogoutForm { show: [], hide: [logout_token] });
/// ```
#[macro_export]
macro_rules! redacted_debug {
    ($ty:ident { show: [$($show:ident),* $(,)?], hide: [$($hide:ident),* $(,)?] }) => {
        impl ::std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($show), &self.$show))*
                    $(.field(stringify!($hide), &"[REDACTED]"))*
                    .finish()
            }
        }
    };
}

/// Secret bytes (a symmetric key, a decrypted vault column).
pub type SecretBytes = SecretSlice<u8>;

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
    fn debug_is_redacted() {
        let s = SecretString::from("hunter2-access-token");
        assert!(!format!("{s:?}").contains("hunter2"));
        let b = SecretBytes::from(b"raw-key-material".to_vec());
        assert!(!format!("{b:?}").contains("raw-key"));
        assert_eq!(b.expose_secret(), b"raw-key-material");
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
