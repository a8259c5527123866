//! Row authentication: HMAC-SHA256 tags over database rows that must not be
//! forgeable by someone who can write to the database but has no vault key
//! (bot credentials, published signing keys).
//!
//! The MAC keys are derived from the vault keys, one per purpose:
//! `HMAC-SHA256(vault key, "chatgate-mac-v1:" + purpose)`. The first vault key
//! tags; every configured one verifies, so a row tagged before a vault-key
//! rotation stays valid while the old key is configured, and is re-tagged under
//! the new one the next time it is written.

use crate::secret::ExposeSecret as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::KeyId;
use crate::secret::SecretBytes;

type HmacSha256 = Hmac<Sha256>;

/// The derived keys of one purpose, newest first.
pub struct MacKeys {
    keys: Vec<(KeyId, SecretBytes)>,
}

impl std::fmt::Debug for MacKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("MacKeys").field("key_ids", &ids).finish()
    }
}

fn hmac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// Length-prefixed, so that no two different lists of parts encode alike.
fn feed(mac: &mut HmacSha256, parts: &[&[u8]]) {
    for part in parts {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
}

impl MacKeys {
    pub(super) fn derive<'a>(
        vault_keys: impl Iterator<Item = (&'a KeyId, &'a [u8])>,
        purpose: &str,
    ) -> Self {
        let keys = vault_keys
            .map(|(id, material)| {
                let mut mac = hmac(material);
                mac.update(b"chatgate-mac-v1:");
                mac.update(purpose.as_bytes());
                (
                    id.clone(),
                    SecretBytes::from(mac.finalize().into_bytes().to_vec()),
                )
            })
            .collect();
        Self { keys }
    }

    /// The id of the key that tags.
    pub fn current(&self) -> &KeyId {
        &self.keys[0].0
    }

    /// The tag of `parts` under the current key.
    pub fn tag(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = hmac(self.keys[0].1.expose_secret());
        feed(&mut mac, parts);
        mac.finalize().into_bytes().to_vec()
    }

    /// The tag of `parts` under every key, newest first: for finding a row by
    /// a keyed hash whichever key made it.
    pub fn tags(&self, parts: &[&[u8]]) -> Vec<(KeyId, Vec<u8>)> {
        self.keys
            .iter()
            .map(|(id, key)| {
                let mut mac = hmac(key.expose_secret());
                feed(&mut mac, parts);
                (id.clone(), mac.finalize().into_bytes().to_vec())
            })
            .collect()
    }

    /// Whether `tag` is the tag of `parts` under key `key_id` (constant time).
    /// `false` for a key that is not configured.
    pub fn verify(&self, key_id: &str, parts: &[&[u8]], tag: &[u8]) -> bool {
        let Some((_, key)) = self.keys.iter().find(|(id, _)| id.as_str() == key_id) else {
            return false;
        };
        let mut mac = hmac(key.expose_secret());
        feed(&mut mac, parts);
        mac.verify_slice(tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(ids: &[(&str, u8)], purpose: &str) -> MacKeys {
        let owned: Vec<(KeyId, Vec<u8>)> = ids
            .iter()
            .map(|(id, b)| (KeyId::parse(*id).unwrap(), vec![*b; 32]))
            .collect();
        MacKeys::derive(owned.iter().map(|(id, k)| (id, k.as_slice())), purpose)
    }

    #[test]
    fn a_tag_verifies_under_its_key_and_nothing_else() {
        let ring = keys(&[("new", 1), ("old", 2)], "bots");
        let tag = ring.tag(&[b"bot_1", b"support"]);
        assert!(ring.verify("new", &[b"bot_1", b"support"], &tag));
        assert!(!ring.verify("old", &[b"bot_1", b"support"], &tag));
        assert!(!ring.verify("gone", &[b"bot_1", b"support"], &tag));
        assert!(!ring.verify("new", &[b"bot_1", b"sales"], &tag));
        // Length-prefixed: moving a byte between parts changes the tag.
        assert!(!ring.verify("new", &[b"bot_1s", b"upport"], &tag));
    }

    #[test]
    fn purposes_and_vault_keys_give_different_keys() {
        let a = keys(&[("k", 1)], "bots").tag(&[b"x"]);
        let b = keys(&[("k", 1)], "signing-keys").tag(&[b"x"]);
        let c = keys(&[("k", 2)], "bots").tag(&[b"x"]);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn an_old_keys_tag_still_verifies_after_rotation() {
        let before = keys(&[("old", 2)], "bots");
        let after = keys(&[("new", 1), ("old", 2)], "bots");
        let tag = before.tag(&[b"row"]);
        assert!(after.verify("old", &[b"row"], &tag));
        assert_eq!(after.tags(&[b"row"])[1].1, tag);
    }
}
