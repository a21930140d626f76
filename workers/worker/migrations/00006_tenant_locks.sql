-- A tenant's transactions serialise on a row lock of their own instead of an advisory lock: any
-- login may take any advisory lock key, so a tenant's login could hold another tenant's key and
-- stall its workers. Row-level security lets a tenant's login lock only its own row.

-- +goose Up
CREATE TABLE tally.tenant_locks (
    tenant text NOT NULL PRIMARY KEY
);
ALTER TABLE tally.tenant_locks ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON tally.tenant_locks TO tally_tenant
    USING (tenant = (SELECT tally.current_tenant())) WITH CHECK (tenant = (SELECT tally.current_tenant()));
-- SELECT ... FOR UPDATE needs UPDATE.
GRANT SELECT, INSERT, UPDATE ON tally.tenant_locks TO tally_tenant;

-- +goose Down
DROP TABLE tally.tenant_locks;
