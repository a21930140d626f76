-- Tenant role passwords derive from the administrator's credentials only (not the whole URL, so a
-- changed host or option keeps them), a generation and a salt drawn when the role is created (so
-- a tenant's role dropped and created again never gets an earlier password back). The
-- fingerprint of the credentials they were derived with tells the manager when to set them again.

-- +goose Up
ALTER TABLE tally.tenant_roles
    ADD COLUMN salt            text NOT NULL DEFAULT '',
    ADD COLUMN key_fingerprint text NOT NULL DEFAULT '';

-- +goose Down
ALTER TABLE tally.tenant_roles DROP COLUMN salt, DROP COLUMN key_fingerprint;
