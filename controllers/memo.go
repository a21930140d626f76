package controllers

import (
	"context"
	"strings"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
)

// A thousand sources re-checked every interval must not each take the tenant roles' table lock
// in Postgres or read their write key Secret from the API server when nothing changed: these
// memories, per process, keep what the last read found.

// tenantLoginRecheck is how long a remembered tenant login is trusted before Postgres is asked
// again (a login dropped behind the operator's back comes back within it).
const tenantLoginRecheck = 10 * time.Minute

type tenantLogin struct {
	url       string
	rotations map[string]bool
	at        time.Time
}

// tenantLogins remembers, per tenant, the URL of its login and the rotation requests applied;
// per pool, its login's URL; per pool member, the role its pool's login was granted.
type tenantLogins struct{ m, pools, grants sync.Map }

// tenantLogin is Roles.EnsureTenantRole, remembered: Postgres is asked only for a tenant not seen
// lately or a rotation request not applied yet.
func (r *SegmentSourceReconciler) tenantLogin(ctx context.Context, tenant, rotation string) (string, error) {
	var known map[string]bool
	if v, ok := r.logins.m.Load(tenant); ok {
		l := v.(tenantLogin)
		if time.Since(l.at) < tenantLoginRecheck && (rotation == "" || l.rotations[rotation]) {
			return l.url, nil
		}
		known = l.rotations
	}
	url, err := r.Roles.EnsureTenantRole(ctx, tenant, rotation)
	if err != nil {
		return "", err
	}
	rotations := map[string]bool{}
	for k := range known {
		rotations[k] = true
	}
	if rotation != "" {
		rotations[rotation] = true
	}
	r.logins.m.Store(tenant, tenantLogin{url: url, rotations: rotations, at: time.Now()})
	return url, nil
}

// forget drops one tenant's login (dropped), or every one, pools' logins included (the
// manager's credentials changed).
func (l *tenantLogins) forget(tenant string) { l.m.Delete(tenant) }
func (l *tenantLogins) forgetAll()           { l.m.Clear(); l.pools.Clear() }

// forgetPool drops what is remembered of a pool's login (the pool is gone). Its grants were
// remembered by the pool's UID, which a pool made again under the same name does not have.
func (l *tenantLogins) forgetPool(pool string) { l.pools.Delete(pool) }

// poolLogin is Roles.EnsurePoolLogin, remembered as tenantLogin is.
func (r *SegmentSourceReconciler) poolLogin(ctx context.Context, pool string) (string, error) {
	if v, ok := r.logins.pools.Load(pool); ok && time.Since(v.(tenantLogin).at) < tenantLoginRecheck {
		return v.(tenantLogin).url, nil
	}
	url, err := r.Roles.EnsurePoolLogin(ctx, pool)
	if err != nil {
		return "", err
	}
	r.logins.pools.Store(pool, tenantLogin{url: url, at: time.Now()})
	return url, nil
}

// poolGrant is what the last GrantPoolMember of a member gave.
type poolGrant struct {
	tenant, role string
	at           time.Time
}

// poolMemberRole is Roles.GrantPoolMember, remembered per pool (by UID) and member for as long as
// the member's tenant stays the same.
func (r *SegmentSourceReconciler) poolMemberRole(ctx context.Context, poolUID types.UID, pool, member, tenant string) (string, error) {
	key := string(poolUID) + "|" + member
	if v, ok := r.logins.grants.Load(key); ok {
		if g := v.(poolGrant); g.tenant == tenant && time.Since(g.at) < tenantLoginRecheck {
			return g.role, nil
		}
	}
	role, err := r.Roles.GrantPoolMember(ctx, pool, member, tenant)
	if err != nil {
		return "", err
	}
	r.logins.grants.Store(key, poolGrant{tenant: tenant, role: role, at: time.Now()})
	r.logins.grants.Delete(ownLoginKey(member))
	return role, nil
}

// revokeForOwnLogin is revokePoolMember in every pool for a member that writes with a database
// Secret of its own, asked again only every tenantLoginRecheck (and after a grant in between).
func (r *SegmentSourceReconciler) revokeForOwnLogin(ctx context.Context, member string) error {
	key := ownLoginKey(member)
	if v, ok := r.logins.grants.Load(key); ok && time.Since(v.(poolGrant).at) < tenantLoginRecheck {
		return nil
	}
	if err := r.revokePoolMember(ctx, "", member); err != nil {
		return err
	}
	r.logins.grants.Store(key, poolGrant{at: time.Now()})
	return nil
}

// ownLoginKey remembers, among the grants, a member's last revoke for its own login.
func ownLoginKey(member string) string { return "own|" + member }

// revokePoolMember is Roles.RevokePoolMember, forgetting the member's grants.
func (r *SegmentSourceReconciler) revokePoolMember(ctx context.Context, pool, member string) error {
	r.logins.grants.Range(func(k, _ any) bool {
		if strings.HasSuffix(k.(string), "|"+member) {
			r.logins.grants.Delete(k)
		}
		return true
	})
	return r.Roles.RevokePoolMember(ctx, pool, member)
}

// writeKeyRead is what the last read of a source's write key Secret found: digests and a hash,
// never the keys.
type writeKeyRead struct {
	secret, key, resourceVersion string
	hash                         string
	digests                      []string
}

// writeKeyReads remembers the last read per source UID.
type writeKeyReads struct{ m sync.Map }

func (w *writeKeyReads) load(uid types.UID) (writeKeyRead, bool) {
	v, ok := w.m.Load(uid)
	if !ok {
		return writeKeyRead{}, false
	}
	return v.(writeKeyRead), true
}

func (w *writeKeyReads) store(uid types.UID, r writeKeyRead) { w.m.Store(uid, r) }
