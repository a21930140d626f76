package natsauth_test

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"

	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/receiver"
	"github.com/tallyhq/tally/workers/source"
)

// `tally manager --receiver-atomic-batches` runs the receivers with group commit on the NATS users
// the operator issues them: a source's receiver user and a pool's must store a request as one
// JetStream atomic batch, not only single messages.
var _ = Describe("Atomic batches on the receivers' own users", func() {
	poolRef := pool.Ref{Namespace: "platform", Name: "atomic"}

	DescribeTable("a request is stored as one atomic batch",
		func(connect func() *nats.Conn) {
			js, err := jetstream.New(connect())
			Expect(err).NotTo(HaveOccurred())
			r, err := receiver.New(receiver.Options{JetStream: js, AtomicBatches: true, PublishTimeout: 5 * time.Second,
				Logger: slog.New(slog.NewTextHandler(GinkgoWriter, nil))}, []*source.Config{acme})
			Expect(err).NotTo(HaveOccurred())
			srv := httptest.NewServer(r.Handler())
			DeferCleanup(srv.Close)

			s, err := adminJS.Stream(ctx, acme.Stream().StreamName())
			Expect(err).NotTo(HaveOccurred())
			lastSeq := func() uint64 {
				info, err := s.Info(ctx)
				Expect(err).NotTo(HaveOccurred())
				return info.State.LastSeq
			}
			before := lastSeq()
			var body strings.Builder
			body.WriteString(`{"batch":[`)
			for i := range 20 { // above the receiver's smallest atomic batch (16)
				if i > 0 {
					body.WriteString(",")
				}
				fmt.Fprintf(&body, `{"type":"track","messageId":"atomic-%s-%02d","userId":"u1","event":"Signed In"}`, CurrentSpecReport().LeafNodeText, i)
			}
			body.WriteString(`]}`)
			req, err := http.NewRequest(http.MethodPost, srv.URL+"/v1/batch", strings.NewReader(body.String()))
			Expect(err).NotTo(HaveOccurred())
			req.SetBasicAuth(acme.WriteKeys[0], "")
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			Expect(err).NotTo(HaveOccurred())
			resp.Body.Close()
			Expect(resp.StatusCode).To(Equal(http.StatusOK))

			Expect(lastSeq()).To(Equal(before + 20))
			batchIDs := map[string]int{}
			for seq := before + 1; seq <= before+20; seq++ {
				m, err := s.GetMsg(ctx, seq)
				Expect(err).NotTo(HaveOccurred())
				batchIDs[m.Header.Get("Nats-Batch-Id")]++
			}
			Expect(batchIDs).To(HaveLen(1), "one atomic batch carried the request")
			Expect(batchIDs).NotTo(HaveKey(""))
		},
		Entry("a source's receiver", func() *nats.Conn { return podConn(acme, natsauth.Receiver).Conn }),
		Entry("a pool's receiver, for a member", func() *nats.Conn {
			creds, err := issuer.IssuePool(poolRef, natsauth.Receiver, time.Now().Add(time.Hour))
			Expect(err).NotTo(HaveOccurred())
			return connect(creds, nil, natsauth.PoolInboxOption(poolRef, natsauth.Receiver))
		}),
	)
})
