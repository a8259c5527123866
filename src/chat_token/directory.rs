//! The keys every replica publishes, kept in the database with a MAC so a row
//! planted without the vault key is never trusted.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;

use super::{ChatClaims, ChatTokenError, ChatTokenIssuer, SigningKey, VerificationKeys};
use crate::domain::AppId;
use crate::store::{Store, StoreError};
use crate::vault::VaultKeyRing;
use crate::vault::mac::MacKeys;

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

    /// A chat token of app `app`: signed by a key of this issuer, for the
    /// app's `audience`, with the app's `app` claim; when the app binds its
    /// tokens to browser keys (`bound`), one that carries `cnf` (checking the
    /// proof of that key is the caller's part).
    pub fn verify_for_app(
        &self,
        token: &str,
        app: &AppId,
        audience: &str,
        bound: bool,
        clock_skew: Duration,
    ) -> Result<ChatClaims, ChatTokenError> {
        let claims = self
            .keys()
            .verify(token, self.issuer.issuer(), &[audience], clock_skew)?;
        if claims.app != app.as_str() {
            return Err(ChatTokenError::OtherApp);
        }
        if bound && claims.cnf.is_none() {
            return Err(ChatTokenError::Unbound);
        }
        Ok(claims)
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
