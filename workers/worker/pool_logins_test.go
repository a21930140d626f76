package worker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tallyhq/tally/workers/insights"
	"github.com/tallyhq/tally/workers/source"
)

// A pool's login, attacked as the pool's workers could use it.
var _ = Describe("Pool logins", func() {
	var roles *TenantRoles
	BeforeEach(func() { roles = NewTenantRoles(testPool, databaseURL) })

	connect := func(ctx context.Context, login DatabaseLogin, tenant string) (*pgx.Conn, error) {
		cfg, err := login.connConfig(tenant)
		Expect(err).NotTo(HaveOccurred())
		conn, err := pgx.ConnectConfig(ctx, cfg)
		if err == nil {
			DeferCleanup(func(ctx SpecContext) { _ = conn.Close(ctx) })
		}
		return conn, err
	}
	name := func(ctx context.Context, conn *pgx.Conn, tenant string) {
		_, err := conn.Exec(ctx, `SELECT set_config('tally.tenant', $1, false)`, tenant)
		Expect(err).NotTo(HaveOccurred())
	}
	// reached is the tenant whose rows conn reaches, "" for none; "refused" when its statements
	// fail (it names a tenant it may not reach).
	reached := func(ctx context.Context, conn *pgx.Conn) string {
		var tenant *string
		err := conn.QueryRow(ctx, `SELECT tally.current_tenant()`).Scan(&tenant)
		if sqlState(err) == "42501" {
			return "refused"
		}
		Expect(err).NotTo(HaveOccurred())
		if tenant == nil {
			return ""
		}
		return *tenant
	}
	reaches := func(ctx context.Context, conn *pgx.Conn, tenant string) bool {
		name(ctx, conn, tenant)
		return reached(ctx, conn) == tenant
	}

	It("write each member's rows naming its tenant over shared connections, and reach nothing else", func(ctx SpecContext) {
		a, b, outsider := newSource(ctx, ""), newSource(ctx, ""), newSource(ctx, "")
		for _, tenant := range []string{a.Tenant, b.Tenant, outsider.Tenant} {
			_, err := roles.Ensure(ctx, tenant, "")
			Expect(err).NotTo(HaveOccurred())
		}
		poolName := "platform/" + a.Tenant
		url, err := roles.EnsurePoolLogin(ctx, poolName)
		Expect(err).NotTo(HaveOccurred())
		Expect(roles.EnsurePoolLogin(ctx, poolName)).To(Equal(url), "the same login and password every time")
		DeferCleanup(func(ctx SpecContext) { Expect(roles.DropPoolLogin(ctx, poolName)).To(Succeed()) })
		roleA, err := roles.GrantPoolMember(ctx, poolName, "team-a/web", a.Tenant)
		Expect(err).NotTo(HaveOccurred())
		roleB, err := roles.GrantPoolMember(ctx, poolName, "team-b/app", b.Tenant)
		Expect(err).NotTo(HaveOccurred())
		outsiderURL, err := roles.Ensure(ctx, outsider.Tenant, "")
		Expect(err).NotTo(HaveOccurred())
		outsiderConn, err := pgx.Connect(ctx, outsiderURL)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func(ctx SpecContext) { _ = outsiderConn.Close(ctx) })
		var roleOutsider string
		Expect(outsiderConn.QueryRow(ctx, `SELECT current_user`).Scan(&roleOutsider)).To(Succeed())

		By("both members' workers share one pool of the pool's login, at most two connections")
		dbs := newDatabases(2, 2)
		shared, err := dbs.acquire(DatabaseLogin{URL: url, Role: roleA})
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func() { dbs.release(url) })
		Expect(dbs.acquire(DatabaseLogin{URL: url, Role: roleB})).To(BeIdenticalTo(shared))
		DeferCleanup(func() { dbs.release(url) })
		startWorkerOn(shared, a, 100, func(w *Worker) { w.role = roleA })
		startWorkerOn(shared, b, 100, func(w *Worker) { w.role = roleB })
		for i := range 5 {
			for _, src := range []*source.Config{a, b} {
				id := fmt.Sprintf("%s-%d", src.Tenant, i)
				publish(ctx, src, group("g-"+id, "u", "acct", float64(i), map[string]any{"name": "A"}), track("t-"+id, "u", "E", float64(i)+0.5, nil, nil))
			}
		}
		drained(ctx, a)
		drained(ctx, b)
		for _, tenant := range []string{a.Tenant, b.Tenant} {
			Expect(queryRows(ctx, `SELECT message_id FROM tally.events WHERE tenant = $1`, tenant)).To(HaveLen(5), tenant)
			Expect(queryRows(ctx, `SELECT account_id FROM tally.accounts WHERE tenant = $1`, tenant)).To(HaveLen(1), tenant)
		}
		logins := queryRows(ctx, `SELECT usename::text AS login, count(*) AS n FROM pg_stat_activity
			WHERE datname = current_database() AND application_name = $1 GROUP BY usename`, poolApplicationName)
		Expect(logins).To(HaveLen(1), "one login for both tenants")
		Expect(logins[0]["login"]).NotTo(BeElementOf(roleA, roleB))
		Expect(logins[0]["n"]).To(BeNumerically("<=", 2))

		By("alone, naming no tenant, the pool's login sees and writes no row")
		conn, err := connect(ctx, DatabaseLogin{URL: url}, "")
		Expect(err).NotTo(HaveOccurred())
		count := func(table string) (own, other int) {
			Expect(conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE tenant = $1), count(*) FILTER (WHERE tenant <> $1) FROM tally.`+table,
				a.Tenant).Scan(&own, &other)).To(Succeed())
			return own, other
		}
		plant := func(tenant string) error {
			_, err := conn.Exec(ctx, `INSERT INTO tally.users (tenant, user_id, created_at, updated_at) VALUES ($1, 'planted', now(), now())`, tenant)
			return err
		}
		Expect(reached(ctx, conn)).To(BeEmpty())
		Expect(count("events")).To(BeZero())
		Expect(sqlState(plant(a.Tenant))).To(Equal("42501"))

		By("naming a member's tenant, it sees and writes that tenant's rows only")
		Expect(reaches(ctx, conn, a.Tenant)).To(BeTrue())
		own, other := count("events")
		Expect(own).To(Equal(5))
		Expect(other).To(BeZero())
		Expect(sqlState(plant(b.Tenant))).To(Equal("42501"), "row-level security refuses the other member's tenant")
		tag, err := conn.Exec(ctx, `DELETE FROM tally.events WHERE tenant = $1`, b.Tenant)
		Expect(err).NotTo(HaveOccurred())
		Expect(tag.RowsAffected()).To(BeZero())

		By("naming a tenant without a member in the pool, or as a role it became, every statement is refused")
		name(ctx, conn, outsider.Tenant)
		Expect(reached(ctx, conn)).To(Equal("refused"))
		_, err = conn.Exec(ctx, `SELECT count(*) FROM tally.events`)
		Expect(sqlState(err)).To(Equal("42501"))
		Expect(sqlState(plant(outsider.Tenant))).To(Equal("42501"))
		name(ctx, conn, a.Tenant)
		_, err = conn.Exec(ctx, `SET ROLE tally_tenant`)
		Expect(err).NotTo(HaveOccurred())
		Expect(reached(ctx, conn)).To(Equal("refused"))
		_, err = conn.Exec(ctx, `RESET ROLE`)
		Expect(err).NotTo(HaveOccurred())

		By("a tenant's own login reaches its own tenant, whatever it names")
		Expect(reaches(ctx, outsiderConn, a.Tenant)).To(BeFalse())
		Expect(reached(ctx, outsiderConn)).To(Equal(outsider.Tenant))

		By("a call of a member's worker without its tenant is refused before it reaches Postgres")
		_, err = shared.Exec(ctx, `SELECT count(*) FROM tally.events`)
		Expect(err).To(MatchError(errNoPoolTenant))

		By("a connection may name a member's tenant from its start")
		started, err := connect(ctx, DatabaseLogin{URL: url, Role: roleB}, b.Tenant)
		Expect(err).NotTo(HaveOccurred())
		Expect(reached(ctx, started)).To(Equal(b.Tenant))

		By("a tenant stays reachable while one of its members is left")
		Expect(roles.GrantPoolMember(ctx, poolName, "team-a/second", a.Tenant)).To(Equal(roleA))
		Expect(roles.RevokePoolMember(ctx, poolName, "team-a/web")).To(Succeed())
		Expect(reaches(ctx, conn, a.Tenant)).To(BeTrue())
		Expect(roles.PoolMembers(ctx, poolName)).To(Equal([]string{"team-a/second", "team-b/app"}))

		By("and goes with the last: a transaction in flight fails at its next statement, and rolls back whole")
		tx, err := conn.Begin(ctx)
		Expect(err).NotTo(HaveOccurred())
		_, err = tx.Exec(ctx, `INSERT INTO tally.users (tenant, user_id, created_at, updated_at) VALUES ($1, 'in-flight', now(), now())`, a.Tenant)
		Expect(err).NotTo(HaveOccurred())
		Expect(roles.RevokePoolMember(ctx, poolName, "team-a/second")).To(Succeed())
		_, err = tx.Exec(ctx, `UPDATE tally.users SET traits = '{"plan": "pro"}' WHERE tenant = $1 AND user_id = 'in-flight'`, a.Tenant)
		Expect(sqlState(err)).To(Equal("42501"), "not an update of no row")
		Expect(tx.Rollback(ctx)).To(Succeed())
		Expect(queryRows(ctx, `SELECT user_id FROM tally.users WHERE tenant = $1 AND user_id LIKE 'in-flight-%'`, a.Tenant)).To(BeEmpty())
		Expect(reaches(ctx, conn, a.Tenant)).To(BeFalse(), "on a connection that reached it before")
		Expect(roles.RevokePoolMember(ctx, poolName, "team-a/second")).To(Succeed(), "revoking twice is harmless")

		By("a member that changed tenant leaves its former tenant")
		Expect(roles.GrantPoolMember(ctx, poolName, "team-b/app", outsider.Tenant)).To(Equal(roleOutsider))
		Expect(reaches(ctx, conn, outsider.Tenant)).To(BeTrue())
		Expect(reaches(ctx, conn, b.Tenant)).To(BeFalse())
		Expect(reached(ctx, started)).To(Equal("refused"), "nor does a connection that named it from its start")

		By("the pool's workers, whose member left, fail instead of writing")
		publish(ctx, b, track("t-after-leaving", "u", "E", 99, nil, nil))
		Consistently(func() []map[string]any {
			return queryRows(ctx, `SELECT message_id FROM tally.events WHERE message_id = 't-after-leaving'`)
		}).WithTimeout(time.Second).Should(BeEmpty())

		By("dropping the pool's login ends it")
		Expect(roles.DropPoolLogin(ctx, poolName)).To(Succeed())
		_, err = connect(ctx, DatabaseLogin{URL: url}, "")
		Expect(err).To(HaveOccurred())
		Expect(roles.PoolMembers(ctx, poolName)).To(BeEmpty())
	})

	It("take members only once the pool's login exists, and one pool at a time", func(ctx SpecContext) {
		src := newSource(ctx, "")
		_, err := roles.Ensure(ctx, src.Tenant, "")
		Expect(err).NotTo(HaveOccurred())
		first, second := "platform/first-"+src.Tenant, "platform/second-"+src.Tenant
		_, err = roles.GrantPoolMember(ctx, first, "team/web", src.Tenant)
		Expect(err).To(MatchError(ErrNoPoolLogin))

		urls := map[string]string{}
		for _, p := range []string{first, second} {
			urls[p], err = roles.EnsurePoolLogin(ctx, p)
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(func(ctx SpecContext) { Expect(roles.DropPoolLogin(ctx, p)).To(Succeed()) })
		}
		role, err := roles.GrantPoolMember(ctx, first, "team/web", src.Tenant)
		Expect(err).NotTo(HaveOccurred())
		canReach := func(p string) bool {
			conn, err := connect(ctx, DatabaseLogin{URL: urls[p], Role: role}, src.Tenant)
			Expect(err).NotTo(HaveOccurred())
			return reached(ctx, conn) == src.Tenant
		}
		Expect(canReach(first)).To(BeTrue())
		Expect(canReach(second)).To(BeFalse())

		By("moving to the second pool takes it out of the first")
		Expect(roles.GrantPoolMember(ctx, second, "team/web", src.Tenant)).To(Equal(role))
		Expect(canReach(first)).To(BeFalse())
		Expect(canReach(second)).To(BeTrue())

		By("revoking it everywhere (the source deleted)")
		Expect(roles.RevokePoolMember(ctx, "", "team/web")).To(Succeed())
		Expect(canReach(second)).To(BeFalse())
		Expect(roles.PoolMembers(ctx, second)).To(BeEmpty())
	})

	It("stop a member's insights pusher at its next push once the member left the pool", func(ctx SpecContext) {
		src := newSource(ctx, "")
		_, err := roles.Ensure(ctx, src.Tenant, "")
		Expect(err).NotTo(HaveOccurred())
		poolName := "platform/insights-" + src.Tenant
		url, err := roles.EnsurePoolLogin(ctx, poolName)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func(ctx SpecContext) { Expect(roles.DropPoolLogin(ctx, poolName)).To(Succeed()) })
		role, err := roles.GrantPoolMember(ctx, poolName, "team/web", src.Tenant)
		Expect(err).NotTo(HaveOccurred())

		fake := newSegmentRecorder()
		src.Insights = &source.InsightsConfig{Endpoint: fake.URL, Interval: 100 * time.Millisecond}
		stop, err := startPusher(ctx, src, DatabaseLogin{URL: url, Role: role}, "insights-key", "test",
			insights.NewMetrics(prometheus.NewRegistry()), slog.New(slog.DiscardHandler))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(stop)
		addUser := func(user string) {
			_, err := testPool.Exec(ctx, `INSERT INTO tally.users (tenant, user_id, created_at, updated_at) VALUES ($1, $2, now(), now())`,
				src.Tenant, user)
			Expect(err).NotTo(HaveOccurred())
		}
		addUser("before-leaving")
		Eventually(fake.identifiedUsers).WithTimeout(10 * time.Second).Should(ContainElement("before-leaving"))

		By("the member leaves the pool (the last of its tenant): the pusher lets its connection go at its next push")
		Expect(roles.RevokePoolMember(ctx, poolName, "team/web")).To(Succeed())
		login, err := pgx.ParseConfig(url)
		Expect(err).NotTo(HaveOccurred())
		Eventually(func() []map[string]any {
			return queryRows(ctx, `SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND usename = $1`, login.User)
		}).WithTimeout(10*time.Second).Should(BeEmpty(), "a connection that keeps the role it started as would stay")
		addUser("after-leaving")
		Consistently(fake.identifiedUsers).WithTimeout(2 * time.Second).ShouldNot(ContainElement("after-leaving"))
	})
})
