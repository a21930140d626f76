-- The tenant of the current role, found through the role_name index. current_user is of type name,
-- whose collation is "C"; compared with role_name (text, the database's default collation), the
-- non-default implicit collation wins, so the comparison runs in "C" and role_name's index (in the
-- default collation) cannot serve it: every call read all of tally.tenant_roles, calling
-- current_user per row. Row policies call current_tenant()
-- once per table a statement names, so each statement of a tenant's transaction cost a scan of
-- every tenant's row (0.3 ms with 1,000 tenants, ten times that with 10,000). An explicit collation
-- makes it an index lookup; the result is the same, as equality does not depend on the collation.

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tally.current_tenant() RETURNS text
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT r.tenant FROM tally.tenant_roles r WHERE r.role_name = current_user::text COLLATE "default");
END
$$;
-- +goose StatementEnd
ALTER POLICY own_role ON tally.tenant_roles USING (role_name = current_user::text COLLATE "default");

-- +goose Down
ALTER POLICY own_role ON tally.tenant_roles USING (role_name = current_user);
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tally.current_tenant() RETURNS text
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT r.tenant FROM tally.tenant_roles r WHERE r.role_name = current_user);
END
$$;
-- +goose StatementEnd
