-- Sign-out that reaches everyone: OpenID Connect back-channel logout, IdP
-- sign-out started by the widget, and signed events for bots.

-- The IdP's `sub` and session (`sid`) of the ID token a vault entry came from,
-- so a back-channel logout by sub or sid finds it (the user id may come from
-- another claim, such as Entra's oid); and the last ID token (sealed, bound to
-- (app, user_id, 'id_token')), the id_token_hint of an IdP sign-out.
ALTER TABLE vault_entries ADD COLUMN idp_sub TEXT;
ALTER TABLE vault_entries ADD COLUMN idp_sid TEXT;
ALTER TABLE vault_entries ADD COLUMN id_token BYTEA;
-- Since when refreshes have failed transiently (IdP unreachable), and whether
-- token.refresh_failing was sent for this stretch.
ALTER TABLE vault_entries ADD COLUMN refresh_failing_since BIGINT;
ALTER TABLE vault_entries ADD COLUMN refresh_failing_notified BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX vault_entries_idp_sid ON vault_entries (provider, idp_sid);
CREATE INDEX vault_entries_idp_sub ON vault_entries (provider, idp_sub);

-- Who each browser session is signed in as (written with the session record),
-- so a back-channel logout of a user or an IdP session ends their sessions.
CREATE TABLE browser_session_users (
    id_hash   TEXT NOT NULL REFERENCES browser_sessions (id_hash) ON DELETE CASCADE,
    app       TEXT NOT NULL,
    user_id   TEXT NOT NULL,
    provider  TEXT NOT NULL,
    idp_sub   TEXT,
    idp_sid   TEXT,
    PRIMARY KEY (id_hash, app, user_id)
);
CREATE INDEX browser_session_users_sub ON browser_session_users (provider, idp_sub);
CREATE INDEX browser_session_users_user ON browser_session_users (user_id, app);
CREATE INDEX browser_session_users_sid ON browser_session_users (provider, idp_sid);

-- IdP sign-outs started by the widget (RP-initiated logout): the one-time
-- ticket of the popup, then the state the IdP sends back to /v1/signed-out.
CREATE TABLE idp_signouts (
    ticket_hash TEXT NOT NULL PRIMARY KEY,
    state_hash  TEXT UNIQUE,          -- set when the ticket is used
    ticket_used BOOLEAN NOT NULL DEFAULT FALSE,
    app         TEXT NOT NULL,
    origin      TEXT NOT NULL,
    provider    TEXT NOT NULL,
    id_token    BYTEA,                 -- sealed, the id_token_hint
    expires_at  BIGINT NOT NULL
);
CREATE INDEX idp_signouts_expires_at ON idp_signouts (expires_at);

-- Events for bots (Standard Webhooks), written in the same transaction as the
-- change they report and delivered at least once by one replica at a time.
CREATE TABLE event_outbox (
    id              TEXT    NOT NULL PRIMARY KEY, -- webhook-id: evt_...
    app             TEXT    NOT NULL,
    type            TEXT    NOT NULL,             -- user.signed_in, ...
    user_id         TEXT    NOT NULL,
    payload         TEXT    NOT NULL,             -- the JSON body, never a token
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    locked_by       TEXT,                         -- replica delivering it now
    locked_until    BIGINT,
    delivered_at    BIGINT,
    dead_at         BIGINT,                      -- gave up after 24 h
    last_error      TEXT
);
CREATE INDEX event_outbox_due ON event_outbox (delivered_at, dead_at, next_attempt_at);
CREATE INDEX event_outbox_dead ON event_outbox (dead_at);
