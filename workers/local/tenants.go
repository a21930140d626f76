package local

import (
	"context"
	"errors"
	"log/slog"
	"sync"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
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
	// logins remembers the pool members' logins (pool, member and tenant), so the pool workers'
	// periodic look at their members' credentials costs no round trip.
	logins map[[3]string]worker.DatabaseLogin
}

func newTenantPools(admin *pgxpool.Pool, adminURL string, log *slog.Logger) *tenantPools {
	return &tenantPools{admin: admin, adminURL: adminURL, roles: worker.NewTenantRoles(admin, adminURL), log: log, pools: map[string]*pgxpool.Pool{},
		logins: map[[3]string]worker.DatabaseLogin{}}
}

// Pool is the tenant's pool, made on first use.
func (t *tenantPools) Pool(ctx context.Context, tenant string) (*pgxpool.Pool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if p, ok := t.pools[tenant]; ok {
		return p, nil
	}
	url, err := t.roles.Ensure(ctx, tenant, "")
	if mayNotCreateRoles(err) {
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

// PoolLogins give pool members their Postgres login.
type PoolLogins interface {
	// KeepMembers takes back the pool login's grants of members no longer listed.
	KeepMembers(ctx context.Context, p pool.Ref, members []*source.Config) error
	// MemberLogin is the pool's login, granted the member tenant's role (see worker.EnsurePoolLogin).
	MemberLogin(ctx context.Context, p pool.Ref, member *source.Config) (worker.DatabaseLogin, error)
}

// KeepMembers revokes what the pool's login was granted for sources no longer its members (a
// manifest that left the pool since the last run).
func (t *tenantPools) KeepMembers(ctx context.Context, p pool.Ref, members []*source.Config) error {
	granted, err := t.roles.PoolMembers(ctx, p.String())
	if err != nil {
		if mayNotCreateRoles(err) {
			return nil
		}
		return err
	}
	listed := map[string]bool{}
	for _, m := range members {
		listed[memberName(m)] = true
	}
	for _, m := range granted {
		if !listed[m] {
			if err := t.roles.RevokePoolMember(ctx, p.String(), m); err != nil {
				return err
			}
		}
	}
	return nil
}

// MemberLogin is the pool's login, granted the member tenant's role, made on first use; the shared
// login when this one may not create roles.
func (t *tenantPools) MemberLogin(ctx context.Context, p pool.Ref, member *source.Config) (worker.DatabaseLogin, error) {
	key := [3]string{p.String(), memberName(member), member.Tenant}
	t.mu.Lock()
	defer t.mu.Unlock()
	if login, ok := t.logins[key]; ok {
		return login, nil
	}
	login, err := t.memberLogin(ctx, p, member)
	if mayNotCreateRoles(err) {
		login, err = worker.DatabaseLogin{URL: t.adminURL}, nil
	}
	if err == nil {
		t.logins[key] = login
	}
	return login, err
}

func (t *tenantPools) memberLogin(ctx context.Context, p pool.Ref, member *source.Config) (worker.DatabaseLogin, error) {
	if _, err := t.roles.Ensure(ctx, member.Tenant, ""); err != nil {
		return worker.DatabaseLogin{}, err
	}
	url, err := t.roles.EnsurePoolLogin(ctx, p.String())
	if err != nil {
		return worker.DatabaseLogin{}, err
	}
	role, err := t.roles.GrantPoolMember(ctx, p.String(), memberName(member), member.Tenant)
	return worker.DatabaseLogin{URL: url, Role: role}, err
}

// memberName names a source in tally.pool_members.
func memberName(src *source.Config) string { return src.Namespace + "/" + src.Name }

func mayNotCreateRoles(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == pgerrcode.InsufficientPrivilege
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
