-- Identical bot reads (same time to the second, bot, app, user, action and
-- outcome) that the batched audit writer takes in one batch are written as
-- one row with their number. Rows written one by one count 1.
ALTER TABLE audit_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
