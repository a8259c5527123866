//! Bot credentials: high-entropy secrets shown once, stored as a keyed hash.
//!
//! A secret is `cgb_` + 256 random bits (base64url), so a leaked one is easy to
//! spot for secret scanners. With that much entropy a fast hash is enough: there
//! is nothing to brute-force, and authenticating a request costs a couple of
//! HMACs and one indexed lookup, never a password-hash computation.
//!
//! The hash is an HMAC under a key derived from the vault keys, and every row
//! carries a MAC over `(id, app, hash_format, secret_hash)`: someone who can
//! write to the database but holds no vault key can neither add a bot whose
//! secret they know nor move a bot to another app. Rows from before keyed
//! hashes (plain SHA-256) were tagged when migration 0004 ran and are re-hashed
//! on their next use; a plain row without a valid tag is refused.

use crate::secret::ExposeSecret as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::cache::TtlCache;
use crate::domain::{AppId, AuditAction, AuditOutcome};
use crate::secret::{SecretString, random_token};
use crate::store::{AuditEvent, BotCredential, BotRow, Store, StoreError};
use crate::vault::VaultKeyRing;
use crate::vault::mac::MacKeys;

pub const SECRET_PREFIX: &str = "cgb_";
const HMAC: &str = "hmac";
const SHA256: &str = "sha256";

/// An authenticated bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bot {
    pub id: String,
    pub app: AppId,
    pub name: String,
}

impl Bot {
    /// The audit `actor` of this bot.
    pub fn actor(&self) -> String {
        format!("bot:{}", self.id)
    }
}

/// A bot just created: its secret exists only here.
#[derive(Debug)]
pub struct NewBot {
    pub id: String,
    pub secret: SecretString,
}

/// Why a bearer secret was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Unknown,
    Revoked,
}

/// The keys of bot credentials, derived from the vault keys.
#[derive(Debug)]
pub struct BotKeys {
    /// Keys the secret hash.
    hash: MacKeys,
    /// Tags the row.
    row: MacKeys,
}

impl BotKeys {
    pub fn new(vault: &VaultKeyRing) -> Self {
        Self {
            hash: vault.mac_keys("bot-secret"),
            row: vault.mac_keys("bot-row"),
        }
    }

    /// The credential columns of `secret` for bot `id` of `app`, under the
    /// current key.
    fn credential(&self, id: &str, app: &str, secret: &str) -> (Vec<u8>, Vec<u8>) {
        let hash = self.hash.tag(&[secret.as_bytes()]);
        let mac = self.row_tag(id, app, HMAC, &hash);
        (hash, mac)
    }

    fn row_tag(&self, id: &str, app: &str, format: &str, hash: &[u8]) -> Vec<u8> {
        self.row
            .tag(&[id.as_bytes(), app.as_bytes(), format.as_bytes(), hash])
    }

    fn row_is_authentic(&self, row: &BotRow) -> bool {
        let (Some(key_id), Some(mac)) = (&row.key_id, &row.mac) else {
            return false;
        };
        self.row.verify(
            key_id,
            &[
                row.id.as_bytes(),
                row.app.as_bytes(),
                row.hash_format.as_bytes(),
                &row.secret_hash,
            ],
            mac,
        )
    }
}

/// Creates, revokes and authenticates bots, remembering recent answers for the
/// read-cache TTL: a revocation reaches every replica within that time.
/// Unknown secrets are not remembered (a flood of random ones cannot fill the
/// cache).
#[derive(Debug)]
pub struct BotDirectory {
    store: Store,
    keys: BotKeys,
    cache: TtlCache<[u8; 32], Result<Bot, Refused>>,
}

impl BotDirectory {
    pub fn new(store: Store, vault: &VaultKeyRing, ttl: std::time::Duration) -> Self {
        Self {
            store,
            keys: BotKeys::new(vault),
            cache: TtlCache::new(ttl),
        }
    }

    /// Creates a bot for `app` and returns its one-time secret.
    pub async fn create(&self, app: &AppId, name: &str, now: i64) -> Result<NewBot, StoreError> {
        let id = format!("bot_{}", random_token::<9>());
        let secret = SecretString::from(format!("{SECRET_PREFIX}{}", random_token::<32>()));
        let (hash, mac) = self
            .keys
            .credential(&id, app.as_str(), secret.expose_secret());
        self.store
            .insert_bot(
                &id,
                app.as_str(),
                name,
                BotCredential {
                    secret_hash: &hash,
                    hash_format: HMAC,
                    key_id: self.keys.hash.current().as_str(),
                    mac: &mac,
                },
                now,
            )
            .await?;
        self.store
            .record_audit(
                AuditEvent {
                    actor: "cli",
                    app: Some(app),
                    user_id: None,
                    action: AuditAction::BotCreate,
                    outcome: AuditOutcome::Ok,
                    detail: Some(&id),
                },
                now,
            )
            .await?;
        Ok(NewBot { id, secret })
    }

