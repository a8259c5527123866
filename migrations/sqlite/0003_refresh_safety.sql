-- Refresh safety (see src/user_tokens/): writes of a refresh are fenced by the
-- lease they were made under, and an ID token from a refresh that could not be
-- verified yet (JWKS unreachable) waits here, sealed, to be verified again.

-- The fencing value of the lease: a random id per lease. A refresher's write
-- only lands while the row still carries its lease id. The lease is live while
-- refresh_lease_until is set; a stored refresh keeps its id (so a retried
-- write is idempotent) and clears refresh_lease_until.
ALTER TABLE vault_entries ADD COLUMN refresh_lease_id TEXT;
-- sealed, bound to (app, user_id, 'pending_id_token')
ALTER TABLE vault_entries ADD COLUMN pending_id_token BLOB;
-- when the pending ID token was received (it is verified as of that time)
ALTER TABLE vault_entries ADD COLUMN pending_id_token_at INTEGER;
