package manager

import (
	"context"
	"errors"

	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/workers/worker"
)

// EnsureTenantRole gives the tenant its own Postgres login (controllers.TenantDatabaseRoles),
// through the worker package, which owns the schema, its policies and their SQL.
func (t *tenantRows) EnsureTenantRole(ctx context.Context, tenant, rotation string) (string, error) {
	roles, err := t.currentRoles(ctx)
	if err != nil {
		return "", err
	}
	return roles.Ensure(ctx, tenant, rotation)
}

// DropTenantRole removes the tenant's login; its rows stay.
func (t *tenantRows) DropTenantRole(ctx context.Context, tenant string) error {
	roles, err := t.currentRoles(ctx)
	if err != nil {
		return err
	}
	return roles.Drop(ctx, tenant)
}

func (t *tenantRows) currentRoles(ctx context.Context) (*worker.TenantRoles, error) {
	pool, err := t.currentPool(ctx)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return worker.NewTenantRoles(pool, t.url), nil
}

// EnsurePoolLogin gives a pool's workers their Postgres login (controllers.TenantDatabaseRoles).
func (t *tenantRows) EnsurePoolLogin(ctx context.Context, pool string) (string, error) {
	roles, err := t.currentRoles(ctx)
	if err != nil {
		return "", err
	}
	return roles.EnsurePoolLogin(ctx, pool)
}

// GrantPoolMember lets the pool's login write for the member's tenant (a member of its role).
func (t *tenantRows) GrantPoolMember(ctx context.Context, pool, member, tenant string) (string, error) {
	roles, err := t.currentRoles(ctx)
	if err != nil {
		return "", err
	}
	role, err := roles.GrantPoolMember(ctx, pool, member, tenant)
	if errors.Is(err, worker.ErrNoPoolLogin) {
		return "", controllers.ErrNoPoolLogin
	}
	return role, err
}

// RevokePoolMember takes the member's grant back.
func (t *tenantRows) RevokePoolMember(ctx context.Context, pool, member string) error {
	roles, err := t.currentRoles(ctx)
	if err != nil {
		return err
	}
	return roles.RevokePoolMember(ctx, pool, member)
}

// DropPoolLogin removes the pool's login.
func (t *tenantRows) DropPoolLogin(ctx context.Context, pool string) error {
	roles, err := t.currentRoles(ctx)
	if err != nil {
		return err
	}
	return roles.DropPoolLogin(ctx, pool)
}
