-- chatgate's own browser sessions (tower-sessions records) and the one-time
-- tickets that carry a popup sign-in into the embedding page's cookie partition.

-- Keyed by a SHA-256 of the session id, so the table alone cannot be replayed as
-- cookies. `data` is the tower-sessions record as JSON (no tokens in it).
CREATE TABLE browser_sessions (
    id_hash     TEXT    NOT NULL PRIMARY KEY,
    data        BYTEA   NOT NULL,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX browser_sessions_expires_at ON browser_sessions (expires_at);

-- Issued to the exact origin after a popup sign-in; redeemed once, within a minute.
CREATE TABLE session_tickets (
    ticket_hash TEXT    NOT NULL PRIMARY KEY,
    app         TEXT    NOT NULL,
    origin      TEXT    NOT NULL,
    signin      BYTEA   NOT NULL,   -- JSON of the session sign-in (user id, profile, auth_time)
    expires_at  BIGINT NOT NULL
);
CREATE INDEX session_tickets_expires_at ON session_tickets (expires_at);
