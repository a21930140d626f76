package worker

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tallyhq/tally/workers/insights"
)

// A pool login's connections serve every member (see EnsurePoolLogin): each acquire from such a
// pool names the member tenant its context carries (withPoolTenant) in the setting tally.tenant
// (insights.TenantSetting), which the row policies honour only while the login is a member of
// that tenant's role (migration 00012): a statement naming a tenant the login may not reach
// fails. A member's worker puts its tenant on every context it reaches Postgres with; an acquire
// without one fails, instead of reading nothing and writing nothing. The login never changes
// role: Postgres plans a statement under row-level security again whenever the role changes, and
// keeps the plans while it stays.

type poolTenantKey struct{}

// withPoolTenant makes the database calls under ctx, on a pool login's connections, write for
// tenant.
func withPoolTenant(ctx context.Context, tenant string) context.Context {
	return context.WithValue(ctx, poolTenantKey{}, tenant)
}

// errNoPoolTenant: a call on a pool login's connections whose context names no member tenant.
var errNoPoolTenant = errors.New("no member tenant named for the pool's login (a call without withPoolTenant)")

// nameTenant is a pgxpool PrepareConn hook: it names the context's tenant on every acquire and
// checks that the login may reach it, so a membership revoked since (a member that left) fails the
// acquire. A refusal keeps the connection, which is sound and shared by the other members; only
// one in doubt (a broken round trip) is closed.
func nameTenant(ctx context.Context, conn *pgx.Conn) (bool, error) {
	tenant, _ := ctx.Value(poolTenantKey{}).(string)
	if tenant == "" {
		return true, errNoPoolTenant
	}
	b := &pgx.Batch{}
	b.Queue(`SELECT set_config($1, $2, false)`, insights.TenantSetting, tenant)
	var reached *string
	b.Queue(`SELECT tally.current_tenant()`).QueryRow(func(row pgx.Row) error { return row.Scan(&reached) })
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		var refused *pgconn.PgError
		return errors.As(err, &refused), fmt.Errorf("naming the member's tenant %q: %w", tenant, err)
	}
	if reached == nil || *reached != tenant {
		return true, fmt.Errorf("the pool's login may not reach tenant %q (has its member left the pool?)", tenant)
	}
	return true, nil
}

// DatabaseLogin is how a member's rows are written: with URL's login; when Role is set, URL is a
// pool's login, granted Role (the member tenant's role), and names the tenant it writes for.
type DatabaseLogin struct{ URL, Role string }

// connConfig is the login's connection settings; a pool's login names tenant from the start.
func (l DatabaseLogin) connConfig(tenant string) (*pgx.ConnConfig, error) {
	cfg, err := pgx.ParseConfig(l.URL)
	if err != nil {
		return nil, errors.New("the database URL does not parse") // never the URL: it holds a password
	}
	if l.Role != "" && tenant != "" {
		cfg.RuntimeParams[insights.TenantSetting] = tenant
	}
	return cfg, nil
}
