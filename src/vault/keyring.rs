//! The vault key ring: AES-256-GCM with a fresh random 96-bit nonce per seal,
//! the key id stored with every ciphertext, and associated data that binds a
//! ciphertext to the row and column it was written for.
//!
//! Sealed format (bytes): `0x01 | len(key_id) | key_id | nonce[12] | ciphertext+tag[16]`.

use crate::secret::ExposeSecret as _;
use std::fmt;

use aes_gcm::{
    Aes256Gcm, KeyInit,
    aead::{Aead, AeadInOut, Payload, inout::InOutBuf},
};
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::domain::KeyId;
use crate::secret::{SecretBytes, SecretString, random_bytes};

const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
pub const KEY_LEN: usize = 32;

/// Why a sealed value could not be opened. Never carries the plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("the sealed value is malformed")]
    Malformed,
    #[error("the sealed value was written with vault key {0:?}, which is not in [vault] keys")]
    UnknownKey(String),
    #[error(
        "the sealed value does not authenticate (tampered, moved from another row, or a wrong key)"
    )]
    Decrypt,
    #[error("the opened value is not UTF-8 text")]
    NotText,
}

/// What a ciphertext is bound to: the table, the row's key and the column.
/// Opening it under any other context fails.
#[derive(Debug, Clone, Copy)]
pub struct Aad<'a> {
    pub table: &'a str,
    pub row: &'a [&'a str],
    pub column: &'a str,
}

impl Aad<'_> {
    /// Length-prefixed so that no two different contexts encode the same bytes.
    fn encode(&self) -> Vec<u8> {
        let mut out = b"chatgate-vault-v1".to_vec();
        let parts = std::iter::once(self.table)
            .chain(self.row.iter().copied())
            .chain(std::iter::once(self.column));
        for part in parts {
            out.extend_from_slice(&(part.len() as u32).to_be_bytes());
            out.extend_from_slice(part.as_bytes());
        }
        out
    }
}

struct VaultKey {
    id: KeyId,
    cipher: Aes256Gcm,
    /// The key itself, for deriving the MAC keys of [`super::mac`].
    material: SecretBytes,
}

/// All configured vault keys: the first seals, every one opens.
pub struct VaultKeyRing {
    keys: Vec<VaultKey>,
}

impl fmt::Debug for VaultKeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("VaultKeyRing")
            .field("key_ids", &ids)
            .finish()
    }
}

impl VaultKeyRing {
    /// Builds the ring from `(id, 32-byte key)` pairs, newest first.
    pub fn new(keys: Vec<(KeyId, SecretBytes)>) -> Result<Self, String> {
        if keys.is_empty() {
            return Err("at least one vault key is required".into());
        }
        let mut ring = Vec::with_capacity(keys.len());
        for (id, key) in keys {
            if ring.iter().any(|k: &VaultKey| k.id == id) {
                return Err(format!("vault key id {id:?} appears twice"));
            }
            let cipher = Aes256Gcm::new_from_slice(key.expose_secret())
                .map_err(|_| format!("vault key {id:?} must be exactly {KEY_LEN} bytes"))?;
            ring.push(VaultKey {
                id,
                cipher,
                material: key,
            });
        }
        Ok(Self { keys: ring })
    }

