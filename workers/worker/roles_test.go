package worker

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"regexp"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/source"
)

// The walls between tenants in Postgres, attacked with the login a tenant's workers receive.
var _ = Describe("Tenant roles", func() {
	var roles *TenantRoles
	BeforeEach(func() { roles = NewTenantRoles(testPool, databaseURL) })

	connectAs := func(ctx context.Context, url string) *pgx.Conn {
		conn, err := pgx.Connect(ctx, url)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func(ctx SpecContext) { _ = conn.Close(ctx) })
		return conn
	}

	It("see and change only their own tenant's rows, whatever the query, and cannot change the schema", func(ctx SpecContext) {
		// Two tenants with rows, written by their own workers logged in with their own roles.
		mine, theirs := newSource(ctx, ""), newSource(ctx, "")
		for cfg, user := range map[*source.Config]string{mine: "u-mine", theirs: "u-theirs"} {
			url, err := roles.Ensure(ctx, cfg.Tenant, "")
			Expect(err).NotTo(HaveOccurred())
			Expect(Migrate(ctx, url)).To(Succeed(), "an up-to-date schema is only read")
			rolePool, err := pgxpool.New(ctx, url)
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(rolePool.Close)
			startWorkerOn(rolePool, cfg, 100)
			publish(ctx, cfg, identify("i-"+user, user, 10, map[string]any{"plan": "pro"}),
				group("g-"+user, user, "acct-"+user, 11, map[string]any{"name": "A"}),
				track("t-"+user, user, "E", 12, nil, nil))
			drained(ctx, cfg)
		}
		url, err := roles.Ensure(ctx, mine.Tenant, "")
		Expect(err).NotTo(HaveOccurred())
		conn := connectAs(ctx, url)

		By("reading: every table shows the tenant's rows only, even asked for the other tenant by name")
		for _, table := range []string{"accounts", "users", "account_users", "associations", "events", "event_catalog"} {
			var own, other int
			Expect(conn.QueryRow(ctx, fmt.Sprintf(`SELECT count(*) FILTER (WHERE tenant = $1), count(*) FILTER (WHERE tenant <> $1) FROM tally.%s`, table),
				mine.Tenant).Scan(&own, &other)).To(Succeed())
			Expect(own).To(BeNumerically(">", 0), table)
			Expect(other).To(BeZero(), table)
		}
		var n int
		Expect(conn.QueryRow(ctx, `SELECT count(*) FROM tally.users WHERE tenant = $1`, theirs.Tenant).Scan(&n)).To(Succeed())
		Expect(n).To(BeZero())

		By("writing: another tenant's rows are out of reach, and no row can be written for it")
		tag, err := conn.Exec(ctx, `UPDATE tally.users SET traits = '{}' WHERE tenant = $1`, theirs.Tenant)
		Expect(err).NotTo(HaveOccurred())
		Expect(tag.RowsAffected()).To(BeZero())
		tag, err = conn.Exec(ctx, `DELETE FROM tally.events`)
		Expect(err).NotTo(HaveOccurred())
		Expect(tag.RowsAffected()).To(BeEquivalentTo(1), "its own event only")
		_, err = conn.Exec(ctx, `INSERT INTO tally.users (tenant, user_id, created_at, updated_at) VALUES ($1, 'planted', now(), now())`, theirs.Tenant)
		Expect(sqlState(err)).To(Equal("42501"), "row-level security refuses the row")
		_, err = conn.Exec(ctx, `UPDATE tally.users SET tenant = $1 WHERE tenant = $2`, theirs.Tenant, mine.Tenant)
		Expect(sqlState(err)).To(Equal("42501"), "a row cannot be moved to another tenant")

		By("widening: naming a tenant, a search_path of its own, SET ROLE and the role table do not help")
		_, err = conn.Exec(ctx, `SELECT set_config('tally.tenant', $1, false)`, theirs.Tenant)
		Expect(err).NotTo(HaveOccurred())
		var own int
		countUsers := func() error {
			return conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE tenant = $1), count(*) FILTER (WHERE tenant = $2) FROM tally.users`,
				theirs.Tenant, mine.Tenant).Scan(&n, &own)
		}
		Expect(countUsers()).To(Succeed())
		Expect(n).To(BeZero(), "naming another tenant")
		Expect(own).To(Equal(1), "its own login keeps its own tenant")
		_, err = conn.Exec(ctx, `SET search_path = pg_temp, public`)
		Expect(err).NotTo(HaveOccurred())
		_, err = conn.Exec(ctx, `CREATE TEMP TABLE tenant_roles AS SELECT $1::text AS tenant, current_user::text AS role_name`, theirs.Tenant)
		Expect(err).NotTo(HaveOccurred())
		Expect(countUsers()).To(Succeed())
		Expect(n).To(BeZero(), "with a role table of its own first on the search_path")
		_, err = conn.Exec(ctx, `RESET search_path`)
		Expect(err).NotTo(HaveOccurred())
		_, err = conn.Exec(ctx, `SET ROLE tally_tenant`)
		Expect(err).NotTo(HaveOccurred())
		_, err = conn.Exec(ctx, `SELECT count(*) FROM tally.users WHERE tenant = $1`, theirs.Tenant)
		Expect(sqlState(err)).To(Equal("42501"), "as the tenants' group, naming a tenant is refused")
		_, err = conn.Exec(ctx, `SELECT set_config('tally.tenant', '', false)`)
		Expect(err).NotTo(HaveOccurred())
		Expect(conn.QueryRow(ctx, `SELECT count(*) FROM tally.users`).Scan(&n)).To(Succeed())
		Expect(n).To(BeZero(), "the tenants' group is no tenant")
		_, err = conn.Exec(ctx, `RESET ROLE`)
		Expect(err).NotTo(HaveOccurred())
		_, err = conn.Exec(ctx, `SELECT * FROM tally.tenant_roles`)
		Expect(sqlState(err)).To(Equal("42501"))
		_, err = conn.Exec(ctx, `UPDATE tally.tenant_roles SET tenant = $1`, theirs.Tenant)
		Expect(sqlState(err)).To(Equal("42501"))

		By("DDL: refused")
		for _, ddl := range []string{
			`DROP TABLE tally.events`,
			`TRUNCATE tally.users`,
			`ALTER TABLE tally.users DISABLE ROW LEVEL SECURITY`,
			`DROP POLICY tenant_rows ON tally.users`,
			`CREATE TABLE tally.mine (x int)`,
			`CREATE SCHEMA mine`,
			`CREATE OR REPLACE FUNCTION tally.current_tenant() RETURNS text LANGUAGE sql AS $$ SELECT 'x' $$`,
			`DELETE FROM tally.goose_db_version`,
		} {
			_, err := conn.Exec(ctx, ddl)
			Expect(sqlState(err)).To(Equal("42501"), ddl)
		}

		By("locking: the other tenant's lock is out of reach, so its workers cannot be stalled")
		tx, err := conn.Begin(ctx)
		Expect(err).NotTo(HaveOccurred())
		var locked int
		Expect(tx.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM tally.tenant_locks WHERE tenant = $1 FOR UPDATE) l`, theirs.Tenant).Scan(&locked)).To(Succeed())
		Expect(locked).To(BeZero())
		_, err = tx.Exec(ctx, `INSERT INTO tally.tenant_locks (tenant) VALUES ('planted')`)
		Expect(sqlState(err)).To(Equal("42501"))
		Expect(tx.Rollback(ctx)).To(Succeed())
		tx, err = conn.Begin(ctx)
		Expect(err).NotTo(HaveOccurred())
		_, err = tx.Exec(ctx, `SELECT 1 FROM tally.tenant_locks WHERE tenant = $1 FOR UPDATE`, theirs.Tenant)
		Expect(err).NotTo(HaveOccurred())
		publish(ctx, theirs, track("t-theirs-2", "u-theirs", "E", 13, nil, nil))
		drained(ctx, theirs) // their worker commits while this login holds everything it can
		Expect(tx.Rollback(ctx)).To(Succeed())

		By("the other tenant's rows are intact")
		Expect(testPool.QueryRow(ctx, `SELECT count(*) FROM tally.events WHERE tenant = $1`, theirs.Tenant).Scan(&n)).To(Succeed())
		Expect(n).To(Equal(2))
	})

	It("rotate the password on a new request, keep it otherwise, and go with their tenant while its rows stay", func(ctx SpecContext) {
		src := newSource(ctx, "")
		first, err := roles.Ensure(ctx, src.Tenant, "")
		Expect(err).NotTo(HaveOccurred())
		again, err := roles.Ensure(ctx, src.Tenant, "")
		Expect(err).NotTo(HaveOccurred())
		Expect(again).To(Equal(first))
		Expect(NewTenantRoles(testPool, databaseURL).Ensure(ctx, src.Tenant, "")).To(Equal(first), "another manager derives the same")
		password := func() string {
			var p string
			Expect(testPool.QueryRow(ctx, `SELECT a.rolpassword FROM pg_authid a JOIN tally.tenant_roles r ON r.role_name = a.rolname WHERE r.tenant = $1`,
				src.Tenant).Scan(&p)).To(Succeed())
			return p
		}
		before := password()

		rotated, err := roles.Ensure(ctx, src.Tenant, "2026-12-01")
		Expect(err).NotTo(HaveOccurred())
		Expect(rotated).NotTo(Equal(first))
		Expect(password()).NotTo(Equal(before), "the role's password changed in Postgres")
		Expect(roles.Ensure(ctx, src.Tenant, "2026-12-01")).To(Equal(rotated))

		conn := connectAs(ctx, rotated)
		_, err = conn.Exec(ctx, `INSERT INTO tally.users (tenant, user_id, created_at, updated_at) VALUES ($1, 'kept', now(), now())`, src.Tenant)
		Expect(err).NotTo(HaveOccurred())
		Expect(conn.Close(ctx)).To(Succeed())

		By("the administrator's URL written differently keeps the passwords; new administrator credentials set them again")
		before = password()
		userinfo := func(s string) string {
			u, err := url.Parse(s)
			Expect(err).NotTo(HaveOccurred())
			return u.User.String()
		}
		other, err := NewTenantRoles(testPool, databaseURL+"&application_name=manager-2").Ensure(ctx, src.Tenant, "2026-12-01")
		Expect(err).NotTo(HaveOccurred())
		Expect(userinfo(other)).To(Equal(userinfo(rotated)), "same credentials, other options: same login")
		Expect(password()).To(Equal(before))
		adminURL, err := url.Parse(databaseURL)
		Expect(err).NotTo(HaveOccurred())
		adminURL.User = url.UserPassword(adminURL.User.Username(), "a-new-admin-password") // trust auth ignores it
		renewed, err := NewTenantRoles(testPool, adminURL.String()).Ensure(ctx, src.Tenant, "2026-12-01")
		Expect(err).NotTo(HaveOccurred())
		Expect(renewed).NotTo(Equal(rotated))
		Expect(password()).NotTo(Equal(before), "the role's password follows at once, so the URL handed out works")

		Expect(roles.Drop(ctx, src.Tenant)).To(Succeed())
		Expect(roles.Drop(ctx, src.Tenant)).To(Succeed(), "dropping twice is fine")
		var roleLeft, rowsLeft int
		Expect(testPool.QueryRow(ctx, `SELECT count(*) FROM pg_roles WHERE rolname IN (SELECT 'tally_t_' || left(encode(sha256(convert_to(current_database() || '/' || $1, 'UTF8')), 'hex'), 24))`,
			src.Tenant).Scan(&roleLeft)).To(Succeed())
		Expect(roleLeft).To(BeZero())
		Expect(testPool.QueryRow(ctx, `SELECT count(*) FROM tally.users WHERE tenant = $1`, src.Tenant).Scan(&rowsLeft)).To(Succeed())
		Expect(rowsLeft).To(Equal(1))

		By("a role created again never gets an earlier password back")
		again, err = roles.Ensure(ctx, src.Tenant, "")
		Expect(err).NotTo(HaveOccurred())
		Expect(again).NotTo(BeElementOf(first, rotated))
	})

	It("find their tenant through the role index, whatever the number of tenants", func(ctx SpecContext) {
		// Every row policy asks tally.current_tenant() once per table of every statement: a scan
		// of all tenants' roles there made each statement cost more with each tenant added.
		src := newSource(ctx, "")
		_, err := roles.Ensure(ctx, src.Tenant, "")
		Expect(err).NotTo(HaveOccurred())
		var role string
		Expect(testPool.QueryRow(ctx, `SELECT role_name FROM tally.tenant_roles WHERE tenant = $1`, src.Tenant).Scan(&role)).To(Succeed())
		conn, err := testPool.Acquire(ctx)
		Expect(err).NotTo(HaveOccurred())
		defer conn.Release()
		tx, err := conn.Begin(ctx)
		Expect(err).NotTo(HaveOccurred())
		defer func() { _ = tx.Rollback(ctx) }()
		// Two thousand other tenants, with statistics that know them (all rolled back).
		_, err = tx.Exec(ctx, `INSERT INTO tally.tenant_roles (tenant, role_name)
			SELECT 'many-' || i, 'many_role_' || i FROM generate_series(1, 2000) i`)
		Expect(err).NotTo(HaveOccurred())
		_, err = tx.Exec(ctx, `ANALYZE tally.tenant_roles`)
		Expect(err).NotTo(HaveOccurred())
		_, err = tx.Exec(ctx, `SELECT set_config('role', $1, true)`, role)
		Expect(err).NotTo(HaveOccurred())
		var tenant string
		Expect(tx.QueryRow(ctx, `SELECT tally.current_tenant()`).Scan(&tenant)).To(Succeed())
		Expect(tenant).To(Equal(src.Tenant))
		_, err = tx.Exec(ctx, `RESET ROLE`)
		Expect(err).NotTo(HaveOccurred())
		var seqScans, indexScans int64
		Expect(tx.QueryRow(ctx, `SELECT seq_scan, idx_scan FROM pg_stat_xact_user_tables WHERE relid = 'tally.tenant_roles'::regclass`).
			Scan(&seqScans, &indexScans)).To(Succeed())
		Expect(seqScans).To(BeZero(), "no scan of every tenant's row")
		Expect(indexScans).To(BeNumerically(">=", 1))
	})

	It("protect every tenant table of the schema", func(ctx SpecContext) {
		rows := queryRows(ctx, `
			SELECT c.relname AS table, c.relrowsecurity AS rls,
				EXISTS (SELECT 1 FROM pg_policies p WHERE p.schemaname = 'tally' AND p.tablename = c.relname) AS policy
			FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant'
			WHERE n.nspname = 'tally' AND c.relkind = 'r' AND c.relname NOT IN ('tenant_roles', 'pool_members')`) // the owner's own
		Expect(len(rows)).To(BeNumerically(">=", 12)) // tally.tenant_locks among them
		for _, r := range rows {
			Expect(r["rls"]).To(BeTrue(), "%v", r["table"])
			Expect(r["policy"]).To(BeTrue(), "%v", r["table"])
		}
	})
})

