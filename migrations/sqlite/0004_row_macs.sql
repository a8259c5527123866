-- Rows an attacker who can write to the database (but holds no vault key) must
-- not be able to forge: bot credentials and published signing keys carry an
-- HMAC made with a key derived from the vault keys (src/vault/mac.rs).

-- 'hmac': secret_hash is HMAC(derived key, secret). 'sha256': a plain SHA-256
-- from before this migration, accepted only with a valid mac (rows present when
-- this migration ran are tagged by chatgate right after it) and upgraded to
-- 'hmac' on their next use.
ALTER TABLE bots ADD COLUMN hash_format TEXT NOT NULL DEFAULT 'sha256';
-- the vault key whose derived keys made secret_hash and mac
ALTER TABLE bots ADD COLUMN key_id TEXT;
-- HMAC over (id, app, hash_format, secret_hash)
ALTER TABLE bots ADD COLUMN mac BLOB;

ALTER TABLE signing_keys ADD COLUMN key_id TEXT;
-- HMAC over (kid, alg, public_jwk); a row without a valid one is not published
ALTER TABLE signing_keys ADD COLUMN mac BLOB;