    /// Decodes a key as printed by `chatgate keys generate vault` (base64 of 32 bytes).
    pub fn decode_key(text: &SecretString) -> Result<SecretBytes, String> {
        let t = text.expose_secret().trim();
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(t)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(t))
            .map_err(|_| {
                "is not base64 (generate one with `chatgate keys generate vault`)".to_string()
            })?;
        let bytes = SecretBytes::from(bytes);
        if bytes.expose_secret().len() != KEY_LEN {
            return Err(format!(
                "must decode to {KEY_LEN} bytes, not {} (generate one with `chatgate keys generate vault`)",
                bytes.expose_secret().len()
            ));
        }
        Ok(bytes)
    }

    /// A new random key, base64-encoded, for `chatgate keys generate vault`.
    pub fn generate_key() -> SecretString {
        let mut raw = random_bytes::<KEY_LEN>();
        let text = base64::engine::general_purpose::STANDARD.encode(raw);
        zeroize::Zeroize::zeroize(&mut raw);
        SecretString::from(text)
    }

    /// The id of the key that seals new values.
    pub fn current_key_id(&self) -> &KeyId {
        &self.keys[0].id
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.iter().map(|k| &k.id)
    }

    /// Encrypts `plaintext` under the current key, bound to `aad`.
    pub fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let nonce = random_bytes::<NONCE_LEN>();
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce.into(),
                Payload {
                    msg: plaintext,
                    aad: &aad.encode(),
                },
            )
            .expect("AES-GCM encryption of an in-memory buffer cannot fail");
        let id = key.id.as_str().as_bytes();
        let mut out = Vec::with_capacity(2 + id.len() + NONCE_LEN + ciphertext.len());
        out.push(FORMAT_V1);
        out.push(id.len() as u8); // KeyId is at most 64 bytes
        out.extend_from_slice(id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        out
    }

    /// Decrypts a sealed value, checking that it was sealed for `aad`.
    pub fn open(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<SecretBytes, SealError> {
        let mut plain = self.decrypt(aad, sealed)?;
        Ok(SecretBytes::from(std::mem::take(&mut *plain)))
    }

    /// [`VaultKeyRing::open`] for a value sealed from UTF-8 text (a token),
    /// as a secret of its own buffer: no other copy of the plaintext is made.
    pub fn open_text(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<SecretString, SealError> {
        let mut plain = self.decrypt(aad, sealed)?;
        let text = String::from_utf8(std::mem::take(&mut *plain)).map_err(|e| {
            zeroize::Zeroize::zeroize(&mut e.into_bytes());
            SealError::NotText
        })?;
        Ok(SecretString::from(text))
    }

    /// The plaintext of a sealed value, decrypted straight from `sealed` into
    /// a buffer of exactly its length (so that turning it into a secret's
    /// boxed slice or `Box<str>` does not reallocate and leave a copy
    /// behind), zeroed on drop unless taken, and at once when it does not
    /// authenticate.
    fn decrypt(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let parts = Parts::parse(sealed)?;
        let key = self.key(parts.key_id)?;
        let nonce: [u8; NONCE_LEN] = parts.nonce.try_into().map_err(|_| SealError::Malformed)?;
        let (ciphertext, tag) = parts.ciphertext.split_at(parts.ciphertext.len() - TAG_LEN);
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| SealError::Malformed)?;
        let mut plain = Zeroizing::new(vec![0u8; ciphertext.len()]);
        let buffer = InOutBuf::new(ciphertext, &mut plain).map_err(|_| SealError::Malformed)?;
        key.cipher
            .decrypt_inout_detached(&nonce.into(), &aad.encode(), buffer, &tag.into())
            .map_err(|_| SealError::Decrypt)?;
        Ok(plain)
    }

    fn key(&self, id: &str) -> Result<&VaultKey, SealError> {
        self.keys
            .iter()
            .find(|k| k.id.as_str() == id)
            .ok_or_else(|| SealError::UnknownKey(id.to_string()))
    }

    /// Opens a sealed value and seals it again under the current key.
    pub fn reseal(&self, aad: &Aad<'_>, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let plain = self.open(aad, sealed)?;
        Ok(self.seal(aad, plain.expose_secret()))
    }

    /// Keys for authenticating database rows for one `purpose`, derived from
    /// every vault key (the first one tags, every one verifies), so an attacker
    /// who can write to the database but holds no vault key cannot forge them.
    pub fn mac_keys(&self, purpose: &str) -> super::mac::MacKeys {
        super::mac::MacKeys::derive(
            self.keys
                .iter()
                .map(|k| (&k.id, k.material.expose_secret())),
            purpose,
        )
    }

    /// The key id recorded in a sealed value, without decrypting it.
    pub fn sealed_key_id(sealed: &[u8]) -> Result<&str, SealError> {
        Parts::parse(sealed).map(|p| p.key_id)
    }
}

