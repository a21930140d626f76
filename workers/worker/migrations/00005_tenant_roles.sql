-- Per-tenant login roles with row-level security. The manager (an administrator's login, owner of
-- the schema) runs the migrations and creates one login role per tenant (TenantRoles); a tenant's
-- workers connect with it and can only read and write that tenant's rows: every table with a
-- tenant column has a policy keyed by the role itself (never by a setting a session could change),
-- and the role owns nothing, so no DDL. The owner is not subject to the policies (no FORCE), so an
-- installation that runs everything with one login (tally local, small installs) is unchanged.

-- +goose Up
-- Each tenant's role. Only the owner reads it; tenant roles learn their tenant through
-- tally.current_tenant().
CREATE TABLE tally.tenant_roles (
    tenant     text    NOT NULL PRIMARY KEY,
    role_name  text    NOT NULL UNIQUE,
    generation integer NOT NULL DEFAULT 1,     -- bumped by a rotation: the password derives from it
    rotations  text[]  NOT NULL DEFAULT '{}'  -- the rotation requests applied, each once
);

-- The tenant of the session's role; NULL for any other role, which then sees no rows.
-- +goose StatementBegin
CREATE FUNCTION tally.current_tenant() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.tenant FROM tally.tenant_roles r WHERE r.role_name = session_user
$$;
-- +goose StatementEnd
REVOKE ALL ON FUNCTION tally.current_tenant() FROM PUBLIC;

-- The group every tenant role belongs to: it holds the grants, so a new table or a new tenant
-- needs no grant of its own. Roles are cluster-wide; databases share the group.
-- +goose StatementBegin
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tally_tenant') THEN
        CREATE ROLE tally_tenant NOLOGIN;
    END IF;
EXCEPTION WHEN duplicate_object OR unique_violation THEN
    NULL; -- another database's migration created it meanwhile
END
$$;
-- +goose StatementEnd
GRANT USAGE ON SCHEMA tally TO tally_tenant;
GRANT EXECUTE ON FUNCTION tally.current_tenant() TO tally_tenant;
-- The worker checks the schema's version before it starts (it migrates only as the owner).
GRANT SELECT ON tally.goose_db_version TO tally_tenant;

-- Every table with a tenant column: rows of the session's tenant only, for reading and writing.
-- (SELECT tally.current_tenant()) is evaluated once per statement, not per row.
-- +goose StatementBegin
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.table_name FROM information_schema.columns c
        JOIN information_schema.tables tb ON tb.table_schema = c.table_schema AND tb.table_name = c.table_name
        WHERE c.table_schema = 'tally' AND c.column_name = 'tenant' AND tb.table_type = 'BASE TABLE'
          AND c.table_name <> 'tenant_roles'
        ORDER BY c.table_name
    LOOP
        EXECUTE format('ALTER TABLE tally.%I ENABLE ROW LEVEL SECURITY', t.table_name);
        EXECUTE format('CREATE POLICY tenant_rows ON tally.%I TO tally_tenant
            USING (tenant = (SELECT tally.current_tenant())) WITH CHECK (tenant = (SELECT tally.current_tenant()))', t.table_name);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON tally.%I TO tally_tenant', t.table_name);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT p.tablename FROM pg_policies p WHERE p.schemaname = 'tally' AND p.policyname = 'tenant_rows'
    LOOP
        EXECUTE format('DROP POLICY tenant_rows ON tally.%I', t.tablename);
        EXECUTE format('ALTER TABLE tally.%I DISABLE ROW LEVEL SECURITY', t.tablename);
        EXECUTE format('REVOKE ALL ON tally.%I FROM tally_tenant', t.tablename);
    END LOOP;
END
$$;
-- +goose StatementEnd
REVOKE ALL ON tally.goose_db_version FROM tally_tenant;
REVOKE ALL ON SCHEMA tally FROM tally_tenant;
DROP FUNCTION tally.current_tenant();
DROP TABLE tally.tenant_roles;
