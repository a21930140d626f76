package local

import (
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/stream"
)

var _ = Describe("NATS users in tally local", func() {
	It("runs NATS in JWT mode: the pipeline works with a user per source and nothing gets in without one", func(ctx SpecContext) {
		dbURL := freshDatabase(ctx, "local_nats_users")
		data := GinkgoT().TempDir()
		r := start(Options{Manifests: manifests(), DataDir: data, DatabaseURL: dbURL})
		Expect(string(r.banner.Contents())).To(ContainSubstring(filepath.Join(data, AdminCredsFile)))

		By("an anonymous client is refused")
		m := natsLine.FindStringSubmatch(string(r.banner.Contents()))
		Expect(m).To(HaveLen(2))
		_, err := nats.Connect(m[1], nats.MaxReconnects(0))
		Expect(err).To(MatchError(ContainSubstring("Authorization Violation")))

		By("events flow through the receiver's and the workers' own users")
		code, body := r.post("/v1/track", acmeKey1, `{"messageId":"nats-users-1","userId":"u1","event":"Signed In"}`)
		Expect(code).To(Equal(http.StatusOK), body)
		Eventually(func() []map[string]any {
			return query(ctx, dbURL, `select message_id from tally.events where tenant = 'acme'`)
		}).WithTimeout(30 * time.Second).Should(Equal([]map[string]any{{"message_id": "nats-users-1"}}))

		By("a worker user of one source, issued with the keys kept in the data dir, cannot read another's")
		auth, err := natsserver.LoadOrCreateAuth(filepath.Join(data, NATSKeysFile))
		Expect(err).NotTo(HaveOccurred())
		issuer, err := natsauth.EmbeddedIssuer(auth)
		Expect(err).NotTo(HaveOccurred())
		acme, globex := stream.Source{Namespace: "default", Name: "acme-web"}, stream.Source{Namespace: "globex", Name: "globex-app"}
		creds, err := issuer.Issue(acme, natsauth.Worker, time.Now().Add(time.Hour))
		Expect(err).NotTo(HaveOccurred())
		opt, err := natsauth.CredsOption(creds)
		Expect(err).NotTo(HaveOccurred())
		violations := make(chan error, 10)
		nc, err := nats.Connect(m[1], opt, natsauth.InboxOption(acme, natsauth.Worker), nats.MaxReconnects(0),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(nc.Close)
		_, err = nc.Request("$JS.API.CONSUMER.INFO."+globex.StreamName()+"."+stream.WorkerConsumer, nil, time.Second)
		Expect(err).To(HaveOccurred())
		Eventually(violations).Should(Receive(MatchError(ContainSubstring(`Publish to "$JS.API.CONSUMER.INFO.` + globex.StreamName()))))

		By("the keys stay with the data: only the data dir's owner reads them")
		for _, f := range []string{NATSKeysFile, AdminCredsFile} {
			info, err := os.Stat(filepath.Join(data, f))
			Expect(err).NotTo(HaveOccurred())
			Expect(info.Mode().Perm()).To(Equal(os.FileMode(0o600)), f)
		}
	})
	// tally local --sync-always publishes with group commit on its receiver's NATS user (one user
	// with every served source's receiver permissions), for dedicated sources and pool members
	// alike, and the rows land. The users the operator issues are checked in package natsauth.
	DescribeTable("stores a request as one atomic batch through the receiver's own NATS user when every write is fsynced",
		func(ctx SpecContext, files func() string, key string, src stream.Source, tenant string) {
			dbURL := freshDatabase(ctx, "local_nats_users_atomic")
			r := start(Options{Manifests: files(), DataDir: GinkgoT().TempDir(), DatabaseURL: dbURL, SyncAlways: true})

			var batch strings.Builder
			batch.WriteString(`{"batch":[`)
			for i := range 20 { // more than the receiver's smallest atomic batch (16)
				if i > 0 {
					batch.WriteString(",")
				}
				fmt.Fprintf(&batch, `{"type":"track","messageId":"atomic-%02d","userId":"u1","event":"Signed In"}`, i)
			}
			batch.WriteString(`]}`)
			code, body := r.post("/v1/batch", key, batch.String())
			Expect(code).To(Equal(http.StatusOK), body)

			s, err := r.jetStream().Stream(ctx, src.StreamName())
			Expect(err).NotTo(HaveOccurred())
			batchIDs := map[string]int{}
			for seq := uint64(1); seq <= 20; seq++ {
				m, err := s.GetMsg(ctx, seq)
				Expect(err).NotTo(HaveOccurred())
				batchIDs[m.Header.Get("Nats-Batch-Id")]++
			}
			Expect(batchIDs).To(HaveLen(1), "one atomic batch carried the request")
			Expect(batchIDs).NotTo(HaveKey(""))
			Eventually(func() []map[string]any {
				return query(ctx, dbURL, `select count(*) as n from tally.events where tenant = $1`, tenant)
			}).WithTimeout(30 * time.Second).Should(Equal([]map[string]any{{"n": int64(20)}}))
		},
		Entry("a source's receiver", manifests, acmeKey1, stream.Source{Namespace: "default", Name: "acme-web"}, "acme"),
		Entry("a pool's receiver, for a member", func() string { return poolManifests(false) }, poolKeyA,
			stream.Source{Namespace: "team-a", Name: "web"}, "tenant-a"),
	)
})
