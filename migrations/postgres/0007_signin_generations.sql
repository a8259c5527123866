-- Signed out means signed out everywhere.
--
-- A sign-in generation: set when a vault entry is created (the user's first
-- sign-in in the app, or the first after a sign-out) and kept by later
-- sign-ins and refreshes. Browser sessions, key bindings and tickets remember
-- the generation they were made under and renew only while the entry still
-- has it, so a session or binding that outlived a sign-out — or was written
-- back by a renewal racing it — renews nothing once the user signs in again.
-- Entries from before this migration have none (and so have their sessions):
-- they match until the next sign-out.
ALTER TABLE vault_entries ADD COLUMN signin_generation TEXT;

-- Tickets name their user, so a sign-out deletes them with the rest.
ALTER TABLE session_tickets ADD COLUMN user_id TEXT;
CREATE INDEX session_tickets_user ON session_tickets (app, user_id);
