-- A silent flow whose page waits for its outcome by fetch (POST
-- /v1/session/token with "wait": true) names the SHA-256 of a ticket the page
-- picked; the callback stores the outcome (sign-in or error) as that ticket,
-- with the flow's browser-binding cookie (hashed), which the waiting fetch
-- must present, and answers the hidden frame 204: no page loads in it.
ALTER TABLE pending_flows ADD COLUMN ticket_hash TEXT;
ALTER TABLE session_tickets ADD COLUMN binding_hash TEXT;
