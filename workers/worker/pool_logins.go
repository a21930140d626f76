package worker

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Pool logins (migrations 00009 and 00012). A pool's workers connect once, with the pool's login,
// and run each member's transactions naming the member's tenant (see nameTenant): a thousand
// members then share a few connections instead of opening one per tenant. The pool's login is a
// member of exactly the roles of its members' tenants, and the row policies let it reach the
// tenant it names only while it is; naming none, it reaches no row. It holds the tenants'
// group's privileges on the tables, and nothing else.

// ErrNoPoolLogin: the pool's login is not made yet (EnsurePoolLogin is the pool's to call).
var ErrNoPoolLogin = errors.New("the pool's Postgres login does not exist yet")

// poolLoginAttributes: a login with its groups' privileges only (the tenants' group's, as its
// member tenants' roles have no others).
const poolLoginAttributes = "LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"

// EnsurePoolLogin creates the login of pool (<namespace>/<name>) if it is missing, sets its
// password again when the administrator's credentials changed, and returns the URL the pool's
// workers connect with.
func (t *TenantRoles) EnsurePoolLogin(ctx context.Context, pool string) (string, error) {
	key, err := t.key()
	if err != nil {
		return "", err
	}
	var role, salt, fingerprint string
	err = pgx.BeginTxFunc(ctx, t.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockRoles); err != nil {
			return err
		}
		err := tx.QueryRow(ctx, `SELECT role_name, salt, key_fingerprint FROM tally.pool_logins WHERE pool = $1`, pool).Scan(&role, &salt, &fingerprint)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if err := tx.QueryRow(ctx, `SELECT 'tally_p_' || left(encode(sha256(convert_to(current_database() || '/' || $1, 'UTF8')), 'hex'), 24)`,
				pool).Scan(&role); err != nil {
				return err
			}
			salt = rand.Text()
			if _, err := tx.Exec(ctx, `INSERT INTO tally.pool_logins (pool, role_name, salt, key_fingerprint) VALUES ($1, $2, $3, $4)`,
				pool, role, salt, key.fingerprint()); err != nil {
				return err
			}
			return t.createPoolLogin(ctx, tx, role, key.poolPassword(pool, salt))
		case err != nil:
			return err
		case fingerprint != key.fingerprint():
			if _, err := tx.Exec(ctx, `UPDATE tally.pool_logins SET key_fingerprint = $2 WHERE pool = $1`, pool, key.fingerprint()); err != nil {
				return err
			}
			return t.setPassword(ctx, tx, role, key.poolPassword(pool, salt))
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("login of pool %q: %w", pool, err)
	}
	return t.roleURL(role, key.poolPassword(pool, salt))
}

func (t *TenantRoles) createPoolLogin(ctx context.Context, tx pgx.Tx, role, password string) error {
	existed, err := createLogin(ctx, tx, role, poolLoginAttributes, " IN ROLE tally_tenant", password)
	if err != nil || !existed {
		return err
	}
	// Left by an earlier install of this database: taken over, stripped of every membership but
	// the tenants' group (the members are granted again as they join).
	rows, err := tx.Query(ctx, `SELECT g.rolname FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
		JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = $1 AND g.rolname <> 'tally_tenant'`, role)
	if err != nil {
		return err
	}
	granted, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for _, g := range granted {
		if err := revokeMembership(ctx, tx, g, role); err != nil {
			return err
		}
	}
	return execFormatted(ctx, tx, `SELECT format('GRANT tally_tenant TO %I', $1::text)`, role)
}

