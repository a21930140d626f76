-- tally.current_tenant() in PL/pgSQL. Every row policy calls it once per table a statement names
-- (an init plan), and a SQL function with a SET clause is never inlined: Postgres parsed and
-- planned its query again at each of those calls, some twenty for a small batch's transaction.
-- PL/pgSQL keeps the query's plan for the session (planned again only when the role changes, as
-- a pool's login does per member), so each call only runs it. Same result, same privileges.

-- +goose Up
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tally.current_tenant() RETURNS text
LANGUAGE plpgsql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT r.tenant FROM tally.tenant_roles r WHERE r.role_name = current_user);
END
$$;
-- +goose StatementEnd

-- +goose Down
-- +goose StatementBegin
CREATE OR REPLACE FUNCTION tally.current_tenant() RETURNS text
LANGUAGE sql STABLE SECURITY INVOKER SET search_path = pg_catalog, pg_temp AS $$
    SELECT r.tenant FROM tally.tenant_roles r WHERE r.role_name = current_user
$$;
-- +goose StatementEnd