struct Parts<'a> {
    key_id: &'a str,
    nonce: &'a [u8],
    ciphertext: &'a [u8],
}

impl<'a> Parts<'a> {
    fn parse(sealed: &'a [u8]) -> Result<Self, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Malformed)?;
        if version != FORMAT_V1 {
            return Err(SealError::Malformed);
        }
        let (&id_len, rest) = rest.split_first().ok_or(SealError::Malformed)?;
        let id_len = usize::from(id_len);
        if rest.len() < id_len + NONCE_LEN + TAG_LEN {
            return Err(SealError::Malformed);
        }
        let (id, rest) = rest.split_at(id_len);
        let key_id = std::str::from_utf8(id).map_err(|_| SealError::Malformed)?;
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        Ok(Self {
            key_id,
            nonce,
            ciphertext,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(ids: &[&str]) -> VaultKeyRing {
        VaultKeyRing::new(
            ids.iter()
                .map(|id| {
                    let key = VaultKeyRing::decode_key(&VaultKeyRing::generate_key()).unwrap();
                    (KeyId::parse(*id).unwrap(), key)
                })
                .collect(),
        )
        .unwrap()
    }

    const ROW: Aad<'static> = Aad {
        table: "vault_entries",
        row: &["support", "entra:alice"],
        column: "access_token",
    };

    #[test]
    fn seal_then_open_round_trips() {
        let r = ring(&["k1"]);
        let sealed = r.seal(&ROW, b"eyJ-access-token");
        assert_eq!(
            r.open(&ROW, &sealed).unwrap().expose_secret(),
            b"eyJ-access-token"
        );
        assert_eq!(VaultKeyRing::sealed_key_id(&sealed).unwrap(), "k1");
        assert!(
            !sealed.windows(6).any(|w| w == b"access"),
            "plaintext visible"
        );
    }

    #[test]
    fn every_seal_uses_a_fresh_nonce() {
        let r = ring(&["k1"]);
        let a = r.seal(&ROW, b"same");
        let b = r.seal(&ROW, b"same");
        assert_ne!(a, b);
        assert_ne!(a[4..16], b[4..16]);
    }

    #[test]
    fn a_tampered_byte_anywhere_is_rejected() {
        let r = ring(&["k1"]);
        let sealed = r.seal(&ROW, b"secret");
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            let err = r.open(&ROW, &bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    SealError::Decrypt | SealError::Malformed | SealError::UnknownKey(_)
                ),
                "byte {i}: {err:?}"
            );
        }
        assert_eq!(
            r.open(&ROW, &sealed[..sealed.len() - 1]).err(),
            Some(SealError::Decrypt)
        );
        assert_eq!(
            r.open(&ROW, &sealed[..10]).err(),
            Some(SealError::Malformed)
        );
        assert_eq!(r.open(&ROW, &[]).err(), Some(SealError::Malformed));
    }

