-- Pool logins. A pool's worker applies the messages of many tenants. With one login per tenant it
-- needs a connection per tenant it writes for, and a thousand members trickling events had it
-- open and close connections faster than Postgres starts backends (about 230 a second on a
-- 2-core machine, pgbench -C). A pool's workers now log in once, as the pool's login, and become
-- a member tenant's role for each transaction (SET ROLE): the pool's login is a member, without
-- inheriting, of exactly its member tenants' roles (tally.pool_members), so it can become any of
-- them and nothing else, and on its own it reaches no row.
--
-- The policies therefore key on the current role, not the session's login. A tenant's own login
-- can become only tally_tenant, which maps to no tenant and sees no rows.

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tally.current_tenant() RETURNS text
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.tenant FROM tally.tenant_roles r WHERE r.role_name = current_user
$$;
-- +goose StatementEnd
-- A tenant's role reads its own mapping row, and nothing else of the table.
ALTER TABLE tally.tenant_roles ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_role ON tally.tenant_roles TO tally_tenant USING (role_name = current_user);
GRANT SELECT (tenant, role_name) ON tally.tenant_roles TO tally_tenant;

-- Each pool's login; only the owner reads it. Passwords derive as the tenant roles' do.
CREATE TABLE tally.pool_logins (
    pool            text NOT NULL PRIMARY KEY, -- <namespace>/<name> of the SegmentSourcePool
    role_name       text NOT NULL UNIQUE,
    salt            text NOT NULL,
    key_fingerprint text NOT NULL
);

-- The members a pool's login may act for, and their tenants: a tenant's role is granted to the
-- pool's login while at least one of its members has that tenant.
CREATE TABLE tally.pool_members (
    pool   text NOT NULL REFERENCES tally.pool_logins ON DELETE CASCADE,
    member text NOT NULL, -- <namespace>/<name> of the SegmentSource
    tenant text NOT NULL,
    PRIMARY KEY (pool, member)
);
ALTER TABLE tally.pool_members ENABLE ROW LEVEL SECURITY; -- no policy, no grant: the owner's only

-- +goose Down
-- The pools' logins go with their table (the pool's workers then use each member's own login).
-- +goose StatementBegin
DO $$
DECLARE
    l record;
BEGIN
    FOR l IN SELECT role_name FROM tally.pool_logins LOOP
        EXECUTE format('DROP ROLE IF EXISTS %I', l.role_name);
    END LOOP;
END
$$;
-- +goose StatementEnd
DROP TABLE tally.pool_members;
DROP TABLE tally.pool_logins;
REVOKE ALL ON tally.tenant_roles FROM tally_tenant;
DROP POLICY own_role ON tally.tenant_roles;
ALTER TABLE tally.tenant_roles DISABLE ROW LEVEL SECURITY;
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tally.current_tenant() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.tenant FROM tally.tenant_roles r WHERE r.role_name = session_user
$$;
-- +goose StatementEnd
