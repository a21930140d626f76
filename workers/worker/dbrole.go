package worker

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// A pool login's connections serve every member (see EnsurePoolLogin): each acquire from such a
// pool becomes the role its context names (withDatabaseRole), or the login itself, which reaches
// no row, when the context names none. A member's worker puts its tenant's role on every context
// it reaches Postgres with (Options.DatabaseRole), so a call that forgot it fails instead of
// writing as another member.

type databaseRoleKey struct{}

// withDatabaseRole makes the database calls under ctx run as role; "" leaves ctx as it is.
func withDatabaseRole(ctx context.Context, role string) context.Context {
	if role == "" {
		return ctx
	}
	return context.WithValue(ctx, databaseRoleKey{}, role)
}

// setRole is a pgxpool PrepareConn hook: it sets the connection's role on every acquire, even
// to the one it has, so a membership revoked since (a member that left) is checked again.
func setRole(ctx context.Context, conn *pgx.Conn) (bool, error) {
	role, _ := ctx.Value(databaseRoleKey{}).(string)
	if role == "" {
		role = "none" // SET ROLE NONE: back to the login
	}
	if _, err := conn.Exec(ctx, `SELECT set_config('role', $1, false)`, role); err != nil {
		return false, fmt.Errorf("becoming the member's database role: %w", err) // a connection in doubt is closed
	}
	return true, nil
}

// DatabaseLogin is how a member's rows are written: with URL's login, as Role when one is set
// (a pool's login acting for a member tenant).
type DatabaseLogin struct{ URL, Role string }

// connConfig is the login's connection settings; a connection of a login with a role starts as
// that role (the server checks the membership at connect).
func (l DatabaseLogin) connConfig() (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(l.URL)
	if err != nil {
		return nil, errors.New("the database URL does not parse") // never the URL: it holds a password
	}
	if l.Role != "" {
		cfg.RuntimeParams["role"] = l.Role
	}
	return cfg, nil
}