    #[test]
    fn open_text_opens_and_refuses_what_open_does() {
        let r = ring(&["k1"]);
        let sealed = r.seal(&ROW, "eyJ-access-token-é".as_bytes());
        assert_eq!(
            r.open_text(&ROW, &sealed).unwrap().expose_secret(),
            "eyJ-access-token-é"
        );
        let mut variants: Vec<Vec<u8>> = (0..sealed.len())
            .map(|i| {
                let mut bad = sealed.clone();
                bad[i] ^= 0x01;
                bad
            })
            .collect();
        variants.extend([
            sealed[..sealed.len() - 1].to_vec(),
            sealed[..10].to_vec(),
            Vec::new(),
        ]);
        for bad in &variants {
            let expected = r.open(&ROW, bad).unwrap_err();
            assert_eq!(r.open_text(&ROW, bad).err(), Some(expected));
        }
        let other_user = Aad {
            row: &["support", "entra:mallory"],
            ..ROW
        };
        assert_eq!(
            r.open_text(&other_user, &sealed).err(),
            Some(SealError::Decrypt)
        );
        let not_text = r.seal(&ROW, &[0x66, 0xff, 0x66]);
        assert_eq!(r.open_text(&ROW, &not_text).err(), Some(SealError::NotText));
        assert_eq!(
            r.open_text(&ROW, &r.seal(&ROW, b""))
                .unwrap()
                .expose_secret(),
            ""
        );
    }

    #[test]
    fn a_ciphertext_moved_to_another_row_or_column_does_not_open() {
        let r = ring(&["k1"]);
        let sealed = r.seal(&ROW, b"secret");
        let other_user = Aad {
            row: &["support", "entra:mallory"],
            ..ROW
        };
        let other_app = Aad {
            row: &["sales", "entra:alice"],
            ..ROW
        };
        let other_column = Aad {
            column: "refresh_token",
            ..ROW
        };
        // Same bytes, different split between the parts.
        let shifted = Aad {
            row: &["support:entra", "alice"],
            ..ROW
        };
        for aad in [other_user, other_app, other_column, shifted] {
            assert_eq!(
                r.open(&aad, &sealed).err(),
                Some(SealError::Decrypt),
                "{aad:?}"
            );
        }
    }

    #[test]
    fn a_wrong_key_with_the_same_id_fails_and_an_unknown_id_is_named() {
        let a = ring(&["k1"]);
        let b = ring(&["k1"]);
        let sealed = a.seal(&ROW, b"secret");
        assert_eq!(b.open(&ROW, &sealed).err(), Some(SealError::Decrypt));
        let c = ring(&["k2"]);
        assert_eq!(
            c.open(&ROW, &sealed).err(),
            Some(SealError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn rotation_first_key_seals_all_keys_open() {
        let old = ring(&["old"]);
        let sealed_old = old.seal(&ROW, b"secret");
        // Rebuild a ring holding a new key first and the old key second.
        let old_key = old.keys.into_iter().next().unwrap();
        let new_key = VaultKeyRing::decode_key(&VaultKeyRing::generate_key()).unwrap();
        let mut rotated = VaultKeyRing::new(vec![(KeyId::parse("new").unwrap(), new_key)]).unwrap();
        rotated.keys.push(old_key);
        assert_eq!(rotated.current_key_id().as_str(), "new");
        assert_eq!(
            rotated.open(&ROW, &sealed_old).unwrap().expose_secret(),
            b"secret"
        );
        let resealed = rotated.reseal(&ROW, &sealed_old).unwrap();
        assert_eq!(VaultKeyRing::sealed_key_id(&resealed).unwrap(), "new");
        assert_eq!(
            rotated.open(&ROW, &resealed).unwrap().expose_secret(),
            b"secret"
        );
    }

    #[test]
    fn key_decoding_checks_length_and_encoding() {
        assert!(VaultKeyRing::decode_key(&SecretString::from("not base64!!")).is_err());
        assert!(VaultKeyRing::decode_key(&SecretString::from("c2hvcnQ=")).is_err());
        let k = VaultKeyRing::generate_key();
        assert_eq!(
            VaultKeyRing::decode_key(&k).unwrap().expose_secret().len(),
            32
        );
        assert!(VaultKeyRing::new(vec![]).is_err());
    }

    #[test]
    fn debug_shows_ids_only() {
        let r = ring(&["k1", "k0"]);
        assert_eq!(
            format!("{r:?}"),
            "VaultKeyRing { key_ids: [\"k1\", \"k0\"] }"
        );
    }
}
