package worker

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TenantRoles manages the per-tenant login roles of migration 00005 with an administrator's pool
// (the schema's owner, with CREATEROLE). A tenant's role may read and write only that tenant's rows
// and owns nothing; the operator hands its URL to the tenant's workers.
//
// Passwords are not stored anywhere: each is an HMAC of the tenant, its generation and a salt
// drawn when the role was created, keyed with the administrator's credentials. Every manager
// replica derives the same one; a rotation (a new generation) changes it; a role dropped and
// created again gets a new salt, so an earlier password never comes back; and when the
// administrator's credentials change, Ensure sets every role's password again.
type TenantRoles struct {
	pool     *pgxpool.Pool
	adminURL string
}

// NewTenantRoles manages tenant roles through pool, connected with adminURL.
func NewTenantRoles(pool *pgxpool.Pool, adminURL string) *TenantRoles {
	return &TenantRoles{pool: pool, adminURL: adminURL}
}

// lockRoles serialises role changes (CREATE ROLE of two racing managers would otherwise fail) on
// a table no tenant's login may touch, so none can hold it up.
const lockRoles = "LOCK TABLE tally.tenant_roles IN SHARE ROW EXCLUSIVE MODE"

// Ensure creates the tenant's role if it is missing, rotates its password when rotation is a
// request not applied before (the operator passes an annotation's value: several sources of one
// tenant may carry different ones, and each rotates once), and returns the URL the tenant's
// workers connect with: the administrator's, with the role's name and password.
func (t *TenantRoles) Ensure(ctx context.Context, tenant, rotation string) (string, error) {
	var role, salt, fingerprint string
	var generation int
	key, err := t.key()
	if err != nil {
		return "", err
	}
	err = pgx.BeginTxFunc(ctx, t.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockRoles); err != nil {
			return err
		}
		var applied bool
		err := tx.QueryRow(ctx, `SELECT role_name, generation, $2 = '' OR $2 = ANY (rotations), salt, key_fingerprint
			FROM tally.tenant_roles WHERE tenant = $1`, tenant, rotation).Scan(&role, &generation, &applied, &salt, &fingerprint)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			if err := tx.QueryRow(ctx, `SELECT 'tally_t_' || left(encode(sha256(convert_to(current_database() || '/' || $1, 'UTF8')), 'hex'), 24)`,
				tenant).Scan(&role); err != nil {
				return err
			}
			generation, salt = 1, rand.Text()
			if _, err := tx.Exec(ctx, `INSERT INTO tally.tenant_roles (tenant, role_name, rotations, salt, key_fingerprint)
				VALUES ($1, $2, array_remove(ARRAY[$3], ''), $4, $5)`, tenant, role, rotation, salt, key.fingerprint()); err != nil {
				return err
			}
			return t.createRole(ctx, tx, role, key.password(tenant, generation, salt))
		case err != nil:
			return err
		case !applied || fingerprint != key.fingerprint():
			if !applied {
				generation++
			}
			if _, err := tx.Exec(ctx, `UPDATE tally.tenant_roles SET generation = $2, rotations = array_remove(rotations || $3::text, ''),
				key_fingerprint = $4 WHERE tenant = $1`, tenant, generation, rotation, key.fingerprint()); err != nil {
				return err
			}
			return t.setPassword(ctx, tx, role, key.password(tenant, generation, salt))
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("role of tenant %q: %w", tenant, err)
	}
	return t.roleURL(role, key.password(tenant, generation, salt))
}

// roleKey is what tenant passwords derive from: the administrator's user name and password.
type roleKey []byte

// key reads the administrator's credentials from its URL.
func (t *TenantRoles) key() (roleKey, error) {
	u, err := url.Parse(t.adminURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		// Never the URL itself in the error: it holds a password.
		return nil, errors.New("tenant roles need the database as a postgres:// URL")
	}
	return roleKey("tally tenant role key\x00" + u.User.String()), nil
}

// password derives a tenant's password of a generation.
func (k roleKey) password(tenant string, generation int, salt string) string {
	mac := hmac.New(sha256.New, k)
	fmt.Fprintf(mac, "tally tenant role\x00%s\x00%d\x00%s", tenant, generation, salt)
	return hex.EncodeToString(mac.Sum(nil))
}

// fingerprint names the key without revealing it.
func (k roleKey) fingerprint() string {
	sum := sha256.Sum256(k)
	return hex.EncodeToString(sum[:8])
}

