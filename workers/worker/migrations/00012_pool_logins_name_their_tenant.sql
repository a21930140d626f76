-- A pool's login names the member tenant it writes for (the setting tally.tenant) instead of
-- becoming that tenant's role (SET ROLE). Postgres plans a statement under row-level security
-- again whenever the role it runs as changes, so with a thousand members nearly every statement
-- of a pool's transaction was parsed and planned again. The login's role now stays the same, and
-- its plans are kept.
--
-- The wall is the same: the login reaches a tenant's rows only while it is a member of that
-- tenant's role (granted per member, as before; checked at every statement), and only the one it
-- names. Naming none, it reaches no row; naming a tenant it may not reach, every statement fails,
-- so a membership revoked in the middle of a transaction rolls it back instead of leaving half of
-- its writes undone. A role the login became reaches that role's tenant, if any, never a named
-- one. A tenant's own login gets its own tenant, whatever it names. To reach the tables at all,
-- a pool's login now inherits the tenants' group (it could already become any member's role,
-- which has it).
--
-- current_tenant() runs for every table of every statement, so it is kept cheap: one index lookup
-- and no SET clause (which costs a configuration save and restore per call); every name in it is
-- schema-qualified instead, types and operators included, so no search_path can redirect it. What
-- it can return is what the role may read of tally.tenant_roles, whose policies are the wall.

-- +goose Up
-- A login reads the mapping rows of the tenant roles it is a member of (a pool's login: its
-- members' tenants); to_regrole, because a role name that no longer exists must not fail a read.
CREATE POLICY pool_member_role ON tally.tenant_roles TO tally_tenant
    USING (pg_catalog.pg_has_role(session_user, pg_catalog.to_regrole(pg_catalog.quote_ident(role_name)), 'MEMBER'));

-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tally.current_tenant() RETURNS text
LANGUAGE plpgsql STABLE SECURITY INVOKER AS $$
DECLARE
    named pg_catalog.text := pg_catalog.current_setting('tally.tenant', true);
    hit pg_catalog.text;
BEGIN
    -- The login itself (not a role it became) naming a tenant whose row it may read.
    IF named OPERATOR(pg_catalog.<>) '' AND current_user OPERATOR(pg_catalog.=) session_user THEN
        SELECT r.tenant INTO hit FROM tally.tenant_roles r WHERE r.tenant OPERATOR(pg_catalog.=) named;
        IF hit IS NOT NULL THEN
            RETURN hit;
        END IF;
    END IF;
    -- Else the current role's own tenant, if it is a tenant's role.
    SELECT r.tenant INTO hit FROM tally.tenant_roles r
        WHERE r.role_name OPERATOR(pg_catalog.=) (current_user::pg_catalog.text COLLATE pg_catalog."default");
    IF hit IS NULL AND named OPERATOR(pg_catalog.<>) '' THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = pg_catalog.format('%s may not reach tenant %s', current_user, named);
    END IF;
    RETURN hit;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
DO $$
DECLARE
    l record;
BEGIN
    FOR l IN SELECT p.role_name FROM tally.pool_logins p JOIN pg_roles r ON r.rolname = p.role_name LOOP
        EXECUTE format('ALTER ROLE %I INHERIT', l.role_name);
        EXECUTE format('GRANT tally_tenant TO %I', l.role_name);
    END LOOP;
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
DO $$
DECLARE
    l record;
BEGIN
    FOR l IN SELECT p.role_name FROM tally.pool_logins p JOIN pg_roles r ON r.rolname = p.role_name LOOP
        EXECUTE format('REVOKE tally_tenant FROM %I', l.role_name);
        EXECUTE format('ALTER ROLE %I NOINHERIT', l.role_name);
    END LOOP;
END
$$;
-- +goose StatementEnd
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tally.current_tenant() RETURNS text
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT r.tenant FROM tally.tenant_roles r WHERE r.role_name = current_user::text COLLATE "default");
END
$$;
-- +goose StatementEnd
DROP POLICY pool_member_role ON tally.tenant_roles;
