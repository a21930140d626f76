package catalog

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	"sigs.k8s.io/yaml"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/test/testdb"
	"github.com/tallyhq/tally/workers/worker"
)

func TestCatalog(t *testing.T) {
	RegisterFailHandler(Fail)
	RunSpecs(t, "Catalog Suite")
}

var _ = Describe("tally catalog", func() {
	var databaseURL string
	BeforeEach(func(ctx SpecContext) {
		url, drop, err := testdb.Fresh(ctx, "catalog")
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(drop)
		Expect(worker.Migrate(ctx, url)).To(Succeed())
		databaseURL = url
		conn, err := pgx.Connect(ctx, url)
		Expect(err).NotTo(HaveOccurred())
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, `INSERT INTO tally.event_catalog (tenant, event, first_seen_at, last_seen_at, count, ignored) VALUES
			('acme', 'Page Scrolled', '2026-11-01T00:00:00Z', '2026-12-01T09:00:00Z', 700, false),
			('acme', 'Report Built', '2026-11-02T00:00:00Z', '2026-12-01T08:00:00Z', 200, false),
			('acme', 'Mouse Moved', '2026-11-03T00:00:00Z', '2026-11-20T00:00:00Z', 95, false),
			('acme', 'Signed Up', '2026-11-04T00:00:00Z', '2026-11-30T00:00:00Z', 5, false),
			('acme', 'Heartbeat', NULL, NULL, 0, true),
			('globex', 'Secret Plan', '2026-11-01T00:00:00Z', '2026-11-01T00:00:00Z', 9999, false)`)
		Expect(err).NotTo(HaveOccurred())
	})
	run := func(args ...string) (string, error) {
		cmd := NewCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetErr(&out)
		cmd.SetArgs(append([]string{"--database-url", databaseURL}, args...))
		err := cmd.Execute()
		return out.String(), err
	}

	It("prints the tenant's events busiest first, and no other tenant's", func() {
		out, err := run("--tenant", "acme")
		Expect(err).NotTo(HaveOccurred())
		lines := bytes.Split(bytes.TrimSpace([]byte(out)), []byte("\n"))
		Expect(lines).To(HaveLen(6))
		Expect(string(lines[0])).To(MatchRegexp(`^EVENT\s+FIRST SEEN\s+LAST SEEN\s+COUNT\s+IGNORED$`))
		Expect(string(lines[1])).To(MatchRegexp(`^Page Scrolled\s+2026-11-01T00:00:00Z\s+2026-12-01T09:00:00Z\s+700\s+false$`))
		Expect(string(lines[5])).To(MatchRegexp(`^Heartbeat\s+-\s+-\s+0\s+true$`))
		Expect(out).NotTo(ContainSubstring("Secret Plan"))
	})

	It("prints JSON and YAML for scripts", func() {
		out, err := run("--tenant", "acme", "--output", "json")
		Expect(err).NotTo(HaveOccurred())
		var entries []map[string]any
		Expect(json.Unmarshal([]byte(out), &entries)).To(Succeed())
		Expect(entries).To(HaveLen(5))
		Expect(entries[0]).To(And(HaveKeyWithValue("event", "Page Scrolled"), HaveKeyWithValue("count", 700.0),
			HaveKeyWithValue("lastSeenAt", "2026-12-01T09:00:00Z"), HaveKeyWithValue("ignored", false)))

		out, err = run("--tenant", "acme", "-o", "yaml")
		Expect(err).NotTo(HaveOccurred())
		Expect(yaml.Unmarshal([]byte(out), &entries)).To(Succeed())
		Expect(entries[4]).To(And(HaveKeyWithValue("event", "Heartbeat"), HaveKeyWithValue("ignored", true), Not(HaveKey("firstSeenAt"))))

		out, err = run("--tenant", "nobody", "-o", "json")
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(MatchJSON(`[]`))
		_, err = run("--tenant", "acme", "-o", "xml")
		Expect(err).To(MatchError(ContainSubstring("--output must be table, json or yaml")))
	})

	It("suggests a reviewable SegmentSource patch adding the noisiest events to ignoredEvents", func() {
		out, err := run("--tenant", "acme", "--suggest-ignore", "--source", "acme/acme-web")
		Expect(err).NotTo(HaveOccurred())
		Expect(out).To(ContainSubstring("# 70% of the tenant's events"))
		var patch tallyv1.SegmentSource
		Expect(yaml.UnmarshalStrict([]byte(out), &patch)).To(Succeed(), out)
		Expect(patch.Kind).To(Equal("SegmentSource"))
		Expect(patch.Namespace + "/" + patch.Name).To(Equal("acme/acme-web"))
		// Already ignored stays (a merge patch replaces the list); 70% and 20% pass the 10% bar,
		// 9.5% does not.
		Expect(patch.Spec.IgnoredEvents).To(Equal([]string{"Heartbeat", "Page Scrolled", "Report Built"}))

		out, err = run("--tenant", "acme", "--suggest-ignore", "--source", "acme/acme-web", "--top", "1", "--min-share", "0.05")
		Expect(err).NotTo(HaveOccurred())
		Expect(yaml.UnmarshalStrict([]byte(out), &patch)).To(Succeed(), out)
		Expect(patch.Spec.IgnoredEvents).To(Equal([]string{"Heartbeat", "Page Scrolled"}))

		_, err = run("--tenant", "acme", "--suggest-ignore")
		Expect(err).To(MatchError(ContainSubstring("--source namespace/name")))
	})

	It("summarizes the catalog for the source's status: names received, ignored, seen in the last day", func(ctx SpecContext) {
		pool, err := pgxpool.New(ctx, databaseURL)
		Expect(err).NotTo(HaveOccurred())
		defer pool.Close()
		now := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
		Expect(worker.SummarizeCatalog(ctx, pool, "acme", now)).To(Equal(worker.CatalogSummary{Events: 4, Ignored: 1, SeenLastDay: 2}))
		Expect(worker.SummarizeCatalog(ctx, pool, "nobody", now)).To(Equal(worker.CatalogSummary{}))
	})
})
