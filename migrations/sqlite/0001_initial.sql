-- chatgate schema, SQLite flavour. Keep in step with migrations/postgres/.
-- Times are Unix seconds (INTEGER). Secret columns are AES-256-GCM sealed blobs
-- (see src/vault/keyring.rs); everything else is plain.

-- The token vault: one row per user per app.
CREATE TABLE vault_entries (
    app               TEXT    NOT NULL,
    user_id           TEXT    NOT NULL,
    provider          TEXT    NOT NULL,
    access_token      BLOB    NOT NULL,          -- sealed, bound to (app, user_id, 'access_token')
    refresh_token     BLOB,                      -- sealed, bound to (app, user_id, 'refresh_token')
    token_type        TEXT    NOT NULL,
    scope             TEXT    NOT NULL,
    access_expires_at INTEGER,                   -- NULL when the IdP did not say
    needs_reauth      INTEGER NOT NULL DEFAULT 0, -- the IdP refused the refresh token
    refresh_lease_owner TEXT,                    -- replica refreshing this entry right now
    refresh_lease_until INTEGER,                 -- lease expiry, so a crashed replica cannot block
    row_version       INTEGER NOT NULL DEFAULT 1, -- bumped on every write (optimistic checks)
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    PRIMARY KEY (app, user_id)
) STRICT;

-- Authorization-code flows in progress; a row is deleted when its state is used.
CREATE TABLE pending_flows (
    state_hash      TEXT    NOT NULL PRIMARY KEY, -- SHA-256 of the state parameter
    binding_hash    TEXT    NOT NULL,             -- SHA-256 of the browser-binding cookie
    app             TEXT    NOT NULL,
    provider        TEXT    NOT NULL,
    origin          TEXT    NOT NULL,
    mode            TEXT    NOT NULL,             -- 'silent' | 'popup'
    nonce           BLOB    NOT NULL,             -- sealed
    pkce_verifier   BLOB    NOT NULL,             -- sealed
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL
) STRICT;
CREATE INDEX pending_flows_expires_at ON pending_flows (expires_at);

-- Bot credentials: only a SHA-256 of the high-entropy secret is kept.
CREATE TABLE bots (
    id           TEXT    NOT NULL PRIMARY KEY,
    app          TEXT    NOT NULL,
    name         TEXT    NOT NULL,
    secret_hash  BLOB    NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    revoked_at   INTEGER
) STRICT;

-- Host-signed tokens already used (jti is single-use), kept until they expire.
CREATE TABLE host_token_jtis (
    app         TEXT    NOT NULL,
    jti         TEXT    NOT NULL,
    expires_at  INTEGER NOT NULL,
    PRIMARY KEY (app, jti)
) STRICT;
CREATE INDEX host_token_jtis_expires_at ON host_token_jtis (expires_at);

-- Who did what to which user's tokens. Never holds a token.
CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,               -- 'bot:<id>', 'user', 'cli', 'system'
    app         TEXT,
    user_id     TEXT,
    action      TEXT    NOT NULL,
    outcome     TEXT    NOT NULL,
    detail      TEXT
) STRICT;
CREATE INDEX audit_events_user ON audit_events (user_id, id);
CREATE INDEX audit_events_actor ON audit_events (actor, id);

-- Public halves of chat-token signing keys, so every replica publishes every key
-- whose tokens may still be valid.
CREATE TABLE signing_keys (
    kid           TEXT    NOT NULL PRIMARY KEY,
    alg           TEXT    NOT NULL,
    public_jwk    TEXT    NOT NULL,
    first_used_at INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL
) STRICT;