// Drop removes the tenant's role, and with it the pool logins' memberships; its rows stay (they
// belong to the schema's owner).
func (t *TenantRoles) Drop(ctx context.Context, tenant string) error {
	return pgx.BeginTxFunc(ctx, t.pool, pgx.TxOptions{}, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, lockRoles); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `DELETE FROM tally.pool_members WHERE tenant = $1`, tenant); err != nil {
			return err
		}
		return dropDeletedRole(ctx, tx, `DELETE FROM tally.tenant_roles WHERE tenant = $1 RETURNING role_name`, tenant)
	})
}

// dropDeletedRole runs deleteReturningRole (a DELETE ... RETURNING role_name) and drops the role
// it returns, if any.
func dropDeletedRole(ctx context.Context, tx pgx.Tx, deleteReturningRole string, args ...any) error {
	var role string
	err := tx.QueryRow(ctx, deleteReturningRole, args...).Scan(&role)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	} else if err != nil {
		return err
	}
	return execFormatted(ctx, tx, `SELECT format('DROP ROLE IF EXISTS %I', $1::text)`, role)
}

func (t *TenantRoles) createRole(ctx context.Context, tx pgx.Tx, role, password string) error {
	// The role's privileges are the group's, and only those.
	const attributes = "LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
	existed, err := createLogin(ctx, tx, role, attributes, " IN ROLE tally_tenant", password)
	if err != nil || !existed {
		return err
	}
	// Left by an earlier install of this database: taken over, with the group's privileges only.
	return execFormatted(ctx, tx, `SELECT format('GRANT tally_tenant TO %I', $1::text)`, role)
}

// createLogin creates role with attributes (and createSuffix, such as IN ROLE), or, when it
// exists already, sets its attributes and password and reports so: the caller then takes it over.
func createLogin(ctx context.Context, tx pgx.Tx, role, attributes, createSuffix, password string) (existed bool, err error) {
	verifier, err := scramVerifier(password)
	if err != nil {
		return false, err
	}
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, role).Scan(&existed); err != nil {
		return false, err
	}
	if !existed {
		return false, execFormatted(ctx, tx, `SELECT format('CREATE ROLE %I `+attributes+` PASSWORD %L`+createSuffix+`', $1::text, $2::text)`, role, verifier)
	}
	return true, execFormatted(ctx, tx, `SELECT format('ALTER ROLE %I `+attributes+` PASSWORD %L', $1::text, $2::text)`, role, verifier)
}

func (t *TenantRoles) setPassword(ctx context.Context, tx pgx.Tx, role, password string) error {
	verifier, err := scramVerifier(password)
	if err != nil {
		return err
	}
	return execFormatted(ctx, tx, `SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)`, role, verifier)
}

// scramIterations is Postgres's own default for SCRAM-SHA-256 verifiers.
const scramIterations = 4096

// scramVerifier is what Postgres stores for a password with SCRAM-SHA-256 (RFC 5802, 7677),
// computed here: role statements then carry the verifier, never the password, and statement text
// can reach the server's log (a failed statement) and pg_stat_statements.
func scramVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	return scramVerifierWithSalt(password, salt)
}

func scramVerifierWithSalt(password string, salt []byte) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, scramIterations, sha256.Size)
	if err != nil {
		return "", err
	}
	mac := func(msg string) []byte {
		h := hmac.New(sha256.New, salted)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	stored := sha256.Sum256(mac("Client Key"))
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", scramIterations, b64(salt), b64(stored[:]), b64(mac("Server Key"))), nil
}

// execFormatted builds a utility statement with Postgres's own quoting (format's %I and %L: role
// statements take no parameters) and runs it. Role statements carry SCRAM verifiers, never passwords.
func execFormatted(ctx context.Context, tx pgx.Tx, builder string, args ...any) error {
	var stmt string
	if err := tx.QueryRow(ctx, builder, args...).Scan(&stmt); err != nil {
		return err
	}
	_, err := tx.Exec(ctx, stmt)
	return err
}

// roleURL is the administrator's URL with the role's credentials.
func (t *TenantRoles) roleURL(role, password string) (string, error) {
	u, err := url.Parse(t.adminURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		// Never the URL itself in the error: it holds a password.
		return "", errors.New("tenant roles need the database as a postgres:// URL")
	}
	u.User = url.UserPassword(role, password)
	return u.String(), nil
}