    /// Revokes a bot; `false` when there is no such active bot.
    pub async fn revoke(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let done = self.store.revoke_bot(id, now).await?;
        self.store
            .record_audit(
                AuditEvent {
                    actor: "cli",
                    app: None,
                    user_id: None,
                    action: AuditAction::BotRevoke,
                    outcome: if done {
                        AuditOutcome::Ok
                    } else {
                        AuditOutcome::Absent
                    },
                    detail: Some(id),
                },
                now,
            )
            .await?;
        Ok(done)
    }

    /// The bot a bearer secret belongs to.
    pub async fn authenticate(&self, secret: &str) -> Result<Result<Bot, Refused>, StoreError> {
        if !well_formed(secret) {
            return Ok(Err(Refused::Unknown));
        }
        let cache_key: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        if let Some(known) = self.cache.get(&cache_key) {
            return Ok(known);
        }
        let answer = self.lookup(secret).await?;
        if answer != Err(Refused::Unknown) {
            self.cache.insert(cache_key, answer.clone());
        }
        Ok(answer)
    }

    async fn lookup(&self, secret: &str) -> Result<Result<Bot, Refused>, StoreError> {
        // Whichever vault key made the hash, or a plain SHA-256 from before.
        let keyed = self.keys.hash.tags(&[secret.as_bytes()]);
        let legacy: Vec<u8> = Sha256::digest(secret.as_bytes()).to_vec();
        let mut candidates: Vec<Vec<u8>> = keyed.iter().map(|(_, h)| h.clone()).collect();
        candidates.push(legacy.clone());
        let rows = self.store.find_bots_by_secret_hash(&candidates).await?;
        for row in rows {
            let format_matches = match row.hash_format.as_str() {
                HMAC => keyed.iter().any(|(id, h)| {
                    Some(id.as_str()) == row.key_id.as_deref()
                        && bool::from(row.secret_hash.as_slice().ct_eq(h))
                }),
                SHA256 => bool::from(row.secret_hash.as_slice().ct_eq(&legacy)),
                _ => false,
            };
            if !format_matches {
                continue;
            }
            if !self.keys.row_is_authentic(&row) {
                tracing::warn!(bot = %row.id, "a bot row does not authenticate (written without the vault key?); refused");
                continue;
            }
            self.upgrade(&row, secret).await;
            return Ok(match bot_of(row) {
                Some(bot) => Ok(bot),
                None => Err(Refused::Revoked),
            });
        }
        Ok(Err(Refused::Unknown))
    }

    /// Re-hashes a plain or older-key row under the current key. Best effort:
    /// the row stays valid as it is if this fails.
    async fn upgrade(&self, row: &BotRow, secret: &str) {
        let current = self.keys.hash.current().as_str();
        if row.hash_format == HMAC && row.key_id.as_deref() == Some(current) {
            return;
        }
        let (hash, mac) = self.keys.credential(&row.id, &row.app, secret);
        let credential = BotCredential {
            secret_hash: &hash,
            hash_format: HMAC,
            key_id: current,
            mac: &mac,
        };
        match self
            .store
            .update_bot_credential(&row.id, &row.secret_hash, credential)
            .await
        {
            Ok(_) => {
                tracing::info!(bot = %row.id, key = current, "bot secret re-hashed under the current vault key")
            }
            Err(e) => tracing::warn!(bot = %row.id, error = %e, "cannot re-hash a bot secret"),
        }
    }

    /// Tags the plain SHA-256 rows present when migration 0004 ran, so they
    /// keep working until their next use re-hashes them. Called exactly once,
    /// right after that migration.
    pub async fn adopt_rows_from_before_keyed_hashes(
        store: &Store,
        vault: &VaultKeyRing,
    ) -> Result<u64, StoreError> {
        let keys = BotKeys::new(vault);
        store
            .tag_untagged_bots(keys.row.current().as_str(), |row| {
                keys.row_tag(&row.id, &row.app, &row.hash_format, &row.secret_hash)
            })
            .await
    }
}

fn well_formed(secret: &str) -> bool {
    secret.starts_with(SECRET_PREFIX) && secret.len() <= 200
}

fn bot_of(row: BotRow) -> Option<Bot> {
    if row.revoked_at.is_some() {
        return None;
    }
    Some(Bot {
        app: AppId::parse(row.app).ok()?,
        id: row.id,
        name: row.name,
    })
}