// revokeMembership revokes role from login and checks that it is gone: from Postgres 16 on, a
// REVOKE takes back only the revoker's own grant, with a warning for another grantor's (the
// administrator's credentials changed to another user), which must not pass unnoticed.
func revokeMembership(ctx context.Context, tx pgx.Tx, role, login string) error {
	if err := execFormatted(ctx, tx, `SELECT format('REVOKE %I FROM %I', $1::text, $2::text)`, role, login); err != nil {
		return err
	}
	var still bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
		JOIN pg_roles u ON u.oid = m.member WHERE g.rolname = $1 AND u.rolname = $2)`, role, login).Scan(&still); err != nil {
		return err
	}
	if still {
		return fmt.Errorf("role %s is still granted to %s by another role than this login; revoke it as that role", role, login)
	}
	return nil
}

// GrantPoolMember lets pool's login act for member (<namespace>/<name> of a source) of tenant,
// whose role must exist (Ensure), and returns that role: granted to the pool's login, it lets the
// pool's workers name the tenant for the member's transactions. It is ErrNoPoolLogin until the
// pool's login exists. A member that changed tenant leaves its former tenant's role, and one that
// changed pool leaves the others.
func (t *TenantRoles) GrantPoolMember(ctx context.Context, pool, member, tenant string) (string, error) {
	var role string
	err := pgx.BeginTxFunc(ctx, t.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockRoles); err != nil {
			return err
		}
		var login, tenantRole *string
		if err := tx.QueryRow(ctx, `SELECT (SELECT role_name FROM tally.pool_logins WHERE pool = $1),
			(SELECT role_name FROM tally.tenant_roles WHERE tenant = $2)`, pool, tenant).Scan(&login, &tenantRole); err != nil {
			return err
		}
		switch {
		case login == nil:
			return ErrNoPoolLogin
		case tenantRole == nil:
			return errors.New("the tenant's Postgres role does not exist yet")
		}
		role = *tenantRole
		if err := leavePools(ctx, tx, member, pool); err != nil {
			return err
		}
		var former *string
		if err := tx.QueryRow(ctx, `SELECT (SELECT tenant FROM tally.pool_members WHERE pool = $1 AND member = $2)`, pool, member).Scan(&former); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO tally.pool_members (pool, member, tenant) VALUES ($1, $2, $3)
			ON CONFLICT (pool, member) DO UPDATE SET tenant = EXCLUDED.tenant`, pool, member, tenant); err != nil {
			return err
		}
		if former != nil && *former != tenant {
			if err := revokeUnheld(ctx, tx, pool, *former); err != nil {
				return err
			}
		}
		return execFormatted(ctx, tx, `SELECT format('GRANT %I TO %I', $1::text, $2::text)`, role, *login)
	})
	if err != nil {
		return "", fmt.Errorf("member %q of pool %q: %w", member, pool, err)
	}
	return role, nil
}

// RevokePoolMember stops pool's login acting for member, or every pool's when pool is "" (a
// source deleted); its tenant's role is revoked once no other member of the pool has that tenant.
func (t *TenantRoles) RevokePoolMember(ctx context.Context, pool, member string) error {
	return pgx.BeginTxFunc(ctx, t.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockRoles); err != nil {
			return err
		}
		if pool == "" {
			return leavePools(ctx, tx, member, "")
		}
		var tenant string
		err := tx.QueryRow(ctx, `DELETE FROM tally.pool_members WHERE pool = $1 AND member = $2 RETURNING tenant`, pool, member).Scan(&tenant)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		} else if err != nil {
			return err
		}
		return revokeUnheld(ctx, tx, pool, tenant)
	})
}

// leavePools removes member from every pool but except, revoking what no other member holds.
func leavePools(ctx context.Context, tx pgx.Tx, member, except string) error {
	rows, err := tx.Query(ctx, `DELETE FROM tally.pool_members WHERE member = $1 AND pool <> $2 RETURNING pool, tenant`, member, except)
	if err != nil {
		return err
	}
	left, err := pgx.CollectRows(rows, pgx.RowToStructByPos[struct{ Pool, Tenant string }])
	if err != nil {
		return err
	}
	for _, l := range left {
		if err := revokeUnheld(ctx, tx, l.Pool, l.Tenant); err != nil {
			return err
		}
	}
	return nil
}

// revokeUnheld revokes tenant's role from pool's login when no member of the pool has the tenant.
func revokeUnheld(ctx context.Context, tx pgx.Tx, pool, tenant string) error {
	var login, role *string
	if err := tx.QueryRow(ctx, `SELECT (SELECT role_name FROM tally.pool_logins WHERE pool = $1),
		(SELECT role_name FROM tally.tenant_roles WHERE tenant = $2)
		WHERE NOT EXISTS (SELECT 1 FROM tally.pool_members WHERE pool = $1 AND tenant = $2)`, pool, tenant).Scan(&login, &role); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // still held by another member
		}
		return err
	}
	if login == nil || role == nil {
		return nil
	}
	return revokeMembership(ctx, tx, *role, *login)
}

// DropPoolLogin removes pool's login and its memberships.
func (t *TenantRoles) DropPoolLogin(ctx context.Context, pool string) error {
	return pgx.BeginTxFunc(ctx, t.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockRoles); err != nil {
			return err
		}
		return dropDeletedRole(ctx, tx, `DELETE FROM tally.pool_logins WHERE pool = $1 RETURNING role_name`, pool)
	})
}

// poolPassword derives a pool login's password.
func (k roleKey) poolPassword(pool, salt string) string {
	mac := hmac.New(sha256.New, k)
	fmt.Fprintf(mac, "tally pool login\x00%s\x00%s", pool, salt)
	return hex.EncodeToString(mac.Sum(nil))
}

// PoolMembers lists the members pool's login may act for.
func (t *TenantRoles) PoolMembers(ctx context.Context, pool string) ([]string, error) {
	rows, err := t.pool.Query(ctx, `SELECT member FROM tally.pool_members WHERE pool = $1 ORDER BY member`, pool)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}
