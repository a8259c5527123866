//! Bot credentials: high-entropy secrets shown once, stored as a SHA-256 hash.
//!
//! A secret is `cgb_` + 256 random bits (base64url), so a leaked one is easy to
//! spot for secret scanners. With that much entropy a fast hash is enough: there
//! is nothing to brute-force, and authenticating a request costs one SHA-256 and
//! one indexed lookup, never a password-hash computation.

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::cache::TtlCache;
use crate::domain::AppId;
use crate::secret::{SecretString, random_token};
use crate::store::{AuditEvent, BotRow, Store, StoreError};

pub const SECRET_PREFIX: &str = "cgb_";

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

pub fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Creates a bot for `app` and returns its one-time secret.
pub async fn create(
    store: &Store,
    app: &AppId,
    name: &str,
    now: i64,
) -> Result<NewBot, StoreError> {
    let id = format!("bot_{}", random_token::<9>());
    let secret = SecretString::new(format!("{SECRET_PREFIX}{}", random_token::<32>()));
    store
        .insert_bot(
            &id,
            app.as_str(),
            name,
            &hash_secret(secret.expose_secret()),
            now,
        )
        .await?;
    store
        .record_audit(
            AuditEvent {
                actor: "cli",
                app: Some(app.as_str()),
                user_id: None,
                action: "bot.create",
                outcome: "ok",
                detail: Some(&id),
            },
            now,
        )
        .await?;
    Ok(NewBot { id, secret })
}

/// Revokes a bot; `false` when there is no such active bot.
pub async fn revoke(store: &Store, id: &str, now: i64) -> Result<bool, StoreError> {
    let done = store.revoke_bot(id, now).await?;
    store
        .record_audit(
            AuditEvent {
                actor: "cli",
                app: None,
                user_id: None,
                action: "bot.revoke",
                outcome: if done { "ok" } else { "absent" },
                detail: Some(id),
            },
            now,
        )
        .await?;
    Ok(done)
}

/// Authenticates bot secrets, remembering recent answers for the read-cache
/// TTL: a revocation reaches every replica within that time. Unknown secrets
/// are not remembered (a flood of random ones cannot fill the cache).
#[derive(Debug)]
pub struct BotDirectory {
    store: Store,
    cache: TtlCache<[u8; 32], Result<Bot, Refused>>,
}

impl BotDirectory {
    pub fn new(store: Store, ttl: std::time::Duration) -> Self {
        Self {
            store,
            cache: TtlCache::new(ttl),
        }
    }

    pub async fn authenticate(&self, secret: &str) -> Result<Result<Bot, Refused>, StoreError> {
        if !well_formed(secret) {
            return Ok(Err(Refused::Unknown));
        }
        let hash = hash_secret(secret);
        if let Some(known) = self.cache.get(&hash) {
            return Ok(known);
        }
        let answer = lookup(&self.store, &hash).await?;
        if answer != Err(Refused::Unknown) {
            self.cache.insert(hash, answer.clone());
        }
        Ok(answer)
    }
}

fn well_formed(secret: &str) -> bool {
    secret.starts_with(SECRET_PREFIX) && secret.len() <= 200
}

/// Why a bearer secret was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Unknown,
    Revoked,
}

/// The bot a bearer secret belongs to (no cache).
pub async fn authenticate(store: &Store, secret: &str) -> Result<Result<Bot, Refused>, StoreError> {
    if !well_formed(secret) {
        return Ok(Err(Refused::Unknown));
    }
    lookup(store, &hash_secret(secret)).await
}

async fn lookup(store: &Store, hash: &[u8; 32]) -> Result<Result<Bot, Refused>, StoreError> {
    let Some(row) = store.find_bot_by_secret_hash(hash).await? else {
        return Ok(Err(Refused::Unknown));
    };
    // The row was found by its hash; compare again in constant time so no code
    // path depends on how the database compared.
    if !bool::from(row.secret_hash.as_slice().ct_eq(hash)) {
        return Ok(Err(Refused::Unknown));
    }
    Ok(match bot_of(row) {
        Some(bot) => Ok(bot),
        None => Err(Refused::Revoked),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_hash_to_32_bytes_and_differ() {
        let a = hash_secret("cgb_a");
        let b = hash_secret("cgb_b");
        assert_ne!(a, b);
        assert_eq!(a, hash_secret("cgb_a"));
    }
}
