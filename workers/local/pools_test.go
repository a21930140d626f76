package local

import (
	"net/http"
	"path/filepath"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/test/testenv"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/worker"
)

const (
	poolKeyA = "pool-member-a-key-0123456789"
	poolKeyB = "pool-member-b-key-0123456789"
)

// poolManifests is a SegmentSourcePool admitting the namespaces labelled pool=shared, and a
// source in each of two such namespaces, of two tenants; outsider, when set, adds a source of an
// unlabelled namespace naming the pool.
func poolManifests(outsider bool) string {
	files := map[string]string{
		"pool.yaml": `apiVersion: tally.dev/v1alpha1
kind: SegmentSourcePool
metadata: {name: shared, namespace: platform}
spec:
  receiver: {rateLimit: {eventsPerSecond: 1000, burst: 5000}}
  allowedNamespaces:
    from: Selector
    selector: {matchLabels: {pool: shared}}
`,
		"namespaces.yaml": `apiVersion: v1
kind: Namespace
metadata: {name: team-a, labels: {pool: shared}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b, labels: {pool: shared}}
`,
		"a.yaml": member("team-a", "web", "tenant-a", poolKeyA),
		"b.yaml": member("team-b", "app", "tenant-b", poolKeyB),
	}
	if outsider {
		files["c.yaml"] = member("team-c", "site", "tenant-c", "pool-member-c-key-0123456789")
	}
	return writeManifests(files)
}

func member(namespace, name, tenant, key string) string {
	return `apiVersion: v1
kind: Secret
metadata: {name: ` + name + `-segment, namespace: ` + namespace + `}
stringData: {writeKey: ` + key + `}
---
apiVersion: tally.dev/v1alpha1
kind: SegmentSource
metadata: {name: ` + name + `, namespace: ` + namespace + `}
spec:
  tenant: ` + tenant + `
  writeKeySecretRef: {name: ` + name + `-segment}
  pool: {name: shared, namespace: platform}
`
}

var _ = Describe("The samples' pool", func() {
	It("admits its member, which make local serves through the pool", func() {
		dir := filepath.Join(testenv.RepoRoot(), "config", "samples")
		_, err := LoadManifests(dir)
		Expect(err).NotTo(HaveOccurred())
		Expect(poolMembership(dir, nil)).To(Equal(map[string]pool.Ref{"default/globex-app": {Namespace: "default", Name: "shared"}}))
	})
})

var _ = Describe("Pool membership", func() {
	It("gives each member without a rate limit of its own the pool's, as the operator does", func() {
		dir := poolManifests(false)
		sources, err := LoadManifests(dir)
		Expect(err).NotTo(HaveOccurred())
		Expect(poolMembership(dir, sources)).To(HaveLen(2))
		for _, c := range sources {
			Expect(c.RateLimit).To(Equal(&source.RateLimit{EventsPerSecond: 1000, Burst: 5000}), c.String())
		}
	})
})

