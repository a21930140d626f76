package worker

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/tallyhq/tally/workers/insights"
)

// A pool login's connections serve every member (see EnsurePoolLogin): each acquire from such a
// pool names the member tenant its context carries (withPoolTenant) in the setting tally.tenant
// (insights.TenantSetting), which the row policies honour only while the login is a member of
// that tenant's role (migration 00012), or names none, which reaches no row. A member's worker
// puts its tenant on every context it reaches Postgres with, so a call that forgot it fails
// instead of writing as another member. The login never changes role: Postgres plans a statement
// under row-level security again whenever the role changes, and keeps the plans while it stays.

type poolTenantKey struct{}

// withPoolTenant makes the database calls under ctx, on a pool login's connections, write for
// tenant.
func withPoolTenant(ctx context.Context, tenant string) context.Context {
	return context.WithValue(ctx, poolTenantKey{}, tenant)
}

// nameTenant is a pgxpool PrepareConn hook: it names the context's tenant on every acquire and
// checks that the login may write for it, so a membership revoked since (a member that left)
// fails the acquire instead of writing nothing.
func nameTenant(ctx context.Context, conn *pgx.Conn) (bool, error) {
	tenant, _ := ctx.Value(poolTenantKey{}).(string)
	b := &pgx.Batch{}
	b.Queue(`SELECT set_config($1, $2, false)`, insights.TenantSetting, tenant)
	var reached *string
	b.Queue(`SELECT tally.current_tenant()`).QueryRow(func(row pgx.Row) error { return row.Scan(&reached) })
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return false, fmt.Errorf("naming the member's tenant: %w", err) // a connection in doubt is closed
	}
	if tenant != "" && (reached == nil || *reached != tenant) {
		return false, fmt.Errorf("the pool's login may not write for tenant %q (has its member left the pool?)", tenant)
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
