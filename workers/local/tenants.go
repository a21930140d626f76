package local

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/workers/worker"
)

// tenantPools gives each tenant's workers a pool on the tenant's own Postgres login, as the
// operator does in a cluster, so the walls between tenants hold locally too. A login that may not
// create roles (not the README's local superuser) falls back to its own pool, with a warning.
type tenantPools struct {
	admin    *pgxpool.Pool
	adminURL string
	roles    *worker.TenantRoles
	log      *slog.Logger

	mu    sync.Mutex
	pools map[string]*pgxpool.Pool
}

func newTenantPools(admin *pgxpool.Pool, adminURL string, log *slog.Logger) *tenantPools {
	return &tenantPools{admin: admin, adminURL: adminURL, roles: worker.NewTenantRoles(admin, adminURL), log: log, pools: map[string]*pgxpool.Pool{}}
}

// Pool is the tenant's pool, made on first use.
func (t *tenantPools) Pool(ctx context.Context, tenant string) (*pgxpool.Pool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.pools[tenant]; ok {
		return p, nil
	}
	url, err := t.roles.Ensure(ctx, tenant, "")
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.InsufficientPrivilege {
		t.log.Warn("this database login may not create roles: every tenant's workers share it", "tenant", tenant)
		t.pools[tenant] = t.admin
		return t.admin, nil
	}
	if err != nil {
		return nil, err
	}
	p, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, err
	}
	t.pools[tenant] = p
	return p, nil
}

// URL is the tenant's own login, made on first use; the shared login when this one may not create
// roles.
func (t *tenantPools) URL(ctx context.Context, tenant string) (string, error) {
	url, err := t.roles.Ensure(ctx, tenant, "")
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.InsufficientPrivilege {
		return t.adminURL, nil
	}
	return url, err
}

// Close closes the tenants' own pools (not the shared one).
func (t *tenantPools) Close() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.pools {
		if p != t.admin {
			p.Close()
		}
	}
}