// sqlState is the SQLSTATE of a Postgres error, or the error's text.
func sqlState(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return fmt.Sprint(err)
}

var _ = Describe("SCRAM verifiers", func() {
	It("are what Postgres stores for a password (checked against Python's hashlib with a fixed salt)", func() {
		salt := make([]byte, 16)
		for i := range salt {
			salt[i] = byte(i)
		}
		Expect(scramVerifierWithSalt("tally-test-password", salt)).To(Equal(
			"SCRAM-SHA-256$4096:AAECAwQFBgcICQoLDA0ODw==$0Tj/H8etDUxQfWPC9lO4mSLtSkCIBFK+w4HL+XnkliA=:Ai+Mm29jIbTcERIziOEDVx1u90P0U6hY47f5y59FbiQ="))
	})

	It("are what a tenant's role holds, matching the password of the URL handed out", func(ctx SpecContext) {
		src := newSource(ctx, "")
		roleURL, err := NewTenantRoles(testPool, databaseURL).Ensure(ctx, src.Tenant, "")
		Expect(err).NotTo(HaveOccurred())
		var stored string
		Expect(testPool.QueryRow(ctx, `SELECT a.rolpassword FROM pg_authid a JOIN tally.tenant_roles r ON r.role_name = a.rolname WHERE r.tenant = $1`,
			src.Tenant).Scan(&stored)).To(Succeed())
		m := regexp.MustCompile(`^SCRAM-SHA-256\$4096:([A-Za-z0-9+/=]{24})\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}$`).FindStringSubmatch(stored)
		Expect(m).To(HaveLen(2), stored)
		salt, err := base64.StdEncoding.DecodeString(m[1])
		Expect(err).NotTo(HaveOccurred())
		u, err := url.Parse(roleURL)
		Expect(err).NotTo(HaveOccurred())
		password, _ := u.User.Password()
		Expect(scramVerifierWithSalt(password, salt)).To(Equal(stored), "a SCRAM login with the handed-out password succeeds")
	})
})