var _ = Describe("Run with a SegmentSourcePool", func() {
	It("serves the pool's members through the pool's bucket and one worker set, each into its own tenant", func(ctx SpecContext) {
		dbURL := freshDatabase(ctx, "local_pool")
		r := start(Options{Manifests: poolManifests(false), DataDir: GinkgoT().TempDir(), DatabaseURL: dbURL})
		Expect(string(r.banner.Contents())).To(ContainSubstring("source team-a/web (tenant tenant-a)\n    pool:      platform/shared"))
		Expect(string(r.banner.Contents())).To(ContainSubstring("    limit:     1000 events/s, bursts of 5000\n"), "the pool's limit")

		for key, tenant := range map[string]string{poolKeyA: "tenant-a", poolKeyB: "tenant-b"} {
			status, body := r.post("/v1/track", key, `{"userId":"u1","event":"Pooled","messageId":"`+tenant+`-1"}`)
			Expect(status).To(Equal(http.StatusOK), body)
			Eventually(func() []map[string]any {
				return query(ctx, dbURL, `SELECT message_id FROM tally.events WHERE tenant = $1`, tenant)
			}).WithTimeout(30 * time.Second).Should(ConsistOf(HaveKeyWithValue("message_id", tenant+"-1")))
		}

		By("the pool's workers wrote both tenants' rows with one login, the pool's, naming each tenant")
		logins := query(ctx, dbURL, `SELECT DISTINCT a.usename::text AS login, p.pool FROM pg_stat_activity a
			LEFT JOIN tally.pool_logins p ON p.role_name = a.usename WHERE a.datname = current_database() AND a.application_name = 'tally-pool-worker'`)
		Expect(logins).To(ConsistOf(HaveKeyWithValue("pool", "platform/shared")))
		Expect(query(ctx, dbURL, `SELECT member, tenant FROM tally.pool_members WHERE pool = 'platform/shared'`)).To(ConsistOf(
			map[string]any{"member": "team-a/web", "tenant": "tenant-a"}, map[string]any{"member": "team-b/app", "tenant": "tenant-b"}))

		By("the pool's bucket lists both members by key digest, never the key")
		kv, err := r.jetStream().KeyValue(ctx, pool.Ref{Namespace: "platform", Name: "shared"}.Bucket())
		Expect(err).NotTo(HaveOccurred())
		e, err := kv.Get(ctx, "team-a.web")
		Expect(err).NotTo(HaveOccurred())
		Expect(string(e.Value())).To(ContainSubstring(pool.DigestKey(poolKeyA)))
		Expect(string(e.Value())).NotTo(ContainSubstring(poolKeyA))
		_, err = kv.Get(ctx, "team-b.app")
		Expect(err).NotTo(HaveOccurred())
	})

	It("refuses to start with a source the pool does not admit, as the operator would stall it", func(ctx SpecContext) {
		err := Run(ctx, Options{Manifests: poolManifests(true), DataDir: GinkgoT().TempDir(), DatabaseURL: freshDatabase(ctx, "local_pool_refused"),
			Listen: "127.0.0.1:0", NATSPort: -1, Logger: testenv.QuietLogger(), Out: GinkgoWriter})
		Expect(err).To(MatchError(ContainSubstring("SegmentSource team-c/site: SegmentSourcePool platform/shared does not admit namespace team-c")))
	})
})

var _ = Describe("Pool logins", func() {
	It("give a pool's members one login, granted each member's tenant, and take back the grants of sources that left", func(ctx SpecContext) {
		dbURL := freshDatabase(ctx, "local_pool_logins")
		Expect(worker.Migrate(ctx, dbURL)).To(Succeed())
		admin, err := pgxpool.New(ctx, dbURL)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(admin.Close)
		tenants := newTenantPools(admin, dbURL, testenv.QuietLogger())
		ref := pool.Ref{Namespace: "platform", Name: "shared"}
		a := &source.Config{Namespace: "team-a", Name: "web", Tenant: "tenant-a"}
		b := &source.Config{Namespace: "team-b", Name: "app", Tenant: "tenant-b"}
		loginA, err := tenants.MemberLogin(ctx, ref, a)
		Expect(err).NotTo(HaveOccurred())
		loginB, err := tenants.MemberLogin(ctx, ref, b)
		Expect(err).NotTo(HaveOccurred())
		Expect(loginA.URL).To(Equal(loginB.URL), "one login for the pool")
		Expect(loginA.Role).NotTo(Equal(loginB.Role))

		Expect(tenants.KeepMembers(ctx, ref, []*source.Config{a})).To(Succeed())
		Expect(query(ctx, dbURL, `SELECT member FROM tally.pool_members`)).To(ConsistOf(HaveKeyWithValue("member", "team-a/web")))
		conn, err := pgx.Connect(ctx, loginA.URL)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(func(ctx SpecContext) { _ = conn.Close(ctx) })
		reach := func(tenant string) (string, error) {
			var reached string
			_, err := conn.Exec(ctx, `SELECT set_config('tally.tenant', $1, false)`, tenant)
			Expect(err).NotTo(HaveOccurred())
			err = conn.QueryRow(ctx, `SELECT tally.current_tenant()`).Scan(&reached)
			return reached, err
		}
		Expect(reach("tenant-a")).To(Equal("tenant-a"))
		_, err = reach("tenant-b")
		Expect(err).To(MatchError(ContainSubstring("may not reach tenant tenant-b")), "the pool's login can no longer write for tenant-b")
	})
})
