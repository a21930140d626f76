-- A tenant's transactions lock what they touch instead of the whole tenant, so several workers
-- apply one tenant's messages at once: the slots of the users they write (s00..s63, a hash of the
-- userId or anonymousId, see package stream) and, at their end, the accounts they write (a:<id>).
-- The tenant's row of 00006 becomes the row with the empty key. A worker of the previous version
-- locks every row of its tenant (WHERE tenant = ...), so it still excludes the new ones during a
-- rolling upgrade.

-- +goose Up
ALTER TABLE tally.tenant_locks ADD COLUMN lock_key text NOT NULL DEFAULT '';
ALTER TABLE tally.tenant_locks DROP CONSTRAINT tenant_locks_pkey;
ALTER TABLE tally.tenant_locks ADD PRIMARY KEY (tenant, lock_key);

-- +goose Down
DELETE FROM tally.tenant_locks WHERE lock_key <> '';
ALTER TABLE tally.tenant_locks DROP CONSTRAINT tenant_locks_pkey;
ALTER TABLE tally.tenant_locks DROP COLUMN lock_key;
ALTER TABLE tally.tenant_locks ADD PRIMARY KEY (tenant);
