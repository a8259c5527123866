-- Chat tokens bound to the browser's DPoP key (apps with
-- bind_chat_tokens = "dpop"): the key a flow was started with, and the keys
-- that may renew a sign-in without chatgate's cookie.

-- The JWK thumbprint the widget passed to /v1/authorize (dpop_jkt).
ALTER TABLE pending_flows ADD COLUMN dpop_jkt TEXT;

-- A browser key bound to a sign-in. A flow or a renewal in the iframe writes
-- a pending row (pending_jti = the jti of the chat token it minted, posted
-- only to the app's origin); the widget confirms it by presenting that token
-- with a DPoP proof of the key, which turns it into the key's one confirmed
-- row (pending_jti = ''). Only confirmed rows renew; they slide with use
-- (idle_expires_at) and end session_max after the sign-in.
CREATE TABLE dpop_bindings (
    app             TEXT    NOT NULL,
    jkt             TEXT    NOT NULL,
    pending_jti     TEXT    NOT NULL,             -- '' once confirmed
    origin          TEXT    NOT NULL,
    user_id         TEXT    NOT NULL,
    provider        TEXT    NOT NULL,
    idp_sub         TEXT,
    idp_sid         TEXT,
    signin          TEXT    NOT NULL,             -- what the session remembers (JSON, no token)
    signed_in_at    BIGINT NOT NULL,
    idle_expires_at BIGINT NOT NULL,
    PRIMARY KEY (app, jkt, pending_jti)
);
CREATE INDEX dpop_bindings_user ON dpop_bindings (app, user_id);
CREATE INDEX dpop_bindings_sub ON dpop_bindings (provider, idp_sub);
CREATE INDEX dpop_bindings_sid ON dpop_bindings (provider, idp_sid);
CREATE INDEX dpop_bindings_idle ON dpop_bindings (idle_expires_at);

-- The audit sweep deletes the oldest events in batches: along this index it
-- reads only what it deletes, however long the log.
CREATE INDEX audit_events_at ON audit_events (at);
